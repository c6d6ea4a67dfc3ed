//! `stylefarm render`: a render on this machine through an embedded farm — a coordinator and
//! one worker in this process, the same code as a real farm — with neural-style's options,
//! progress on the terminal, a JSON report and intermediate snapshots.
//!
//! The images go up as blobs, the job is submitted and watched over gRPC (the progress bar is
//! driven by `WatchJob` events), and the result blob is written out byte for byte: the PNG is
//! exactly what the engine alone would produce with the same settings, seed and thread count.
//! Two things only a local render has are taken from the worker's engine directly, through a
//! wrapper around it: `--save-iter` snapshots at full size (the farm's previews are small
//! JPEGs) and the exact loss history of the report (the event stream samples progress at most
//! four times a second).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use serde::Serialize;

use stylefarm_core::cache::find_weights;
use stylefarm_core::image_io::{save_image, RgbImage};
use stylefarm_core::layers::Pooling;
use stylefarm_core::settings::{Losses, RenderSettings};
use stylefarm_engine::render::Observer;
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::{describe, VggWeights};
use stylefarm_proto::v1::{self, JobState, PlanJobResponse};
use stylefarm_worker::{CandleEngine, Engine, StatisticsInput, TaskInput, TaskOutput};

use crate::commands::runtime;
use crate::embedded::EmbeddedFarm;
use crate::farm::FarmClient;
use crate::job::JobInputs;
use crate::options::{split_paths, RenderOptions};
use crate::output::{dimensions, write_image, OutputFormat};
use crate::progress::{follow, Display, DisplayOptions};
use crate::split::{plan_json, plan_text, SplitOptions};

/// Options of `stylefarm render`: the shared render options plus what only a local render
/// has (weights, snapshots, a report).
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Content image.
    pub content: PathBuf,
    /// Style image(s), comma-separated.
    pub style: String,
    /// Output image (.png or .jpg).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The render options.
    #[command(flatten)]
    pub options: RenderOptions,
    /// Tiles, sweeps and coarse-to-fine stages.
    #[command(flatten)]
    pub split: SplitOptions,
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
    /// Print the plan (tasks, tile grid, estimated memory and time) instead of rendering.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
}

/// One line of the loss history.
#[derive(Debug, Clone, Serialize)]
struct LossPoint {
    iteration: u32,
    #[serde(flatten)]
    losses: Losses,
}

/// The task's final losses, as the farm reports them.
#[derive(Debug, Clone, Copy, Serialize)]
struct FinalLosses {
    content: f64,
    style: f64,
    tv: f64,
    total: f64,
}

impl From<&v1::Losses> for FinalLosses {
    fn from(l: &v1::Losses) -> Self {
        Self {
            content: l.content,
            style: l.style,
            tv: l.tv,
            total: l.total,
        }
    }
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
    /// `None` for a result assembled from several tasks (tiles, a contact sheet).
    final_losses: Option<FinalLosses>,
    iterations: u32,
    /// Wall time of the whole command, measured by the client.
    seconds: f64,
    /// Time the engine spent on the task (style targets, optimisation, final losses).
    render_seconds: f64,
    seconds_per_iteration: f64,
}

/// What the local engine saw of the render.
#[derive(Debug, Default)]
struct RunRecord {
    history: Vec<LossPoint>,
    iterations: u32,
    render_seconds: f64,
}

/// The worker's engine for a local render: the candle engine, plus full-size snapshots on the
/// local disk and the exact loss history for the report.
struct LocalEngine {
    inner: CandleEngine,
    output: PathBuf,
    save_iter: u32,
    print_iter: u32,
    record: Arc<Mutex<RunRecord>>,
}

impl Engine for LocalEngine {
    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn run(
        &self,
        task: &TaskInput,
        observer: &mut dyn Observer,
    ) -> stylefarm_engine::Result<TaskOutput> {
        let started = Instant::now();
        let mut local = LocalObserver {
            inner: observer,
            output: &self.output,
            save_iter: self.save_iter,
            print_iter: self.print_iter,
            history: Vec::new(),
        };
        let out = self.inner.run(task, &mut local);
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.history = local.history;
        record.render_seconds = started.elapsed().as_secs_f64();
        if let Ok(o) = &out {
            record.iterations = o.iterations;
        }
        out
    }

    fn statistics(&self, input: &StatisticsInput) -> stylefarm_engine::Result<Vec<u8>> {
        self.inner.statistics(input)
    }

