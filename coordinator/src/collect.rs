//! Collection: finished jobs older than the retention go, and so do the blobs that no job
//! names any more (inputs of deleted jobs, their results and intermediate results, uploads
//! that no job ever used, e.g. those of a refused submission), once they have sat unused for
//! a grace period that covers a submission in progress. Runs every few minutes
//! (`--retention-days`, `--blob-grace-seconds`); `DeleteJob` frees a job's own blobs at once.

use std::sync::Arc;
use std::time::Duration;

use crate::blobs::BlobStore;
use crate::clock::Clock;
use crate::error::Result;
use crate::state::{Signals, StateHandle};

/// How long things are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Finished jobs older than this are deleted (`None`: kept until deleted by hand).
    pub(crate) jobs: Option<Duration>,
    /// A blob no job names is deleted once it has not been written or asked about for this
    /// long.
    pub(crate) grace: Duration,
    /// Time between collections.
    pub(crate) interval: Duration,
}

/// What one collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Collected {
    pub(crate) jobs: usize,
    pub(crate) blobs: usize,
    pub(crate) bytes: u64,
}

/// Collects every `retention.interval` until shutdown.
pub(crate) async fn collector_loop(
    state: StateHandle,
    blobs: Arc<BlobStore>,
    signals: Arc<Signals>,
    clock: Arc<dyn Clock>,
    retention: Retention,
) {
    loop {
        tokio::select! {
            () = signals.shutdown_requested() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
        match collect_once(&state, &blobs, clock.now_ms(), retention).await {
            Ok(c) if c != Collected::default() => {
                tracing::info!(jobs = c.jobs, blobs = c.blobs, bytes = c.bytes, "collected")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "collecting old jobs and blobs failed"),
        }
    }
}

/// One collection at `now_ms`.
pub(crate) async fn collect_once(
    state: &StateHandle,
    blobs: &BlobStore,
    now_ms: i64,
    retention: Retention,
) -> Result<Collected> {
    let mut collected = Collected::default();
    if let Some(keep) = retention.jobs {
        let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        collected.jobs = state
            .call(move |c| {
                let old = c.sched.finished_before(cutoff);
                let mut deleted = 0;
                for id in old {
                    // A job whose canceled tasks are still stopping waits for the next round.
                    if c.apply(|s, _| s.delete(id)).is_ok() {
                        deleted += 1;
                    }
                }
                Ok(deleted)
            })
            .await?;
    }
    let keep = state.call(|c| Ok(c.sched.named_blobs())).await?;
    (collected.blobs, collected.bytes) = blobs.sweep(keep, retention.grace).await?;
    Ok(collected)
}
