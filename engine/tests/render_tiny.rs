//! Whole renders on the tiny VGG: determinism, every optimiser lowering the objective,
//! snapshots, and clear errors for inputs that cannot work.

mod common;

use common::{data, load_vgg};
use image::{Rgb, RgbImage};
use stylefarm_core::layers::Pooling;
use stylefarm_core::optim::Optimizer;
use stylefarm_core::settings::Losses;
use stylefarm_core::settings::{Init, RenderSettings};
use stylefarm_engine::render::{render, Observer, RenderInputs};
use stylefarm_engine::EngineError;

fn pattern(w: u32, h: u32, k: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 7 + y * k) % 256) as u8,
            ((x * y + k * 13) % 256) as u8,
            (((x / 3 + y / 5) * 40 * k) % 256) as u8,
        ])
    })
}

fn inputs() -> RenderInputs {
    RenderInputs {
        content: pattern(45, 37, 1),
        styles: vec![pattern(50, 30, 3), pattern(20, 44, 7)],
        init_image: None,
    }
}

fn settings() -> RenderSettings {
    RenderSettings {
        image_size: 40,
        num_iterations: 12,
        style_weight: 1e3,
        tv_weight: 1e-4,
        ..RenderSettings::default()
    }
}

#[derive(Default)]
struct Record {
    losses: Vec<Losses>,
    snapshots: Vec<u32>,
}

impl Observer for Record {
    fn iteration(&mut self, _: u32, _: u32, l: &Losses) -> stylefarm_engine::Result<()> {
        self.losses.push(l.clone());
        Ok(())
    }

    fn snapshot(&mut self, it: u32, img: &RgbImage) -> stylefarm_engine::Result<()> {
        assert_eq!(img.dimensions(), (40, 33));
        self.snapshots.push(it);
        Ok(())
    }
}

#[test]
fn same_inputs_and_seed_give_the_same_bytes() {
    let vgg = load_vgg(&data("tiny_vgg16.safetensors"));
    let a = render(&vgg, &inputs(), &settings(), &mut ()).unwrap();
    let b = render(&vgg, &inputs(), &settings(), &mut ()).unwrap();
    assert_eq!(a.image.dimensions(), (40, 33));
    assert_eq!(a.image.as_raw(), b.image.as_raw());
    let other = RenderSettings {
        seed: 1,
        ..settings()
    };
    let c = render(&vgg, &inputs(), &other, &mut ()).unwrap();
    assert_ne!(a.image.as_raw(), c.image.as_raw());
}

#[test]
fn every_optimiser_lowers_the_objective_within_its_budget() {
    let vgg = load_vgg(&data("tiny_vgg19.safetensors"));
    for (optimizer, pooling) in [
        (Optimizer::default(), Pooling::Max),
        (
            Optimizer::Lbfgs {
                history: 20,
                strong_wolfe: true,
            },
            Pooling::Avg,
        ),
        (
            Optimizer::Adam {
                learning_rate: 10.0,
            },
            Pooling::Max,
        ),
    ] {
        let s = RenderSettings {
            optimizer,
            pooling,
            num_iterations: 20,
            save_iter: 5,
            ..settings()
        };
        let mut rec = Record::default();
        let out = render(&vgg, &inputs(), &s, &mut rec).unwrap();
        assert_eq!(rec.losses.len() as u32, out.iterations);
        assert!(out.iterations <= 20);
        let first = rec.losses[0].total;
        assert!(
            out.losses.total < 0.5 * first,
            "{optimizer:?}: {first} -> {}",
            out.losses.total
        );
        assert_eq!(
            rec.snapshots,
            (1..=out.iterations / 5).map(|k| 5 * k).collect::<Vec<_>>()
        );
    }
}

#[test]
fn init_from_content_and_from_an_image() {
    let vgg = load_vgg(&data("tiny_vgg16.safetensors"));
    let s = RenderSettings {
        init: Init::Content,
        num_iterations: 0,
        ..settings()
    };
    let out = render(&vgg, &inputs(), &s, &mut ()).unwrap();
    let resized = stylefarm_core::image_io::resize_to_max_side(&inputs().content, 40);
    assert_eq!(
        out.image.as_raw(),
        resized.as_raw(),
        "zero iterations from the content give the content"
    );
    let mut with_init = inputs();
    with_init.init_image = Some(pattern(10, 10, 5));
    let s = RenderSettings {
        init: Init::Image,
        num_iterations: 2,
        original_colors: true,
        ..settings()
    };
    assert_eq!(
        render(&vgg, &with_init, &s, &mut ())
            .unwrap()
            .image
            .dimensions(),
        (40, 33)
    );
    let err = render(&vgg, &inputs(), &s, &mut ()).unwrap_err();
    assert!(err.to_string().contains("init"), "{err}");
}

