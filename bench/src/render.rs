//! A render by the engine alone, no farm: the baseline for the farm's per-task overhead
//! (`stylefarm render` runs the same render through an embedded coordinator and worker).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use stylefarm_core::image_io::{load_image, save_image, DecodeLimits};
use stylefarm_core::settings::{Init, RenderSettings};
use stylefarm_engine::device::{self, DeviceKind};
use stylefarm_engine::render::{render, RenderInputs};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;

/// Options of `stylefarm-bench render` (the render defaults of `stylefarm render`).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Content image.
    content: PathBuf,
    /// Style image.
    style: PathBuf,
    /// Output PNG.
    #[arg(short, long)]
    output: PathBuf,
    /// VGG weights (.onnx or .safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Longer side of the output, in pixels.
    #[arg(long, default_value_t = 256)]
    image_size: u32,
    /// L-BFGS iterations.
    #[arg(long, default_value_t = 100)]
    num_iterations: u32,
    /// Where to run: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

/// Renders from the content image and prints `{"seconds": wall, "total": loss}`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let device = device::open(args.device)?;
    let weights = VggWeights::load(&args.weights, &device)
        .with_context(|| format!("cannot load {}", args.weights.display()))?;
    let settings = RenderSettings {
        image_size: args.image_size,
        num_iterations: args.num_iterations,
        init: Init::Content,
        ..RenderSettings::default()
    };
    let vgg = Vgg::new(weights, settings.pooling)?;
    let limits = DecodeLimits::default();
    let inputs = RenderInputs {
        content: load_image(&args.content, &limits)?,
        styles: vec![load_image(&args.style, &limits)?],
        init_image: None,
    };
    let out = render(&vgg, &inputs, &settings, &mut ())?;
    save_image(&out.image, &args.output)?;
    println!(
        "{}",
        serde_json::json!({"seconds": start.elapsed().as_secs_f64(), "total": out.losses.total})
    );
    Ok(())
}
