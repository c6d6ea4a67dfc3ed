//! Tiles in lock step, the coordinator's half (`stylefarm_core::lockstep`): a driver per image
//! that optimises the whole image, and the shards (workers holding a leased shard task) that
//! evaluate its tiles.
//!
//! - A shard task's worker opens `WorkerService.Shard` with its lease (`ShardHello`). The
//!   handler hands the stream to the job's driver through [`Lockstep`] and forwards what the
//!   worker sends.
//! - The driver is the job's lock-step assemble task. It runs on its own thread, never on the
//!   async runtime: it waits for a first shard, then runs the optimiser, each evaluation spread
//!   over the shards present ([`shards`]). A shard that joins takes part from the next step
//!   on; one that goes away (its stream ends or errs, or it does not answer in time: the
//!   configured step timeout plus twice the slowest time per tile seen so far, for each tile
//!   it was asked for) leaves its tiles to the others, and the step is run again for them.
//! - Every so many iterations or seconds the driver saves a checkpoint
//!   ([`crate::checkpoint`]); a driver that starts, after a restart of the coordinator, goes on
//!   from its job's checkpoint. A shutdown leaves the task and its checkpoint as they are; any
//!   other end of the render deletes the checkpoint.
//! - Cancelling the job stops the driver within about a second, and ends its shards' streams.
//! - At the end the driver stores the image and sends every shard `ShardDone` with it. A shard
//!   task leased after that is answered `ShardDone` at once, so every shard task completes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use stylefarm_convert::{losses_to_proto, settings_from_proto};
use stylefarm_core::color::keep_original_colors;
use stylefarm_core::image_io::{
    decode_image, encode_jpeg, encode_png, image_to_network, network_to_image, random_image,
    resize_exact, resize_to_max_side, DecodeLimits, RgbImage,
};
use stylefarm_core::lockstep::{
    driver_optimizer, lockstep_tiles, optimize, style_targets_of_statistics, LockstepObjective,
};
use stylefarm_core::optim::Resume;
use stylefarm_core::settings::{Init, Losses, TermWeights};
use stylefarm_core::CoreError;
use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1::{self, shard_command::Command, task_spec::Part};
use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::blobs::{BlobHash, BlobStore};
use crate::checkpoint::{self, Policy, Render, Saver, STATE_BUDGET};
use crate::error::{CoordinatorError, Result};
use crate::scheduler::Assembly;
use crate::state::{Signals, StateHandle};

mod shards;

use shards::{Member, ShardPool};

/// How long a driver waits for a shard's answer to a step, beyond what the earlier steps took,
/// unless configured otherwise (`Config::shard_step_timeout`).
pub(crate) const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the driver's thread looks at its cancel flag while it waits.
const POLL: Duration = Duration::from_millis(50);
/// How often the task around a driver looks whether its job has ended.
const JOB_CHECK: Duration = Duration::from_millis(500);
/// How long a shard's stream waits for its job's driver to start.
const DRIVER_WAIT: Duration = Duration::from_secs(60);
/// Shortest gap between two progress reports of a driver.
const PROGRESS_GAP: Duration = Duration::from_millis(250);
/// Longest gap between two previews of a print: the start image at once, then the image
/// between evaluations at least this often (the web monitor shows each within 2 s).
const PREVIEW_INTERVAL: Duration = Duration::from_secs(1);
/// Longer side of a print's preview, in pixels (the whole image, downscaled), and its JPEG
/// quality.
const PREVIEW_SIDE: u32 = 384;
const PREVIEW_QUALITY: u8 = 80;

/// What the driver's thread tells the task around it: the latest progress, and the latest
/// preview (a small JPEG of the whole image), each replacing the one before.
struct Reports {
    progress: watch::Sender<Option<v1::Progress>>,
    preview: watch::Sender<Option<Arc<Vec<u8>>>>,
}

impl Reports {
    /// Sends the preview of the network-input values `x` (a `w` by `h` image). A preview that
    /// cannot be made is no reason to stop the render.
    fn preview(&self, x: &[f32], w: u32, h: u32, pre: stylefarm_core::preprocess::Preprocess) {
        let Some(image) = network_to_image(x, w, h, pre) else {
            return;
        };
        let side = w.max(h).min(PREVIEW_SIDE);
        match encode_jpeg(&resize_to_max_side(&image, side), PREVIEW_QUALITY) {
            Ok(jpeg) => {
                self.preview.send_replace(Some(Arc::new(jpeg)));
            }
            Err(e) => tracing::warn!("could not make a preview of the print: {e}"),
        }
    }
}

/// The commands a shard's stream carries to its worker.
pub(crate) type Commands = tokio::sync::mpsc::Sender<std::result::Result<v1::ShardCommand, Status>>;