#[test]
fn bad_settings_and_images_get_one_clear_error() {
    let vgg = load_vgg(&data("tiny_vgg16.safetensors"));
    let cases: Vec<(RenderSettings, RenderInputs, &str)> = vec![
        (
            RenderSettings {
                style_weight: f32::NAN,
                ..settings()
            },
            inputs(),
            "style-weight",
        ),
        (
            RenderSettings {
                content_weight: -1.0,
                ..settings()
            },
            inputs(),
            "content-weight",
        ),
        (
            RenderSettings {
                image_size: 0,
                ..settings()
            },
            inputs(),
            "image-size",
        ),
        (
            // Too small for VGG's deepest layers: the size is blamed, not the style scale.
            RenderSettings {
                image_size: 1,
                ..settings()
            },
            inputs(),
            "image-size",
        ),
        (
            // Two image-sized vectors per pair: 10^9 pairs would abort on allocation.
            RenderSettings {
                optimizer: Optimizer::Lbfgs {
                    history: 1_000_000_000,
                    strong_wolfe: false,
                },
                ..settings()
            },
            inputs(),
            "lbfgs-history",
        ),
        (
            RenderSettings {
                num_iterations: 10_000_000,
                ..settings()
            },
            inputs(),
            "num-iterations",
        ),
        (
            RenderSettings {
                style_blend_weights: Some(vec![1.0]),
                ..settings()
            },
            inputs(),
            "style-blend-weights",
        ),
        (
            RenderSettings {
                style_blend_weights: Some(vec![0.0, 0.0]),
                ..settings()
            },
            inputs(),
            "style-blend-weights",
        ),
        (
            RenderSettings {
                style_scale: 0.1,
                ..settings()
            },
            inputs(),
            "style-scale",
        ),
        (
            RenderSettings {
                optimizer: Optimizer::Adam {
                    learning_rate: -1.0,
                },
                ..settings()
            },
            inputs(),
            "learning-rate",
        ),
        (
            RenderSettings {
                style_layers: vec!["relu4_3".parse().unwrap(), "relu3_4".parse().unwrap()],
                ..settings()
            },
            inputs(),
            "relu3_4",
        ),
        // An 8000x200-like panorama: 40x1 after resizing, too thin for relu5_1.
        (
            settings(),
            RenderInputs {
                content: pattern(800, 20, 1),
                ..inputs()
            },
            "image-size",
        ),
    ];
    for (s, i, needle) in cases {
        let err = render(&vgg, &i, &s, &mut ()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "expected `{needle}` in: {text}");
        assert!(!matches!(err, EngineError::Candle(_)), "{text}");
    }
    // A 1x1 content image is a valid (if dull) input: it is scaled up to the output size.
    let one = RenderInputs {
        content: pattern(1, 1, 1),
        ..inputs()
    };
    assert_eq!(
        render(&vgg, &one, &settings(), &mut ())
            .unwrap()
            .image
            .dimensions(),
        (40, 40)
    );
}

/// The PNG bytes of one fixed render, made before the crates were reshaped (issue 15) and kept
/// in `tests/data/pinned_render.png`: any change to what a render computes shows here. On a
/// two-thread pool, so the split of the float sums is the same on every machine.
#[test]
fn a_fixed_render_gives_the_pinned_bytes() {
    let vgg = load_vgg(&data("tiny_vgg16.safetensors"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let settings = RenderSettings {
        init: Init::Content,
        ..settings()
    };
    let out = pool.install(|| render(&vgg, &inputs(), &settings, &mut ()).unwrap());
    let png = stylefarm_core::image_io::encode_png(&out.image).unwrap();
    let pinned = data("pinned_render.png");
    if std::env::var_os("STYLEFARM_BLESS").is_some() {
        std::fs::write(&pinned, &png).unwrap();
    }
    assert!(
        png == std::fs::read(&pinned).unwrap(),
        "the render's bytes changed (STYLEFARM_BLESS=1 rewrites {}, only for a deliberate change)",
        pinned.display()
    );
}
