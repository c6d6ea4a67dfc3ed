//! `stylefarm render`: options in neural-style's names, progress on the terminal, a JSON
//! report, intermediate snapshots.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use stylefarm_engine::image_io::{load_image, save_image, DecodeLimits};
use stylefarm_engine::layers::Pooling;
use stylefarm_engine::layers::{LayerName, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS};
use stylefarm_engine::optim::Optimizer;
use stylefarm_engine::render::{render, Observer, RenderInputs};
use stylefarm_engine::settings::Losses;
use stylefarm_engine::settings::{Init, RenderSettings};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::{describe, VggWeights};
use stylefarm_engine::EngineError;

use crate::weights::find_weights;

/// Options of `stylefarm render` (neural-style's, in kebab case).
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Content image.
    pub content: PathBuf,
    /// Style image(s), comma-separated.
    pub style: String,
    /// Output image (.png or .jpg).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Longer side of the output, in pixels.
    #[arg(long, default_value_t = 512)]
    pub image_size: u32,
    /// Iterations (each one forward and one backward pass of the network).
    #[arg(long, default_value_t = 500)]
    pub num_iterations: u32,
    /// `lbfgs` or `adam`.
    #[arg(long, default_value = "lbfgs", value_parser = ["lbfgs", "adam"])]
    pub optimizer: String,
    /// Adam's step, in 0..255 pixel units.
    #[arg(long, default_value_t = 10.0)]
    pub learning_rate: f32,
    /// L-BFGS with a strong-Wolfe line search (each trial point counts as an iteration).
    #[arg(long)]
    pub line_search: bool,
    /// L-BFGS history size.
    #[arg(long, default_value_t = 100)]
    pub lbfgs_history: usize,
    /// alpha: weight of the content term.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub content_weight: f32,
    /// beta: weight of the style term.
    #[arg(long, default_value_t = 100.0, allow_negative_numbers = true)]
    pub style_weight: f32,
    /// Weight of the total-variation term (smoothness).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub tv_weight: f32,
    /// Content layers, comma-separated.
    #[arg(long, default_value = DEFAULT_CONTENT_LAYERS)]
    pub content_layers: String,
    /// Style layers, comma-separated.
    #[arg(long, default_value = DEFAULT_STYLE_LAYERS)]
    pub style_layers: String,
    /// Blend weights of the style images, comma-separated (default: equal).
    #[arg(long)]
    pub style_blend_weights: Option<String>,
    /// Style image's longer side = image size x this.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub style_scale: f32,
    /// `random`, `content`, or the path of a start image.
    #[arg(long, default_value = "random")]
    pub init: String,
    /// Seed of the random init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the content's colours (transfer luminance only).
    #[arg(long)]
    pub original_colors: bool,
    /// `max` or `avg` pooling.
    #[arg(long, default_value = "max")]
    pub pooling: String,
    /// Weights file (.safetensors or .onnx); default: $STYLEFARM_WEIGHTS or the cache.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Report losses every N iterations (plain lines and the JSON report).
    #[arg(long, default_value_t = 50)]
    pub print_iter: u32,
    /// Write an intermediate image every N iterations (0: never).
    #[arg(long, default_value_t = 0)]
    pub save_iter: u32,
    /// Threads for the numeric work (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write a JSON report (settings, losses, timings) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One line of the loss history.
#[derive(Serialize)]
struct LossPoint {
    iteration: u32,
    #[serde(flatten)]
    losses: Losses,
}

#[derive(Serialize)]
struct Report<'a> {
    content: &'a Path,
    styles: &'a [PathBuf],
    output: &'a Path,
    weights: String,
    settings: &'a RenderSettings,
    width: u32,
    height: u32,
    history: Vec<LossPoint>,
    final_losses: Losses,
    iterations: u32,
    stop: stylefarm_engine::optim::Stop,
    seconds: f64,
    optimize_seconds: f64,
    seconds_per_iteration: f64,
}