/// A shard's stream, handed to its job's driver.
pub(crate) struct Joined {
    pub(crate) task: TaskId,
    pub(crate) hello: v1::ShardHello,
    /// Its worker's speed measured at start-up, for its first share (see [`shards`]).
    pub(crate) startup_speed: Option<f64>,
    pub(crate) commands: Commands,
    /// What the worker sends after its hello; an error ends the stream.
    pub(crate) replies: mpsc::Receiver<std::result::Result<v1::ShardReply, String>>,
}

/// The running drivers, by job, and how they run.
pub(crate) struct Lockstep {
    drivers: Mutex<HashMap<JobId, mpsc::Sender<Joined>>>,
    step_timeout: Duration,
    /// `None`: no checkpoints.
    checkpoints: Option<Policy>,
}

impl Default for Lockstep {
    /// The default step timeout, no checkpoints.
    fn default() -> Self {
        Self {
            drivers: Mutex::default(),
            step_timeout: DEFAULT_STEP_TIMEOUT,
            checkpoints: None,
        }
    }
}

/// Takes a driver out of [`Lockstep`] when it ends.
struct Registered<'a> {
    lockstep: &'a Lockstep,
    job: JobId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.lockstep.lock().remove(&self.job);
    }
}

impl Lockstep {
    /// Drivers with `config`'s shard step timeout, checkpointing under its data directory.
    pub(crate) fn new(config: &crate::Config) -> Self {
        Self {
            drivers: Mutex::default(),
            step_timeout: config.shard_step_timeout,
            checkpoints: Some(Policy {
                dir: config.data_dir.join("checkpoints"),
                every_iterations: config.checkpoint_iterations,
                every: config.checkpoint_interval,
                state_budget: STATE_BUDGET,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, mpsc::Sender<Joined>>> {
        self.drivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, job: JobId, joins: mpsc::Sender<Joined>) -> Registered<'_> {
        self.lock().insert(job, joins);
        Registered {
            lockstep: self,
            job,
        }
    }

    /// Hands a shard's stream to its job's driver, waiting up to [`DRIVER_WAIT`] for it to
    /// start.
    pub(crate) async fn join(&self, job: JobId, joined: Joined) -> Result<()> {
        let until = Instant::now() + DRIVER_WAIT;
        loop {
            let driver = self.lock().get(&job).cloned();
            if let Some(driver) = driver {
                return driver.send(joined).map_err(|_| {
                    CoordinatorError::Unavailable("the job's lock-step render has ended".into())
                });
            }
            if Instant::now() >= until {
                return Err(CoordinatorError::Unavailable(format!(
                    "the job's lock-step render did not start within {} s",
                    DRIVER_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the driver's thread needs.
struct DriverInput {
    job: JobId,
    content: Vec<u8>,
    init: Option<Vec<u8>>,
    statistics: Vec<u8>,
    settings: stylefarm_core::settings::RenderSettings,
    width: u32,
    height: u32,
    tile_size: u32,
    margin: u32,
    step_timeout: Duration,
    checkpoints: Option<Policy>,
}

/// Runs a lock-step assemble task to its result: the optimised image, stored as a blob, and
/// the objective of its 8-bit pixels.
pub(crate) async fn run(
    state: &StateHandle,
    blobs: &BlobStore,
    lockstep: &Lockstep,
    signals: &Signals,
    assembly: Assembly,
) -> Result<(v1::BlobRef, v1::Losses)> {
    let internal = |m: &str| CoordinatorError::Internal(m.to_string());
    let Some(Part::Assemble(a)) = &assembly.spec.part else {
        return Err(internal("a lock-step render without its geometry"));
    };
    let [(_, statistics)] = assembly.inputs.as_slice() else {
        return Err(internal(
            "a lock-step render depends on one statistics task",
        ));
    };
    let read = |b: &v1::BlobRef| {
        let b = b.clone();
        async move {
            let hash = BlobHash::parse(&b.sha256, "sha256")?;
            blobs.read_all(&hash).await
        }
    };
    let statistics = read(statistics).await?;
    let content = read(
        assembly
            .spec
            .content
            .as_ref()
            .ok_or_else(|| internal("a lock-step render without its content image"))?,
    )
    .await?;
    let settings = settings_from_proto(
        &assembly.spec.settings.clone().unwrap_or_default(),
        assembly.spec.styles.len().max(1),
        "settings",
    )
    .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let init = match (&assembly.spec.init_image, settings.init) {
        (Some(b), Init::Image) => Some(read(b).await?),
        _ => None,
    };
    let input = DriverInput {
        job: assembly.job,
        content,
        init,
        statistics,
        settings,
        width: a.full_width,
        height: a.full_height,
        tile_size: a.tile_size,
        margin: a.margin,
        step_timeout: lockstep.step_timeout,
        checkpoints: lockstep.checkpoints.clone(),
    };
    let checkpoints = lockstep.checkpoints.clone();

    let (joins_tx, joins) = mpsc::channel();
    let _registered = lockstep.register(assembly.job, joins_tx);
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress_rx) = watch::channel(None::<v1::Progress>);
    let (preview_tx, mut preview_rx) = watch::channel(None::<Arc<Vec<u8>>>);
    let reports = Reports {
        progress: progress_tx,
        preview: preview_tx,
    };
    let (done_tx, mut done_rx) = oneshot::channel();
    let flag = cancel.clone();
    std::thread::Builder::new()
        .name("stylefarm-lockstep".into())
        .spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drive(input, joins, &flag, &reports)
            }))
            .unwrap_or_else(|_| {
                let crashed = CoordinatorError::Internal("the lock-step driver crashed".into());
                Err((crashed, Vec::new()))
            });
            let _ = done_tx.send(out);
        })
        .map_err(|e| CoordinatorError::Internal(format!("cannot start a driver thread: {e}")))?;

    let (task, job) = (assembly.task, assembly.job);
    let mut last_report = Instant::now() - PROGRESS_GAP;
    let mut ticker = tokio::time::interval(JOB_CHECK);
    let mut shutting_down = false;
    // The latest preview stored, which every progress report names.
    let mut preview: Option<v1::BlobRef> = None;
    let outcome = loop {
        tokio::select! {
            out = &mut done_rx => break out.map_err(|_| internal("the lock-step driver ended without a word"))?,
            changed = preview_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let jpeg = preview_rx.borrow_and_update().clone();
                if let Some(jpeg) = jpeg {
                    match blobs.put(&jpeg).await {
                        Ok(blob) => preview = Some(blob),
                        Err(e) => tracing::debug!(job_id = %job, "could not store a preview of the print: {e}"),
                    }
                    // Shown at once, with the last progress (none before the first step).
                    let mut p = progress_rx.borrow().clone().unwrap_or_default();
                    p.preview.clone_from(&preview);
                    let _ = state.call(move |c| c.apply(|s, now| s.own_progress(task, p, now))).await;
                }
            }
            changed = progress_rx.changed() => {
                if changed.is_err() {
                    // The driver is done; its result follows.
                    continue;
                }
                if last_report.elapsed() >= PROGRESS_GAP {
                    last_report = Instant::now();
                    let p = progress_rx.borrow_and_update().clone();
                    if let Some(mut p) = p {
                        p.preview.clone_from(&preview);
                        let _ = state.call(move |c| c.apply(|s, now| s.own_progress(task, p, now))).await;
                    }
                }
            }
            _ = ticker.tick() => {
                let over = state
                    .call(move |c| Ok(c.sched.job(job)?.state.is_final()))
                    .await
                    .unwrap_or(true);
                if over {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            () = signals.shutdown_requested(), if !shutting_down => {
                shutting_down = true;
                cancel.store(true, Ordering::Relaxed);
            }
        }
    };
    if shutting_down && outcome.is_err() {
        // Stopped by the shutdown, not by the render: the task stays ready and its checkpoint
        // stays, so that the next start goes on from it. The runtime's end drops this future.
        for m in outcome.err().map(|(_, m)| m).unwrap_or_default() {
            let _ = m
                .commands
                .try_send(Err(Status::unavailable("the coordinator is shutting down")));
        }
        return std::future::pending().await;
    }
    // The render is over, whichever way: its checkpoint goes once it has been told.
    let forget = || {
        if let Some(policy) = &checkpoints {
            checkpoint::remove(policy, job);
        }
    };
    // The last step's progress, which the gap may have held back.
    let last = progress_rx.borrow().clone();
    if let Some(mut p) = last {
        p.preview = preview;
        let _ = state
            .call(move |c| c.apply(|s, now| s.own_progress(task, p, now)))
            .await;
    }
    let ((png, losses), members) = match outcome {
        Ok(done) => done,
        Err((e, members)) => {
            let reason = e.to_string();
            for m in members {
                let _ = m.commands.try_send(Err(Status::aborted(reason.clone())));
            }
            forget();
            return Err(e);
        }
    };
    let result = blobs.put(&png).await?;
    for m in members {
        let done = Command::Done(v1::ShardDone {
            result: Some(result.clone()),
        });
        let _ = m
            .commands
            .send(Ok(v1::ShardCommand {
                command: Some(done),
            }))
            .await;
    }
    forget();
    Ok((result, losses_to_proto(&losses)))
}

/// The PNG and the objective of its pixels, with the shards to tell; or why not, with them.
type DriverOutcome =
    std::result::Result<((Vec<u8>, Losses), Vec<Member>), (CoordinatorError, Vec<Member>)>;

/// The driver's thread: the optimisation from start to PNG.
fn drive(
    input: DriverInput,
    joins: mpsc::Receiver<Joined>,
    cancel: &AtomicBool,
    reports: &Reports,
) -> DriverOutcome {
    let (w, h) = (input.width, input.height);
    let align = input.settings.deepest_stride();
    let tiles = match lockstep_tiles(w, h, input.tile_size, input.margin, align) {
        Ok(t) => t,
        Err(e) => return Err((driver_error(e), Vec::new())),
    };
    let mut pool = ShardPool::new(
        joins,
        tiles,
        (w as usize, h as usize),
        cancel,
        input.job,
        input.step_timeout,
    );
    match optimise(&input, &mut pool, reports) {
        Ok(done) => Ok((done, pool.into_members())),
        Err(e) => Err((driver_error(e), pool.into_members())),
    }
}

fn optimise(
    input: &DriverInput,
    pool: &mut ShardPool<'_>,
    reports: &Reports,
) -> stylefarm_core::Result<(Vec<u8>, Losses)> {
    let (w, h) = (input.width, input.height);
    let s = &input.settings;
    let limits = DecodeLimits::default();
    let content = resize_exact(
        &decode_image(&input.content, "content image", &limits)?,
        w,
        h,
    );
    let targets = style_targets_of_statistics(&input.statistics, &s.style_layers)?;
    pool.wait_for_member()?;
    let pre = pool.preprocess()?;
    let weights = TermWeights {
        content: s.content_weight,
        style: s.style_weight,
        tv: s.tv_weight,
    };
    let objective = LockstepObjective::new(targets, weights, w as usize, h as usize)?;
    let start: RgbImage = match s.init {
        Init::Content => content.clone(),
        Init::Random => random_image(w, h, s.seed),
        Init::Image => {
            let bytes = input.init.as_deref().ok_or(CoreError::InvalidOption {
                option: "init",
                reason: "an init image was asked for but none was given".into(),
            })?;
            resize_exact(&decode_image(bytes, "init image", &limits)?, w, h)
        }
    };
    let (optimizer, bytes) =
        driver_optimizer(s.optimizer, u64::from(w) * u64::from(h), s.num_iterations);
    if optimizer != s.optimizer {
        tracing::info!(job_id = %input.job, ?optimizer, bytes, "L-BFGS's history cut to fit the driver's memory");
    }
    let render = Render {
        width: w,
        height: h,
        iterations: s.num_iterations,
    };
    let saved = input
        .checkpoints
        .as_ref()
        .and_then(|policy| checkpoint::load(policy, input.job, render, optimizer));
    let (mut x, resume) = match saved {
        Some(saved) => {
            tracing::info!(job_id = %input.job, iter = saved.resume.evals, with_state = saved.resume.state.is_some(), "lock-step render resumed from its checkpoint");
            (saved.x, saved.resume)
        }
        None => (image_to_network(&start, pre), Resume::default()),
    };
    let mut saver = input
        .checkpoints
        .clone()
        .map(|policy| Saver::new(policy, input.job, render, resume.evals));
    let (started, resumed_at) = (Instant::now(), resume.evals);
    // The first picture before the first step, which may take a while on a big print. A
    // resumed render shows its first after a step: its progress goes on from the checkpoint.
    if resumed_at == 0 {
        reports.preview(&x, w, h, pre);
    }
    let mut last_preview = Instant::now();
    let done = optimize(
        &objective,
        pool,
        &mut x,
        optimizer,
        s.num_iterations,
        pre,
        resume,
        &mut |iteration, total, losses| {
            reports.progress.send_replace(Some(v1::Progress {
                iteration,
                total_iterations: total,
                losses: Some(losses_to_proto(losses)),
                preview: None,
            }));
            Ok(())
        },
        &mut |snapshot| {
            if last_preview.elapsed() >= PREVIEW_INTERVAL {
                last_preview = Instant::now();
                reports.preview(snapshot.x, w, h, pre);
            }
            if let Some(saver) = saver.as_mut() {
                saver.offer(snapshot);
            }
            Ok(())
        },
    )?;
    tracing::info!(
        job_id = %input.job,
        iterations = done.iterations,
        resumed_at,
        seconds = started.elapsed().as_secs_f64(),
        "lock-step render optimised"
    );
    let mut image = network_to_image(&x, w, h, pre).ok_or(CoreError::InvalidOption {
        option: "image-size",
        reason: format!("a {w}x{h} image is too large"),
    })?;
    if s.original_colors {
        image = keep_original_colors(&image, &content);
    }
    // What gets judged: the objective of the pixels written, one more first step.
    let losses = objective.losses(pool, &image_to_network(&image, pre))?;
    Ok((encode_png(&image)?, losses))
}

fn driver_error(e: CoreError) -> CoordinatorError {
    match e {
        CoreError::Cancelled => CoordinatorError::Internal("the job was canceled".into()),
        e => CoordinatorError::Internal(e.to_string()),
    }
}
