//! One lease from start to end: check the spec, fetch the blobs, render on a dedicated thread
//! while a heartbeat loop reports progress and previews, then complete or fail the task.
//!
//! The heartbeat loop owns every decision about the lease: an `UpdateTask` answer with
//! `cancel` sets the engine's cancel flag, and once the render has stopped the task is handed
//! back as interrupted (never completed); a refused lease stops the render and drops the task
//! without a word; a shutdown gives the task `grace` to finish and then hands it back as
//! interrupted.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stylefarm_convert::{losses_to_proto, settings_from_proto};
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits};
use stylefarm_core::settings::{Init, RenderSettings};
use stylefarm_core::CoreError;
use stylefarm_engine::render::{Observer, RenderInputs};
use stylefarm_engine::EngineError;
use stylefarm_proto::v1::{
    self, task_spec::Part, BlobRef, CompleteTaskRequest, FailTaskRequest, FailureKind, Lease,
    Progress, TaskSpec, UpdateTaskRequest, UpdateTaskResponse,
};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tonic::Status;
use tracing::Instrument;

use crate::blobs::{self, BlobCache, MAX_BLOB_BYTES};
use crate::engine::{Engine, StatisticsInput, TaskInput};
use crate::observer::{ProgressObserver, ProgressState};
use crate::rpc::{describe, lease_lost, retry, within, Rpc, RPC_TIMEOUT};
use crate::shard::{serve, ShardInput};
use crate::worker::Shutdown;
use stylefarm_proto::blob::{is_sha256, sha256_hex};

/// Shortest gap between two `UpdateTask` calls: progress goes out at most 4 times a second.
const MIN_UPDATE_GAP: Duration = Duration::from_millis(250);
/// How long a cancelled render may take to stop before the worker stops waiting for it.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Tries of `CompleteTask` / `FailTask` while the coordinator is unreachable.
const REPORT_ATTEMPTS: u32 = 6;
/// Longest failure message sent to the coordinator.
const MAX_MESSAGE_CHARS: usize = 2000;

/// What a worker's tasks share.
pub(crate) struct TaskContext {
    pub(crate) rpc: Rpc,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) cache: Arc<BlobCache>,
    /// Gap between heartbeats when there is no new progress.
    pub(crate) heartbeat: Duration,
    pub(crate) preview_every: u32,
    pub(crate) grace: Duration,
    /// The memory the worker offers (0: unknown).
    pub(crate) memory_bytes: u64,
}

/// Why the worker stopped a render before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `UpdateTask` answered `cancel`.
    Cancelled,
    /// `UpdateTask` was refused: the lease lapsed or went to another worker.
    LeaseLost,
    /// The worker is shutting down and the grace period ran out.
    Shutdown,
}

/// A task that cannot be done, as reported with `FailTask`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn application(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Application,
            message: message.into(),
        }
    }

    fn interrupted() -> Self {
        Self {
            kind: FailureKind::Interrupted,
            message: "the worker shut down before the task finished".into(),
        }
    }

    pub(crate) fn from_engine(e: impl Into<EngineError>) -> Self {
        let e = e.into();
        let message = e.to_string();
        let kind = match e {
            EngineError::Core(CoreError::Cancelled) => FailureKind::Interrupted,
            EngineError::Candle(_) if looks_like_out_of_memory(&message) => {
                FailureKind::OutOfMemory
            }
            _ => FailureKind::Application,
        };
        Self { kind, message }
    }
}

/// Candle's CPU allocations abort the process when memory runs out, so only device errors
/// (CUDA, Metal) and explicit allocation failures can be told apart, by their text.
fn looks_like_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "cannot allocate",
        "memory allocation",
        "alloc failed",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// A checked task spec.
#[derive(Debug, Clone)]
struct Plan {
    content: BlobRef,
    styles: Vec<BlobRef>,
    init: Option<BlobRef>,
    settings: RenderSettings,
    /// A statistics task: no render, the whole image's style targets.
    statistics: Option<v1::Statistics>,
    /// A shard of tiles in lock step: no render of its own, the coordinator's evaluations.
    shard: Option<v1::Shard>,
}

