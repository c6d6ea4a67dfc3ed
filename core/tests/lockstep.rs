//! The geometry of tiles in lock step (cores cover the image once, aligned, contexts hold
//! them; owned spans partition a layer; crops add back where they came from) and the driver's
//! L-BFGS history within its memory budget.

use stylefarm_core::lockstep::*;
use stylefarm_core::optim::Optimizer;
use stylefarm_core::tiles::Rect;

#[test]
fn cores_cover_the_image_once_aligned_and_contexts_hold_them() {
    for (w, h, tile) in [
        (1024, 768, 256),
        (203, 117, 64),
        (64, 64, 256),
        (300, 100, 96),
    ] {
        let tiles = lockstep_tiles(w, h, tile, 24, 16).unwrap();
        let mut seen = vec![0u8; (w * h) as usize];
        for t in &tiles {
            assert_eq!(t.core.x % 16, 0);
            assert_eq!(t.core.y % 16, 0);
            assert_eq!(t.context.x % 16, 0);
            assert_eq!(t.context.y % 16, 0);
            assert!(t.core.width <= tile + 15 && t.core.height <= tile + 15);
            assert!(t.context.x <= t.core.x && t.context.right() >= t.core.right());
            assert!(t.context.y <= t.core.y && t.context.bottom() >= t.core.bottom());
            assert_eq!(t.context, t.core.grown(32, w, h));
            for y in t.core.y..t.core.bottom() {
                for x in t.core.x..t.core.right() {
                    seen[(y * w + x) as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{w}x{h} in {tile}");
    }
    let tiles = lockstep_tiles(1024, 768, 256, 32, 16).unwrap();
    assert_eq!(tiles.len(), 12);
    assert_eq!(
        interior_edges(&tiles),
        (vec![256, 512, 768], vec![256, 512])
    );
    assert!(lockstep_tiles(100, 100, 8, 0, 16).is_err());
    assert!(lockstep_tiles(0, 100, 64, 0, 16).is_err());
}

#[test]
fn a_drivers_lbfgs_history_fits_its_memory() {
    let lbfgs = Optimizer::Lbfgs {
        history: 100,
        strong_wolfe: true,
    };
    // 1024x768 and 40 iterations: as asked, 40 pairs held.
    let (o, bytes) = driver_optimizer(lbfgs, 1024 * 768, 40);
    assert_eq!(o, lbfgs);
    assert_eq!(bytes, 86 * 12 * 1024 * 768);
    // 4096x4096: 18 pairs fit in 8 GiB.
    let (o, bytes) = driver_optimizer(lbfgs, 4096 * 4096, 100);
    assert!(
        matches!(
            o,
            Optimizer::Lbfgs {
                history: 18,
                strong_wolfe: true
            }
        ),
        "{o:?}"
    );
    assert!(bytes <= DRIVER_MEMORY_BUDGET);
    // Never fewer than 5; Adam holds 5 vectors.
    let (o, _) = driver_optimizer(lbfgs, 1 << 30, 100);
    assert!(matches!(o, Optimizer::Lbfgs { history: 5, .. }), "{o:?}");
    let adam = Optimizer::Adam {
        learning_rate: 10.0,
    };
    assert_eq!(driver_optimizer(adam, 100, 7), (adam, 5 * 1200));
}

#[test]
fn owned_spans_partition_a_layer() {
    // A 100 px axis in cores of 48 px at stride 8: 12 positions, the last core takes the
    // floor's rest.
    let cores: [(u32, u32); 3] = [(0, 48), (48, 96), (96, 100)];
    let mut total = 0;
    for (a, b) in cores {
        let from = a.saturating_sub(16);
        let len = (100 - from) as usize / 8;
        let (s, e) = owned_span(a, b, from, 100, 8, len);
        total += e - s;
    }
    assert_eq!(total, 12);
}

#[test]
fn crops_add_back_where_they_came_from() {
    let (w, h) = (7, 5);
    let x: Vec<f32> = (0..3 * w * h).map(|i| i as f32).collect();
    let r = Rect {
        x: 2,
        y: 1,
        width: 3,
        height: 2,
    };
    let c = crop(&x, w, h, r);
    assert_eq!(c.len(), 18);
    assert_eq!(c[0], x[w + 2]);
    assert_eq!(c[6], x[w * h + w + 2]);
    let mut back = vec![0.0; 3 * w * h];
    add_crop(&mut back, w, h, r, &c);
    add_crop(&mut back, w, h, r, &c);
    for (i, (&b, &v)) in back.iter().zip(&x).enumerate() {
        let (p, rest) = (i / (w * h), i % (w * h));
        let (y, xx) = (rest / w, rest % w);
        let inside = r.contains(xx as u32, y as u32);
        assert_eq!(
            b,
            if inside { 2.0 * v } else { 0.0 },
            "plane {p} ({xx}, {y})"
        );
    }
}