    fn tile_objective(
        &self,
        settings: &stylefarm_core::settings::RenderSettings,
        content: &stylefarm_worker::engine::RgbImage,
    ) -> stylefarm_engine::Result<stylefarm_worker::engine::TileObjective> {
        self.inner.tile_objective(settings, content)
    }
}

/// Passes everything on to the worker's observer, and keeps snapshots and losses locally.
struct LocalObserver<'a> {
    inner: &'a mut dyn Observer,
    output: &'a Path,
    save_iter: u32,
    print_iter: u32,
    history: Vec<LossPoint>,
}

impl Observer for LocalObserver<'_> {
    fn iteration(
        &mut self,
        iteration: u32,
        total: u32,
        l: &Losses,
    ) -> stylefarm_engine::Result<()> {
        if self.print_iter > 0 && (iteration.is_multiple_of(self.print_iter) || iteration == total)
        {
            self.history.push(LossPoint {
                iteration,
                losses: l.clone(),
            });
        }
        self.inner.iteration(iteration, total, l)
    }

    fn snapshot(&mut self, iteration: u32, image: &RgbImage) -> stylefarm_engine::Result<()> {
        if self.save_iter > 0 && iteration.is_multiple_of(self.save_iter) {
            save_image(image, &snapshot_path(self.output, iteration))?;
        }
        self.inner.snapshot(iteration, image)
    }

    fn wants_snapshot(&mut self, iteration: u32) -> bool {
        self.inner.wants_snapshot(iteration)
    }

    fn cancel_flag(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.inner.cancel_flag()
    }
}

/// `out.png` -> `out_100.png`, as neural-style names its intermediate images.
fn snapshot_path(output: &Path, iteration: u32) -> PathBuf {
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = output.extension().and_then(|s| s.to_str()).unwrap_or("png");
    output.with_file_name(format!("{stem}_{iteration}.{ext}"))
}

/// How the embedded render ended.
struct Rendered {
    /// The task whose result is the job's.
    task: v1::Task,
    /// Tasks in the job.
    tasks: usize,
    png: Vec<u8>,
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
    let mut settings = args.options.settings()?;
    settings.save_iter = args.save_iter;
    args.split.adjust(&mut settings)?;
    let mut split = v1::JobSpec::default();
    args.split.apply(&mut split, &settings)?;
    let styles = split_paths(&args.style);
    if styles.is_empty() {
        bail!("no style image given");
    }
    OutputFormat::require(&args.output)?;
    let init = args.options.init_path();
    let inputs = JobInputs::load(
        std::slice::from_ref(&args.content),
        &styles,
        init.as_deref(),
        &settings,
    )?;