/// Checks everything in `spec` that can be checked before downloading anything.
fn plan(spec: Option<&TaskSpec>, preview_every: u32) -> Result<Plan, Failure> {
    let spec =
        spec.ok_or_else(|| Failure::application("invalid spec: the lease has no task spec"))?;
    let blob = |b: Option<&BlobRef>, field: &str| -> Result<BlobRef, Failure> {
        let b = b.ok_or_else(|| Failure::application(format!("invalid spec.{field}: missing")))?;
        if !is_sha256(&b.sha256) {
            return Err(Failure::application(format!(
                "invalid spec.{field}.sha256: `{}` is not 64 lowercase hex digits",
                b.sha256.chars().take(80).collect::<String>()
            )));
        }
        if b.size > MAX_BLOB_BYTES {
            return Err(Failure::application(format!(
                "invalid spec.{field}.size: {} bytes is over the worker's limit of {} MiB",
                b.size,
                MAX_BLOB_BYTES >> 20
            )));
        }
        Ok(b.clone())
    };
    let content = blob(spec.content.as_ref(), "content")?;
    if spec.styles.is_empty() {
        return Err(Failure::application(
            "invalid spec.styles: at least one style image is needed",
        ));
    }
    let styles = spec
        .styles
        .iter()
        .enumerate()
        .map(|(i, b)| blob(Some(b), &format!("styles[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut settings = settings_from_proto(
        &spec.settings.clone().unwrap_or_default(),
        styles.len(),
        "spec.settings",
    )
    .map_err(|e| Failure::application(e.to_string()))?;
    settings.save_iter = preview_every;
    let init = match settings.init {
        Init::Image => Some(blob(spec.init_image.as_ref(), "init_image")?),
        Init::Random | Init::Content => None,
    };
    let (mut statistics, mut shard) = (None, None);
    match &spec.part {
        Some(Part::Statistics(st)) => statistics = Some(check_statistics(st)?),
        Some(Part::Shard(sh)) => {
            check_full_size(sh.full_width, sh.full_height)
                .map_err(|reason| Failure::application(format!("invalid spec.shard: {reason}")))?;
            shard = Some(*sh);
        }
        Some(Part::Assemble(_)) => {
            return Err(Failure::application(
                "invalid spec.assemble: assembling a job's result is the coordinator's work",
            ))
        }
        Some(Part::Frame(_) | Part::Sweep(_) | Part::Stage(_)) | None => {}
    }
    Ok(Plan {
        content,
        styles,
        init,
        settings,
        statistics,
        shard,
    })
}

/// The full image of a statistics task must be decodable-sized.
fn check_statistics(st: &v1::Statistics) -> Result<v1::Statistics, Failure> {
    check_full_size(st.full_width, st.full_height)
        .map_err(|reason| Failure::application(format!("invalid spec.statistics: {reason}")))?;
    Ok(*st)
}

/// `Err(reason)` unless a `w` x `h` full image has pixels and is within the decode limits.
fn check_full_size(w: u32, h: u32) -> Result<(), String> {
    let limits = DecodeLimits::default();
    if w == 0 || h == 0 {
        return Err(format!("a {w}x{h} image has no pixels"));
    }
    if w > limits.max_width
        || h > limits.max_height
        || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(format!(
            "the full image of {w}x{h} pixels is over the limit of {}x{} and {} pixels",
            limits.max_width, limits.max_height, limits.max_pixels
        ));
    }
    Ok(())
}

/// The fetched, still encoded images of a task.
struct Blobs {
    content: Vec<u8>,
    styles: Vec<Vec<u8>>,
    init: Option<Vec<u8>>,
}

/// A render's result, encoded.
struct Rendered {
    /// A PNG, or a statistics task's safetensors.
    blob: Arc<Vec<u8>>,
    sha256: String,
    losses: stylefarm_core::settings::Losses,
}

/// A finished task, ready to report.
struct Finished {
    result: BlobRef,
    losses: v1::Losses,
}

/// Decodes, renders and encodes, on the render thread.
fn render_blocking(
    engine: &dyn Engine,
    plan: Plan,
    blobs: Blobs,
    mut observer: ProgressObserver,
) -> Result<Rendered, Failure> {
    let limits = DecodeLimits::default();
    let decode =
        |bytes: &[u8], what: &str| decode_image(bytes, what, &limits).map_err(Failure::from_engine);
    // Each encoded image is dropped once decoded: only pixels stay for the render.
    let Blobs {
        content: content_bytes,
        styles: style_bytes,
        init: init_bytes,
    } = blobs;
    let content = decode(&content_bytes, "content image")?;
    drop(content_bytes);
    let n = style_bytes.len();
    let styles = style_bytes
        .iter()
        .enumerate()
        .map(|(i, b)| match n {
            1 => decode(b, "style image"),
            _ => decode(b, &format!("style image {}", i + 1)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(style_bytes);
    let init = init_bytes.map(|b| decode(&b, "init image")).transpose()?;
    let mut settings = plan.settings;
    if let Some(st) = &plan.statistics {
        settings.image_size = st.full_width.max(st.full_height);
        let input = StatisticsInput {
            styles,
            settings,
            piece: st.piece_size,
            cancel: observer.cancel_flag(),
        };
        let blob = engine.statistics(&input).map_err(Failure::from_engine)?;
        return Ok(Rendered {
            sha256: sha256_hex(&blob),
            blob: Arc::new(blob),
            losses: Default::default(),
        });
    }
    let task = TaskInput {
        inputs: RenderInputs {
            content,
            styles,
            init_image: init,
        },
        settings,
        style_ids: plan.styles.iter().map(|b| b.sha256.clone()).collect(),
    };
    let out = engine
        .run(&task, &mut observer)
        .map_err(Failure::from_engine)?;
    let png = encode_png(&out.image).map_err(Failure::from_engine)?;
    Ok(Rendered {
        sha256: sha256_hex(&png),
        blob: Arc::new(png),
        losses: out.losses,
    })
}

/// A blob from the cache, else from the coordinator (then cached).
async fn fetch(ctx: &TaskContext, blob: &BlobRef, what: &str) -> Result<Vec<u8>, Failure> {
    let cache = ctx.cache.clone();
    let (sha, size) = (blob.sha256.clone(), blob.size);
    if let Ok(Some(data)) = tokio::task::spawn_blocking(move || cache.get(&sha, size)).await {
        tracing::debug!(sha256 = %blob.sha256, "{what} from the cache");
        return Ok(data);
    }
    let data = blobs::download(&ctx.rpc.blobs, blob).await.map_err(|e| {
        Failure::application(format!(
            "could not fetch the {what} (blob {}): {e}",
            blob.sha256
        ))
    })?;
    let cache = ctx.cache.clone();
    let sha = blob.sha256.clone();
    let stored = tokio::task::spawn_blocking(move || {
        if let Err(e) = cache.put(&sha, &data) {
            tracing::warn!(sha256 = %sha, "could not cache a blob: {e}");
        }
        data
    })
    .await;
    stored.map_err(|e| Failure::application(format!("could not cache the {what}: {e}")))
}

/// Everything from the first download to the uploaded result.
async fn work(
    ctx: &TaskContext,
    lease_id: &str,
    plan: Plan,
    cancel: Arc<AtomicBool>,
    progress: watch::Sender<ProgressState>,
) -> Result<Finished, Failure> {
    let content = fetch(ctx, &plan.content, "content image").await?;
    if let Some(shard) = plan.shard {
        let input = ShardInput {
            lease_id: lease_id.to_string(),
            shard,
            settings: plan.settings,
            content,
            memory_bytes: ctx.memory_bytes,
        };
        let result = serve(ctx.rpc.workers.clone(), ctx.engine.clone(), input, cancel).await?;
        return Ok(Finished {
            result,
            losses: v1::Losses::default(),
        });
    }
    let mut styles = Vec::with_capacity(plan.styles.len());
    for (i, b) in plan.styles.iter().enumerate() {
        styles.push(fetch(ctx, b, &format!("style image {}", i + 1)).await?);
    }
    let init = match &plan.init {
        Some(b) => Some(fetch(ctx, b, "init image").await?),
        None => None,
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(Failure::from_engine(CoreError::Cancelled));
    }
    let blobs = Blobs {
        content,
        styles,
        init,
    };
    let observer = ProgressObserver::new(progress, cancel, ctx.preview_every);
    let engine = ctx.engine.clone();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stylefarm-render".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                render_blocking(&*engine, plan, blobs, observer)
            }));
            // The receiver is gone only if the task was abandoned: nobody wants the result.
            let _ = done_tx.send(result);
        })
        .map_err(|e| Failure::application(format!("could not start a render thread: {e}")))?;
    let rendered = match done_rx.await {
        Ok(Ok(result)) => result?,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            return Err(Failure::application(format!("the engine crashed: {what}")));
        }
        Err(_) => {
            return Err(Failure::application(
                "the render thread ended without a result",
            ))
        }
    };
    let result = blobs::upload(&ctx.rpc.blobs, rendered.blob, rendered.sha256)
        .await
        .map_err(|s| {
            Failure::application(format!("could not upload the result: {}", describe(&s)))
        })?;
    Ok(Finished {
        result,
        losses: losses_to_proto(&rendered.losses),
    })
}

