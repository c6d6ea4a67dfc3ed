//! Tiles in lock step on the tiny VGG: with margins that cover the image the tiles give the
//! untiled objective and gradient; with narrow ones, a gradient that is their objective's.

mod common;

use candle_core::Tensor;
use common::{data, load_vgg};
use stylefarm_core::layers::LayerName;
use stylefarm_engine::vgg::Vgg;

fn tiny_vgg() -> Vgg {
    load_vgg(&data("tiny_vgg16.safetensors"))
}

use candle_core::Device;
use stylefarm_core::lockstep::{lockstep_tiles, style_targets_of_statistics, LockstepObjective};
use stylefarm_core::settings::TermWeights;
use stylefarm_engine::lockstep::{LocalTiles, TileObjective};
use stylefarm_engine::objective::{Objective, StyleTargets};

fn image(h: usize, w: usize, seed: f64) -> Tensor {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| (100.0 * ((i as f64) * 0.37 + seed).sin()) as f32)
        .collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// The whole-image objective and the lock-step one on the same image, targets and weights.
fn both(margin: u32) -> (Objective<'static>, LockstepObjective, LocalTiles) {
    let vgg: &'static Vgg = Box::leak(Box::new(tiny_vgg()));
    let (h, w) = (72, 88);
    let content_layers = LayerName::parse_list("relu4_2").unwrap();
    let style_layers = LayerName::parse_list("relu1_1,relu2_1,relu3_1,relu4_1,relu5_1").unwrap();
    let style = StyleTargets::compute(vgg, &[(image(40, 36, 1.0), 1.0)], &style_layers).unwrap();
    let weights = TermWeights {
        content: 2.0,
        style: 300.0,
        tv: 0.01,
    };
    let content = image(h, w, 2.0);
    let whole = Objective::new(vgg, &content, &content_layers, &style, weights).unwrap();
    let targets = style
        .layers
        .iter()
        .map(|(l, t)| (*l, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    let joint = LockstepObjective::new(targets, weights, w, h).unwrap();
    let tiles = lockstep_tiles(w as u32, h as u32, 32, margin, 16).unwrap();
    assert_eq!(tiles.len(), 9);
    let objective = TileObjective::new(
        vgg.clone(),
        content,
        &content_layers,
        &style_layers,
        weights.content,
    )
    .unwrap();
    (whole, joint, LocalTiles::new(objective, tiles).unwrap())
}

#[test]
fn tiles_whose_margins_cover_the_image_give_the_whole_objective_and_gradient() {
    let (whole, joint, mut local) = both(200);
    let x = image(72, 88, 3.0)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (mut g1, mut g2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let a = whole.evaluate(&x, &mut g1).unwrap();
    let b = joint.evaluate(&mut local, &x, &mut g2).unwrap();
    let rel = |p: f64, q: f64| (p - q).abs() / q.abs().max(1e-30);
    assert!(
        rel(b.content, a.content) < 1e-5,
        "{} {}",
        b.content,
        a.content
    );
    assert!(rel(b.style, a.style) < 1e-4, "{} {}", b.style, a.style);
    assert!(rel(b.total, a.total) < 1e-4);
    let m = g1.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = g1
        .iter()
        .zip(&g2)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(d / m < 1e-4, "gradients differ by {}", d / m);
    assert_eq!(joint.losses(&mut local, &x).unwrap().total, b.total);
}

#[test]
fn the_driver_reads_the_style_targets_of_a_statistics_blob() {
    let vgg = tiny_vgg();
    let layers = LayerName::parse_list("relu1_1,relu3_1").unwrap();
    let style = StyleTargets::compute(&vgg, &[(image(40, 36, 1.0), 1.0)], &layers).unwrap();
    let blob = stylefarm_engine::statistics::encode_style(&style).unwrap();
    let read = style_targets_of_statistics(&blob, &layers).unwrap();
    for ((l, t), (m, v)) in style.layers.iter().zip(&read) {
        assert_eq!(l, m);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), *v);
    }
    let e = style_targets_of_statistics(b"nope", &layers).unwrap_err();
    assert!(e.to_string().contains("not a safetensors file"), "{e}");
    let more = LayerName::parse_list("relu1_1,relu2_1").unwrap();
    let e = style_targets_of_statistics(&blob, &more).unwrap_err();
    assert!(e.to_string().contains("lack style.relu2_1"), "{e}");
}

#[test]
fn narrow_margins_are_close_and_their_gradient_is_their_objectives() {
    let (whole, joint, mut local) = both(16);
    let x = image(72, 88, 3.0)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut g = vec![0.0; x.len()];
    let a = whole.losses(&x).unwrap();
    let b = joint.evaluate(&mut local, &x, &mut g).unwrap();
    assert!(
        (b.total - a.total).abs() / a.total < 0.5,
        "{} {}",
        b.total,
        a.total
    );
    // The gradient is the tiled objective's own: a central difference along it agrees.
    let norm: f64 = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    // A step of length 1 in network-input units (one pixel value): small against the
    // curvature, large against float32 noise in the Gram matrices (a step 100x smaller
    // missed by up to several percent).
    let step = 1.0 / norm;
    let mut at = |t: f64| {
        let y: Vec<f32> = x
            .iter()
            .zip(&g)
            .map(|(x, g)| x + (t * f64::from(*g)) as f32)
            .collect();
        joint.losses(&mut local, &y).unwrap().total
    };
    let (up, down) = (at(step), at(-step));
    let slope = (up - down) / (2.0 * step);
    assert!(
        (slope - norm * norm).abs() / (norm * norm) < 1e-3,
        "{slope} vs {}",
        norm * norm
    );
}
