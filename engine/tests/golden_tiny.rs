//! The objective and its gradient on a tiny VGG with made-up weights, against values that
//! PyTorch computed in float64 (`python3 engine/tests/data/make_tiny_golden.py`), and against
//! central finite differences of our own objective.

mod common;

use common::{check_case, data, load_vgg, Case};
use stylefarm_engine::objective::{gram, Objective, StyleTargets};

fn vgg_for(case: &Case) -> stylefarm_engine::vgg::Vgg {
    load_vgg(&data(case.json["model"].as_str().unwrap()))
}

#[test]
fn every_tiny_case_matches_pytorch_float64() {
    let names = Case::names("tiny_golden");
    assert!(names.len() >= 4, "golden cases: {names:?}");
    for name in names {
        let case = Case::load("tiny_golden", &name);
        check_case(&case, &vgg_for(&case), 1e-4);
    }
}

/// The path a GPU takes (candle's conv2d everywhere, composed pool and ReLU gradients), run on
/// the CPU: the CUDA build's logic, checked where no GPU is.
#[test]
fn every_tiny_case_matches_pytorch_float64_on_the_gpu_path() {
    for name in Case::names("tiny_golden") {
        let case = Case::load("tiny_golden", &name);
        check_case(&case, &vgg_for(&case).portable(), 1e-4);
    }
}

#[test]
fn gram_is_unnormalised_f_ft() {
    let f = candle_core::Tensor::new(
        &[[[[1f32, 2.], [3., 4.]]], [[[0., 1.], [0., 2.]]]],
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .reshape((1, 2, 2, 2))
    .unwrap();
    let g: Vec<Vec<f32>> = gram(&f).unwrap().to_vec2().unwrap();
    assert_eq!(g, vec![vec![30., 10.], vec![10., 5.]]);
}

/// Central finite differences `(J(x + h e_i) - J(x - h e_i)) / 2h` against the gradient, on
/// the pixels with the largest gradients and on pixels spread over the image, at odd sizes, for
/// both poolings. (Random directions move every pixel at once and cross ReLU and pool kinks of the
/// tiny network, which float32 cannot resolve with a small enough step; single pixels do not.)
#[test]
fn gradient_matches_central_finite_differences() {
    for name in ["vgg16_max_odd", "vgg16_avg_even", "vgg19_max_layers"] {
        let case = Case::load("tiny_golden", name);
        // Central differences need a smooth float32 loss: the reference convolutions are; the
        // fast ones are pinned to the same float64 golden gradients in the test above.
        let vgg = vgg_for(&case).with_pooling(case.pooling()).reference();
        let targets =
            StyleTargets::compute(&vgg, &case.styles(), &case.layers("style_layers")).unwrap();
        let obj = Objective::new(
            &vgg,
            &case.tensor("content"),
            &case.layers("content_layers"),
            &targets,
            case.weights(),
        )
        .unwrap();
        let x: Vec<f32> = case.tensor("x").flatten_all().unwrap().to_vec1().unwrap();
        let mut g = vec![0.0; x.len()];
        obj.evaluate(&x, &mut g).unwrap();
        let g_max = g.iter().fold(0f32, |m, v| m.max(v.abs()));

        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let mut pixels = order[..6].to_vec();
        pixels.extend((0..10).map(|k| (k * 7919 + 13) % x.len()));
        for i in pixels {
            let an = f64::from(g[i]);
            // A kink of the tiny network near pixel i spoils one step size, not all three.
            let (err, fd) = [2e-3f32, 5e-3, 1e-2, 3e-2, 1e-1]
                .iter()
                .map(|&h| {
                    let at = |s: f32| -> f64 {
                        let mut xs = x.clone();
                        xs[i] += s * h;
                        obj.losses(&xs).unwrap().total
                    };
                    let fd = (at(1.0) - at(-1.0)) / (2.0 * f64::from(h));
                    ((fd - an).abs(), fd)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            assert!(
                err <= 2e-3 * an.abs() + 1e-3 * f64::from(g_max),
                "{name} pixel {i}: finite difference {fd}, gradient {an}"
            );
        }
    }
}

/// The Winograd convolutions against candle's `conv2d` through the whole stack: every layer's
/// output and the input gradient, for VGG-16 and VGG-19, both poolings, odd and even sizes.
#[test]
fn fast_convolutions_match_the_reference_ones() {
    use candle_core::{Device, Tensor};
    use stylefarm_core::layers::Pooling;

    for (model, pooling, h, w) in [
        ("tiny_vgg16.safetensors", Pooling::Max, 37, 53),
        ("tiny_vgg16.safetensors", Pooling::Avg, 48, 64),
        ("tiny_vgg19.safetensors", Pooling::Max, 64, 33),
    ] {
        let fast = load_vgg(&data(model)).with_pooling(pooling);
        let reference = fast.reference();
        let x = (Tensor::rand(0f32, 255.0, (1, 3, h, w), &Device::Cpu).unwrap() - 120.0).unwrap();
        let deepest = fast.position("relu5_1".parse().unwrap()).unwrap();
        // Keeping every output turns the fused conv+ReLU off; keeping none leaves it on.
        for keep_all in [true, false] {
            let run = |vgg: &stylefarm_engine::vgg::Vgg| {
                let acts = vgg
                    .forward(&x, deepest, &|_| keep_all, true, &|| false)
                    .unwrap();
                // A gradient at every ReLU, as the style layers would give.
                let grads: Vec<_> = (0..=deepest)
                    .filter_map(|p| {
                        let a = acts.get(p)?;
                        Some((p, (a.ones_like().unwrap() * 1e-3).unwrap()))
                    })
                    .collect();
                let g = vgg.backward(&acts, grads, &|| false).unwrap();
                let outs: Vec<Vec<f32>> = (0..=deepest)
                    .filter_map(|p| Some(acts.get(p)?.flatten_all().unwrap().to_vec1().unwrap()))
                    .collect();
                (outs, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let (fast_outs, fast_grad) = run(&fast);
            let (ref_outs, ref_grad) = run(&reference);
            assert_eq!(fast_outs.len(), ref_outs.len());
            for (p, (a, b)) in fast_outs.iter().zip(&ref_outs).enumerate() {
                let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
                let (cos, rel) = common::compare(a, &b);
                assert!(
                    cos >= 0.999_999 && rel <= 2e-5,
                    "{model} {h}x{w} layer {p}: cosine {cos}, relative L2 {rel:.2e}"
                );
            }
            let want: Vec<f64> = ref_grad.iter().map(|&v| f64::from(v)).collect();
            let (cos, rel) = common::compare(&fast_grad, &want);
            assert!(
                cos >= 0.999_999 && rel <= 2e-5,
                "{model} {h}x{w} gradient: cosine {cos}, relative L2 {rel:.2e}"
            );
        }
    }
}