    let weights_path = find_weights(args.weights.as_deref())?;
    let weights = VggWeights::load(&weights_path, &Device::Cpu)?;
    let weights_desc = describe(&weights_path, &weights);
    let engine = CandleEngine::new(Vgg::new(weights, Pooling::Max)?);
    let record = Arc::new(Mutex::new(RunRecord::default()));
    let engine = LocalEngine {
        inner: engine,
        output: args.output.clone(),
        save_iter: args.save_iter,
        print_iter: args.print_iter,
        record: record.clone(),
    };
    let display = DisplayOptions::for_stderr(args.print_iter, false);
    if !display.bars {
        eprintln!("rendering with {weights_desc}");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    if args.dry_run {
        let plan = runtime()?.block_on(plan_embedded(
            Arc::new(engine),
            &inputs,
            &settings,
            split,
            threads,
        ))?;
        println!(
            "{}",
            if args.json {
                plan_json(&plan)?
            } else {
                plan_text(&plan).trim_end().to_string()
            }
        );
        return Ok(());
    }
    let rendered = runtime()?.block_on(render_embedded(
        Arc::new(engine),
        &inputs,
        &settings,
        split,
        threads,
        display,
    ))?;
    write_image(&rendered.png, &args.output)?;

    let seconds = started.elapsed().as_secs_f64();
    let record = std::mem::take(&mut *record.lock().unwrap_or_else(PoisonError::into_inner));
    let (width, height) = dimensions(&rendered.png)?;
    let losses = rendered.task.final_losses.as_ref().map(FinalLosses::from);
    let iterations = match record.iterations {
        0 => rendered.task.progress.as_ref().map_or(0, |p| p.iteration),
        n => n,
    };
    match &losses {
        Some(losses) => eprintln!(
            "wrote {} ({width}x{height}) after {iterations} iterations in {seconds:.1} s: content {:.4e}, style {:.4e}, tv {:.3e}, total {:.4e}",
            args.output.display(),
            losses.content,
            losses.style,
            losses.tv,
            losses.total
        ),
        None => eprintln!(
            "wrote {} ({width}x{height}), assembled from {} tasks, in {seconds:.1} s",
            args.output.display(),
            rendered.tasks - 1
        ),
    }
    if let Some(path) = &args.report {
        let report = Report {
            content: &args.content,
            styles: &styles,
            output: &args.output,
            weights: weights_desc,
            settings: &settings,
            width,
            height,
            history: record.history,
            final_losses: losses,
            iterations,
            seconds,
            render_seconds: record.render_seconds,
            seconds_per_iteration: record.render_seconds / f64::from(iterations.max(1)),
        };
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    Ok(())
}

/// Starts the embedded farm, renders one job (split as `split` says) on it and stops it again.
async fn render_embedded(
    engine: Arc<dyn Engine>,
    inputs: &JobInputs,
    settings: &RenderSettings,
    split: v1::JobSpec,
    threads: usize,
    display: DisplayOptions,
) -> Result<Rendered> {
    let save_iter = settings.save_iter;
    let farm = EmbeddedFarm::start(engine, |c| {
        c.threads = threads;
        // The engine is asked for snapshots every `save_iter` iterations; none if 0.
        c.preview_every = save_iter;
        // Ctrl-C: stop the render at once.
        c.grace = Duration::ZERO;
    })
    .await?;
    let mut display = Display::new(display);
    farm.run(|url| async move {
        let rendered = tokio::select! {
            r = submit_and_follow(&url, inputs, settings, split, &mut display) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("the render was stopped")),
        };
        display.finish(true);
        rendered
    })
    .await
}

/// The plan the embedded farm would make for the job, once its worker has said how much
/// memory it has (which decides the tile size when none is given).
async fn plan_embedded(
    engine: Arc<dyn Engine>,
    inputs: &JobInputs,
    settings: &RenderSettings,
    split: v1::JobSpec,
    threads: usize,
) -> Result<PlanJobResponse> {
    let farm = EmbeddedFarm::start(engine, |c| c.threads = threads).await?;
    farm.run(|url| async move {
        let client = FarmClient::connect(&url, None).await?;
        while client.workers().await?.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut spec = inputs.upload(&client, settings).await?;
        (spec.tiles, spec.sweeps, spec.scales) = (split.tiles, split.sweeps, split.scales);
        Ok(client.plan(spec).await?)
    })
    .await
}

async fn submit_and_follow(
    url: &str,
    inputs: &JobInputs,
    settings: &RenderSettings,
    split: v1::JobSpec,
    display: &mut Display,
) -> Result<Rendered> {
    let client = FarmClient::connect(url, None).await?;
    let mut spec = inputs.upload(&client, settings).await?;
    // An engine error will not go away by trying again on the same machine.
    spec.max_attempts = 1;
    (spec.tiles, spec.sweeps, spec.scales) = (split.tiles, split.sweeps, split.scales);
    let id = client.submit(spec).await?;
    let job = follow(&client, &id, display).await?;
    // The task whose result is the job's (the last stage, the assembly), else the only one.
    let task = job
        .tasks
        .iter()
        .find(|t| t.spec.as_ref().is_some_and(|s| s.job_result))
        .or_else(|| job.tasks.iter().min_by_key(|t| t.index))
        .cloned()
        .context("the embedded coordinator returned a job without its task")?;
    let failed = job
        .tasks
        .iter()
        .find(|t| !t.error.is_empty() && t.attempts > 0);
    match JobState::try_from(job.state) {
        Ok(JobState::Completed) => {}
        Ok(JobState::Canceled) => bail!("the render was canceled"),
        _ if failed.is_some() => bail!("{}", failed.map_or("", |t| t.error.as_str())),
        _ => bail!("the render failed: {}", job.error),
    }
    let blob = job
        .result
        .as_ref()
        .or(task.result.as_ref())
        .context("the render completed without a result")?;
    let png = client.download(blob).await?;
    Ok(Rendered {
        task,
        tasks: job.tasks.len(),
        png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_named_like_neural_styles() {
        assert_eq!(
            snapshot_path(Path::new("dir/out.png"), 100),
            PathBuf::from("dir/out_100.png")
        );
        assert_eq!(
            snapshot_path(Path::new("out.jpg"), 5),
            PathBuf::from("out_5.jpg")
        );
    }
}
