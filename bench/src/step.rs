//! Forward+backward of the objective: the unit of an optimiser iteration.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use stylefarm_core::image_io::{load_image, resize_to_max_side, DecodeLimits};
use stylefarm_core::settings::{RenderSettings, TermWeights};
use stylefarm_engine::device::{self, DeviceKind};
use stylefarm_engine::objective::{Objective, StyleTargets};
use stylefarm_engine::tensor::image_to_tensor;
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;

/// Options of `stylefarm-bench step`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Content image.
    content: PathBuf,
    /// Style image.
    style: PathBuf,
    /// VGG weights (.onnx or .safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Longer side of content and style, in pixels.
    #[arg(long, default_value_t = 256)]
    image_size: u32,
    /// Timed evaluations after one warm-up.
    #[arg(long, default_value_t = 3)]
    evals: usize,
    /// Use candle's own conv2d instead of the Winograd convolutions.
    #[arg(long)]
    reference: bool,
    /// Where to run: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

/// Prints `{"image_hw": [h, w], "seconds": [...], "median": s, "device": d}` (the objective
/// hands its gradient back to the host, so each time covers the whole GPU work too).
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let device = device::open(args.device)?;
    let weights = VggWeights::load(&args.weights, &device)
        .with_context(|| format!("cannot load {}", args.weights.display()))?;
    let settings = RenderSettings::default();
    let mut vgg = Vgg::new(weights, settings.pooling)?;
    if args.reference {
        vgg = vgg.reference();
    }
    let limits = DecodeLimits::default();
    let tensor = |path: &PathBuf| -> anyhow::Result<_> {
        let img = resize_to_max_side(&load_image(path, &limits)?, args.image_size);
        Ok(image_to_tensor(&img, vgg.preprocess(), &device)?)
    };
    let content = tensor(&args.content)?;
    let style = tensor(&args.style)?;
    let targets = StyleTargets::compute(&vgg, &[(style, 1.0)], &settings.style_layers)?;
    let weights = TermWeights {
        content: settings.content_weight,
        style: settings.style_weight,
        tv: settings.tv_weight,
    };
    let objective = Objective::new(&vgg, &content, &settings.content_layers, &targets, weights)?;
    let x: Vec<f32> = content.flatten_all()?.to_vec1()?;
    let mut grad = vec![0.0; x.len()];
    objective.evaluate(&x, &mut grad)?;
    let mut seconds = Vec::with_capacity(args.evals);
    for _ in 0..args.evals {
        let start = Instant::now();
        objective.evaluate(&x, &mut grad)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let (h, w) = objective.dims();
    println!(
        "{}",
        serde_json::json!({"image_hw": [h, w], "seconds": seconds, "median": median, "device": args.device.to_string()})
    );
    Ok(())
}
