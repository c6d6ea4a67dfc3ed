//! What a worker's tasks share: the coordinator's clients, the engine, the blob cache and the
//! settings that shape each lease, and fetching a task's blobs through the cache.

use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::v1::BlobRef;

use crate::blobs::{self, BlobCache};
use crate::engine::Engine;
use crate::failure::Failure;
use crate::rpc::Rpc;

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
    pub(crate) metrics: crate::metrics::WorkerMetrics,
}

impl TaskContext {
    /// A blob from the cache, else from the coordinator (then cached).
    pub(crate) async fn fetch(&self, blob: &BlobRef, what: &str) -> Result<Vec<u8>, Failure> {
        let cache = self.cache.clone();
        let (sha, size) = (blob.sha256.clone(), blob.size);
        if let Ok(Some(data)) = tokio::task::spawn_blocking(move || cache.get(&sha, size)).await {
            tracing::debug!(sha256 = %blob.sha256, "{what} from the cache");
            return Ok(data);
        }
        let data = blobs::download(&self.rpc.blobs, blob).await.map_err(|e| {
            Failure::application(format!(
                "could not fetch the {what} (blob {}): {e}",
                blob.sha256
            ))
        })?;
        let cache = self.cache.clone();
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
}