/// Runs one lease to its end; never fails the worker.
pub(crate) async fn run_lease(ctx: &TaskContext, lease: Lease, shutdown: &mut Shutdown) {
    let span = tracing::info_span!("task", task_id = %lease.task_id, job_id = %lease.job_id);
    drive(ctx, lease, shutdown).instrument(span).await
}

async fn drive(ctx: &TaskContext, lease: Lease, shutdown: &mut Shutdown) {
    let started = Instant::now();
    let lease_id = lease.lease_id;
    let plan = match plan(lease.spec.as_ref(), ctx.preview_every) {
        Ok(p) => p,
        Err(f) => {
            report_failure(ctx, &lease_id, f).await;
            return;
        }
    };
    tracing::info!(iterations = plan.settings.num_iterations, "task leased");
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress_rx) = watch::channel(ProgressState {
        total: plan.settings.num_iterations,
        ..ProgressState::default()
    });
    let work = work(ctx, &lease_id, plan, cancel.clone(), progress_tx);
    tokio::pin!(work);

    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut stop: Option<Stop> = None;
    let mut stop_deadline = far;
    let mut grace_end: Option<Instant> = None;
    let mut last_update = Instant::now();
    let mut new_progress = false;
    let mut progress_open = true;
    let mut preview: Option<(String, BlobRef)> = None;
    let halt = |why: Stop, stop: &mut Option<Stop>, deadline: &mut Instant| {
        cancel.store(true, Ordering::Relaxed);
        *stop = Some(why);
        *deadline = Instant::now() + STOP_WAIT;
    };

    let result = loop {
        let next_update = last_update
            + if new_progress {
                MIN_UPDATE_GAP
            } else {
                ctx.heartbeat
            };
        tokio::select! {
            biased;
            r = &mut work => break Some(r),
            () = shutdown.wait(), if grace_end.is_none() => {
                tracing::info!(grace_s = ctx.grace.as_secs_f64(), "shutting down: the task may finish within the grace period");
                grace_end = Some(Instant::now() + ctx.grace);
            }
            () = sleep_until(grace_end.unwrap_or(far)), if grace_end.is_some() && stop.is_none() => {
                tracing::warn!("grace period over: cancelling the task");
                halt(Stop::Shutdown, &mut stop, &mut stop_deadline);
            }
            () = sleep_until(stop_deadline), if stop.is_some() => {
                tracing::error!("the render did not stop within {STOP_WAIT:?} of being cancelled; abandoning it");
                break None;
            }
            changed = progress_rx.changed(), if !new_progress && progress_open => {
                match changed {
                    Ok(()) => new_progress = true,
                    Err(_) => progress_open = false,
                }
            }
            () = sleep_until(next_update), if stop.is_none() => {
                new_progress = false;
                last_update = Instant::now();
                match send_update(ctx, &lease_id, &mut progress_rx, &mut preview).await {
                    Ok(answer) if answer.cancel => {
                        tracing::info!("the coordinator cancelled the task");
                        halt(Stop::Cancelled, &mut stop, &mut stop_deadline);
                    }
                    Ok(_) => {}
                    Err(s) if lease_lost(&s) => {
                        tracing::warn!("the coordinator no longer counts this lease ({}): dropping the task", describe(&s));
                        halt(Stop::LeaseLost, &mut stop, &mut stop_deadline);
                    }
                    Err(s) => tracing::warn!("heartbeat failed: {}", describe(&s)),
                }
            }
        }
    };

    let seconds = started.elapsed().as_secs_f64();
    match (stop, result) {
        // The lease is gone: nothing to say. (Abandoned renders always had a stop.)
        (Some(Stop::LeaseLost), _) | (None, None) => {}
        // Reported, so that the coordinator frees this worker at once instead of waiting for
        // the lease to lapse; a cancelled task is not failed by this report.
        (Some(Stop::Cancelled), _) => {
            let cancelled = Failure {
                kind: FailureKind::Interrupted,
                message: "the task was cancelled".into(),
            };
            report_failure(ctx, &lease_id, cancelled).await;
        }
        (_, Some(Ok(finished))) => complete(ctx, &lease_id, finished, seconds).await,
        (
            Some(Stop::Shutdown),
            None
            | Some(Err(Failure {
                kind: FailureKind::Interrupted,
                ..
            })),
        ) => report_failure(ctx, &lease_id, Failure::interrupted()).await,
        (_, Some(Err(f))) => report_failure(ctx, &lease_id, f).await,
    }
}