impl RenderArgs {
    /// The engine settings these options describe.
    pub fn settings(&self) -> Result<RenderSettings> {
        let optimizer = match self.optimizer.as_str() {
            "adam" => Optimizer::Adam {
                learning_rate: self.learning_rate,
            },
            _ => Optimizer::Lbfgs {
                history: self.lbfgs_history,
                strong_wolfe: self.line_search,
            },
        };
        let init = match self.init.as_str() {
            "random" => Init::Random,
            "content" => Init::Content,
            _ => Init::Image,
        };
        let style_blend_weights = self
            .style_blend_weights
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(|v| {
                        v.trim().parse::<f32>().map_err(|_| {
                            anyhow::anyhow!("invalid style-blend-weights: `{v}` is not a number")
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(RenderSettings {
            image_size: self.image_size,
            num_iterations: self.num_iterations,
            optimizer,
            content_weight: self.content_weight,
            style_weight: self.style_weight,
            tv_weight: self.tv_weight,
            content_layers: LayerName::parse_list(&self.content_layers)?,
            style_layers: LayerName::parse_list(&self.style_layers)?,
            style_blend_weights,
            style_scale: self.style_scale,
            init,
            seed: self.seed,
            original_colors: self.original_colors,
            pooling: self.pooling.parse::<Pooling>()?,
            save_iter: self.save_iter,
        })
    }

    fn style_paths(&self) -> Vec<PathBuf> {
        self.style
            .split(',')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// Shows progress (a bar on a terminal, plain lines otherwise), keeps the loss history and
/// writes snapshots.
struct Progress {
    bar: Option<ProgressBar>,
    print_iter: u32,
    history: Vec<LossPoint>,
    output: PathBuf,
    started: Instant,
}

impl Observer for Progress {
    fn iteration(
        &mut self,
        iteration: u32,
        total: u32,
        l: &Losses,
    ) -> stylefarm_engine::Result<()> {
        let due = self.print_iter > 0 && (iteration % self.print_iter == 0 || iteration == total);
        if due {
            self.history.push(LossPoint {
                iteration,
                losses: l.clone(),
            });
        }
        let text = format!(
            "content {:.4e}  style {:.4e}  tv {:.3e}  total {:.4e}",
            l.content, l.style, l.tv, l.total
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::from(iteration));
                bar.set_message(text);
            }
            None if due => {
                let secs = self.started.elapsed().as_secs_f64();
                eprintln!(
                    "iteration {iteration}/{total}  {text}  ({:.3} s/it)",
                    secs / f64::from(iteration)
                );
            }
            None => {}
        }
        Ok(())
    }

    fn snapshot(
        &mut self,
        iteration: u32,
        image: &image::RgbImage,
    ) -> stylefarm_engine::Result<()> {
        save_image(image, &snapshot_path(&self.output, iteration))
    }
}

/// `out.png` -> `out_100.png`, as neural-style names its intermediate images.
fn snapshot_path(output: &Path, iteration: u32) -> PathBuf {
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = output.extension().and_then(|s| s.to_str()).unwrap_or("png");
    output.with_file_name(format!("{stem}_{iteration}.{ext}"))
}

/// Runs `stylefarm render`.
pub fn run(args: &RenderArgs) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("invalid threads: must be at least 1");
        }
        // Read by candle and rayon when their pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let started = Instant::now();
    let settings = args.settings()?;
    let styles = args.style_paths();
    if styles.is_empty() {
        bail!("no style image given");
    }
    match args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if ["png", "jpg", "jpeg"].contains(&e.as_str()) => {}
        _ => bail!(
            "invalid output {}: use a .png or .jpg file name",
            args.output.display()
        ),
    }
    let limits = DecodeLimits::default();
    let content = load_image(&args.content, &limits)?;
    let style_images = styles
        .iter()
        .map(|p| load_image(p, &limits))
        .collect::<stylefarm_engine::Result<Vec<_>>>()?;
    let init_image = match settings.init {
        Init::Image => Some(load_image(Path::new(&args.init), &limits).with_context(|| {
            format!(
                "invalid init: `{}` is not random, content or a readable image",
                args.init
            )
        })?),
        _ => None,
    };
    settings.validate(style_images.len())?;

    let weights_path = find_weights(args.weights.as_deref())?;
    let weights = VggWeights::load(&weights_path, &Device::Cpu)?;
    let weights_desc = describe(&weights_path, &weights);
    let vgg = Vgg::new(weights, settings.pooling)?;

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(u64::from(settings.num_iterations));
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} it  {msg}  {per_sec}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    if bar.is_none() {
        eprintln!("rendering with {weights_desc}");
    }
    let mut progress = Progress {
        bar,
        print_iter: args.print_iter,
        history: Vec::new(),
        output: args.output.clone(),
        started: Instant::now(),
    };
    let inputs = RenderInputs {
        content,
        styles: style_images,
        init_image,
    };
    let out = render(&vgg, &inputs, &settings, &mut progress);
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    let out = out.map_err(|e| match e {
        EngineError::Cancelled => anyhow::anyhow!("the render was stopped"),
        e => e.into(),
    })?;
    save_image(&out.image, &args.output)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} ({}x{}) after {} iterations in {:.1} s: content {:.4e}, style {:.4e}, tv {:.3e}, total {:.4e}",
        args.output.display(),
        out.image.width(),
        out.image.height(),
        out.iterations,
        seconds,
        out.losses.content,
        out.losses.style,
        out.losses.tv,
        out.losses.total
    );
    if let Some(path) = &args.report {
        let report = Report {
            content: &args.content,
            styles: &styles,
            output: &args.output,
            weights: weights_desc,
            settings: &settings,
            width: out.image.width(),
            height: out.image.height(),
            history: progress.history,
            final_losses: out.losses,
            iterations: out.iterations,
            stop: out.stop,
            seconds,
            optimize_seconds: out.optimize_seconds,
            seconds_per_iteration: out.optimize_seconds / f64::from(out.iterations.max(1)),
        };
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    Ok(())
}
