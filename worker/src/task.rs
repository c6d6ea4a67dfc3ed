//! One lease from start to end: check the spec into its [`Work`], run the work while a
//! heartbeat loop reports progress and previews, then complete or fail the task.
//!
//! The heartbeat loop owns every decision about the lease: an `UpdateTask` answer with
//! `cancel` sets the engine's cancel flag, and once the render has stopped the task is handed
//! back as interrupted (never completed); a refused lease stops the render and drops the task
//! without a word; a shutdown gives the task `grace` to finish and then hands it back as
//! interrupted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stylefarm_convert::losses_to_proto;
use stylefarm_proto::v1::{
    BlobRef, CompleteTaskRequest, FailTaskRequest, FailureKind, Lease, Progress, UpdateTaskRequest,
    UpdateTaskResponse,
};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tonic::Status;
use tracing::Instrument;

use crate::blobs;
use crate::context::TaskContext;
use crate::failure::Failure;
use crate::metrics::Outcome;
use crate::observer::ProgressState;
use crate::rpc::{describe, lease_lost, retry, within, RPC_TIMEOUT};
use crate::shutdown::Shutdown;
use crate::work::{Finished, Work};

/// Shortest gap between two `UpdateTask` calls: progress goes out at most 4 times a second.
const MIN_UPDATE_GAP: Duration = Duration::from_millis(250);
/// How long a cancelled render may take to stop before the worker stops waiting for it.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Tries of `CompleteTask` / `FailTask` while the coordinator is unreachable.
const REPORT_ATTEMPTS: u32 = 6;
/// Longest failure message sent to the coordinator.
const MAX_MESSAGE_CHARS: usize = 2000;

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

/// Runs one lease to its end; never fails the worker.
pub(crate) async fn run_lease(ctx: &TaskContext, lease: Lease, shutdown: &mut Shutdown) {
    let span = tracing::info_span!("task", task_id = %lease.task_id, job_id = %lease.job_id);
    drive(ctx, lease, shutdown).instrument(span).await
}

async fn drive(ctx: &TaskContext, lease: Lease, shutdown: &mut Shutdown) {
    let started = Instant::now();
    ctx.metrics.task_started();
    let lease_id = lease.lease_id;
    let work = match Work::from_spec(lease.spec.as_ref(), ctx.preview_every) {
        Ok(w) => w,
        Err(f) => {
            report_failure(ctx, &lease_id, f).await;
            let seconds = started.elapsed().as_secs_f64();
            ctx.metrics.task_ended(Outcome::Failed, seconds, 0);
            return;
        }
    };
    let iterations = work.settings().num_iterations;
    tracing::info!(iterations, "task leased");
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress_rx) = watch::channel(ProgressState {
        total: iterations,
        ..ProgressState::default()
    });
    let work = work.run(ctx, &lease_id, cancel.clone(), progress_tx);
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
    let rendered = progress_rx.borrow().iteration;
    let outcome = match (&stop, &result) {
        (Some(Stop::Cancelled | Stop::LeaseLost), _) | (_, None) => Outcome::Interrupted,
        (_, Some(Ok(_))) => Outcome::Completed,
        (_, Some(Err(f))) if f.kind == FailureKind::Interrupted => Outcome::Interrupted,
        (_, Some(Err(_))) => Outcome::Failed,
    };
    ctx.metrics.task_ended(outcome, seconds, rendered);
    match (stop, result) {
        // The lease is gone: nothing to say. (Abandoned renders always had a stop.)
        (Some(Stop::LeaseLost), _) | (None, None) => {}
        // Reported, so that the coordinator frees this worker at once instead of waiting for
        // the lease to lapse; a cancelled task is not failed by this report.
        (Some(Stop::Cancelled), _) => {
            let cancelled = Failure::interrupted("the task was cancelled");
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
        ) => report_failure(ctx, &lease_id, Failure::shut_down()).await,
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