/// One `UpdateTask` with the latest progress, uploading a new preview first.
async fn send_update(
    ctx: &TaskContext,
    lease_id: &str,
    progress: &mut watch::Receiver<ProgressState>,
    sent_preview: &mut Option<(String, BlobRef)>,
) -> Result<UpdateTaskResponse, Status> {
    let state = progress.borrow_and_update().clone();
    if let Some(p) = &state.preview {
        if sent_preview.as_ref().map(|(sha, _)| sha) != Some(&p.sha256) {
            match blobs::upload(&ctx.rpc.blobs, p.jpeg.clone(), p.sha256.clone()).await {
                Ok(blob) => *sent_preview = Some((p.sha256.clone(), blob)),
                Err(s) => tracing::debug!(
                    iter = p.iteration,
                    "could not upload a preview: {}",
                    describe(&s)
                ),
            }
        }
    }
    let progress = state.losses.as_ref().map(|losses| {
        tracing::debug!(iter = state.iteration, loss = losses.total, "progress");
        Progress {
            iteration: state.iteration,
            total_iterations: state.total,
            losses: Some(losses_to_proto(losses)),
            preview: sent_preview.as_ref().map(|(_, b)| b.clone()),
        }
    });
    let request = UpdateTaskRequest {
        lease_id: lease_id.to_string(),
        progress,
    };
    let mut client = ctx.rpc.workers.clone();
    within(RPC_TIMEOUT, client.update_task(request))
        .await
        .map(tonic::Response::into_inner)
}

async fn complete(ctx: &TaskContext, lease_id: &str, finished: Finished, seconds: f64) {
    let loss = finished.losses.total;
    let request = CompleteTaskRequest {
        lease_id: lease_id.to_string(),
        result: Some(finished.result),
        final_losses: Some(finished.losses),
        seconds,
    };
    let answer = retry(REPORT_ATTEMPTS, || {
        let mut client = ctx.rpc.workers.clone();
        let request = request.clone();
        async move { within(RPC_TIMEOUT, client.complete_task(request)).await }
    })
    .await;
    match answer {
        Ok(_) => tracing::info!(seconds, loss, "task completed"),
        Err(s) if lease_lost(&s) => tracing::warn!(
            "the coordinator refused the result ({}): the lease had lapsed",
            describe(&s)
        ),
        Err(s) => tracing::error!("could not report the result: {}", describe(&s)),
    }
}

async fn report_failure(ctx: &TaskContext, lease_id: &str, failure: Failure) {
    let mut message = failure.message;
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
    }
    tracing::warn!(kind = failure.kind.as_str_name(), "task failed: {message}");
    let request = FailTaskRequest {
        lease_id: lease_id.to_string(),
        kind: failure.kind as i32,
        message,
    };
    let answer = retry(REPORT_ATTEMPTS, || {
        let mut client = ctx.rpc.workers.clone();
        let request = request.clone();
        async move { within(RPC_TIMEOUT, client.fail_task(request)).await }
    })
    .await;
    if let Err(s) = answer {
        tracing::warn!("could not report the failure: {}", describe(&s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(b: u8) -> BlobRef {
        BlobRef {
            sha256: format!("{:02x}", b).repeat(32),
            size: 10,
        }
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            content: Some(blob(1)),
            styles: vec![blob(2)],
            settings: Some(v1::RenderSettings {
                num_iterations: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_spec_becomes_a_plan_with_previews() {
        let p = plan(Some(&spec()), 3).unwrap();
        assert_eq!(p.settings.num_iterations, 7);
        assert_eq!(p.settings.save_iter, 3);
        assert_eq!(p.init, None);
        assert!(p.statistics.is_none() && p.shard.is_none());
    }

    #[test]
    fn bad_specs_fail_naming_the_field() {
        type Change = Box<dyn Fn(&mut TaskSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.content = None), "spec.content"),
            (Box::new(|s| s.styles.clear()), "spec.styles"),
            (
                Box::new(|s| s.styles[0].sha256 = "../../etc/passwd".into()),
                "spec.styles[0].sha256",
            ),
            (
                Box::new(|s| s.content.as_mut().unwrap().size = u64::MAX),
                "spec.content.size",
            ),
            (
                Box::new(|s| s.settings.as_mut().unwrap().style_weight = Some(-1.0)),
                "spec.settings.style_weight",
            ),
            (
                Box::new(|s| s.settings.as_mut().unwrap().init = v1::Init::Image as i32),
                "spec.init_image",
            ),
            (
                Box::new(|s| {
                    s.part = Some(Part::Statistics(v1::Statistics {
                        full_width: 0,
                        full_height: 100,
                        ..Default::default()
                    }))
                }),
                "spec.statistics",
            ),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let f = plan(Some(&s), 0).unwrap_err();
            assert_eq!(f.kind, FailureKind::Application);
            assert!(
                f.message.starts_with(&format!("invalid {field}")),
                "{field}: {}",
                f.message
            );
        }
        assert!(plan(None, 0).is_err());
    }

    #[test]
    fn a_statistics_task_is_planned() {
        let mut s = spec();
        let st = v1::Statistics {
            full_width: 300,
            full_height: 200,
            piece_size: 128,
            style_only: true,
        };
        s.part = Some(Part::Statistics(st));
        let p = plan(Some(&s), 0).unwrap();
        assert_eq!(p.statistics, Some(st));
        assert!(p.shard.is_none());
    }

    #[test]
    fn engine_errors_map_to_failure_kinds() {
        let f = Failure::from_engine(CoreError::Cancelled);
        assert_eq!(f.kind, FailureKind::Interrupted);
        let oom = EngineError::Candle(candle_core::Error::Msg(
            "CUDA_ERROR_OUT_OF_MEMORY: out of memory".into(),
        ));
        assert_eq!(Failure::from_engine(oom).kind, FailureKind::OutOfMemory);
        let bad = EngineError::from(CoreError::BadImage {
            what: "content image".into(),
            reason: "the data is empty (0 bytes)".into(),
        });
        let f = Failure::from_engine(bad);
        assert_eq!(f.kind, FailureKind::Application);
        assert_eq!(
            f.message,
            "content image is not an image stylefarm can read: the data is empty (0 bytes)"
        );
    }
}
