//! stylefarm's worker: a render node that registers with a coordinator, leases tasks, fetches
//! their images as content-addressed blobs, runs the engine on them and uploads the results.
//!
//! # Threads
//! The gRPC side is async (tonic on the caller's tokio runtime): registration, the `LeaseTask`
//! long poll, blob transfers, heartbeats and the final `CompleteTask`/`FailTask`. Each task's
//! CPU work (decoding, the render, PNG/JPEG encoding) runs on its own OS thread, so heartbeats
//! never starve behind candle. The two sides meet in three places: a `watch` channel that holds
//! the latest progress and preview (the render thread writes, the heartbeat loop reads), a
//! cancel flag the engine polls at every network layer, and a oneshot for the result.
//!
//! # Modules
//! `worker` registers and leases; `task` runs one lease (heartbeats, cancel, shutdown grace,
//! the report) around its `work`, the task spec checked into a render, the statistics of a
//! whole image or a shard, with the pixel work of each; `lockstep` is a shard's part in tiles
//! rendered in lock step. `failure`, `context` and `shutdown` are what those share; `blobs`,
//! `rpc` and `observer` move bytes, calls and progress; `metrics` and `http` serve
//! what it did to Prometheus and probes.
//!
//! # Starting one in-process
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stylefarm_worker::{fake::FakeEngine, Config};
//!
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let config = Config::new("http://127.0.0.1:50051");
//! let engine = Arc::new(FakeEngine::new(Duration::from_millis(5)));
//! let worker = tokio::spawn(stylefarm_worker::run(config, engine, async {
//!     let _ = stopped.await;
//! }));
//! // ... submit jobs ...
//! let _ = stop.send(());
//! worker.await??;
//! # Ok(()) }
//! ```

mod blobs;
mod context;
pub mod engine;
mod failure;
pub mod fake;
pub mod http;
mod lockstep;
mod metrics;
mod observer;
mod rpc;
mod shutdown;
mod task;
mod work;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use engine::{CandleEngine, Engine, StatisticsInput, TaskInput, TaskOutput};
pub use metrics::WorkerMetrics;
pub use worker::run;

/// How a worker connects and behaves; [`Config::new`] fills in sensible defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The coordinator's address, `http://host:port`.
    pub coordinator: String,
    /// A human name for `stylefarm workers` (need not be unique).
    pub name: String,
    /// CPU threads the engine uses (reported to the coordinator; the binary also sets
    /// `RAYON_NUM_THREADS` from it).
    pub threads: usize,
    /// Memory this worker offers, in bytes (reported to the coordinator, which uses it to
    /// match tasks; 0 = unknown).
    pub memory_bytes: u64,
    /// Where fetched blobs are cached, content-addressed; `None`: a temporary directory that
    /// is removed when [`run`] returns.
    pub cache_dir: Option<PathBuf>,
    /// Iterations between previews sent with progress (0 = no previews).
    pub preview_every: u32,
    /// On shutdown, how long a running task may take to finish before it is cancelled and
    /// handed back as interrupted.
    pub grace: Duration,
    /// The farm token, sent as `authorization: Bearer TOKEN` when set.
    pub token: Option<String>,
    /// TLS for an `https://` coordinator: the authority to trust, and this worker's own
    /// certificate for mutual TLS.
    pub tls: stylefarm_proto::connect::TlsFiles,
    /// Where the worker counts its tasks and iterations (served by [`http::serve`]).
    pub metrics: WorkerMetrics,
    /// The GPU the engine runs on, reported as a CUDA worker with its name and free memory;
    /// `None`: the CPU.
    pub gpu: Option<stylefarm_engine::device::GpuInfo>,
    /// The engine's measured speed in input pixels per second
    /// ([`stylefarm_engine::device::measure_speed`]), reported to the coordinator; 0 = not
    /// measured.
    pub pixels_per_second: f64,
}

impl Config {
    /// A configuration for the coordinator at `coordinator` (`http://host:port`): named after
    /// the host and process, all CPUs, the machine's memory, a temporary blob cache, a
    /// preview every 10 iterations and 30 s of grace on shutdown; a CPU worker whose speed
    /// was not measured.
    pub fn new(coordinator: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            name: default_name(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: total_memory_bytes().unwrap_or(0),
            cache_dir: None,
            preview_every: 10,
            grace: Duration::from_secs(30),
            token: None,
            tls: stylefarm_proto::connect::TlsFiles::default(),
            metrics: WorkerMetrics::new(),
            gpu: None,
            pixels_per_second: 0.0,
        }
    }
}

/// `host-pid`, so that several workers on one machine can be told apart.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string());
    format!("{host}-{}", std::process::id())
}

/// The memory this process may use (Linux): the machine's total from `/proc/meminfo`, or
/// its control group's limit when that is lower, as in a container with a memory limit (a
/// Kubernetes pod's `limits.memory`), where `/proc/meminfo` still shows the whole node's;
/// `None` elsewhere.
pub fn total_memory_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    memory_limit(
        &read("/proc/meminfo")?,
        read("/sys/fs/cgroup/memory.max").as_deref(),
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes").as_deref(),
    )
}

/// [`total_memory_bytes`] from the files' contents: `/proc/meminfo`, and the cgroup v2
/// `memory.max` (a number or `max`) and cgroup v1 `memory.limit_in_bytes` when present.
fn memory_limit(meminfo: &str, cgroup_v2: Option<&str>, cgroup_v1: Option<&str>) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let total = kib.checked_mul(1024)?;
    // "max" (v2) or a huge number (v1's unlimited) parse to nothing or to more than the total.
    let limit = [cgroup_v2, cgroup_v1]
        .into_iter()
        .flatten()
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .filter(|&l| l > 0)
        .min();
    Some(limit.map_or(total, |l| l.min(total)))
}

/// What can stop a worker from starting or running (task failures never do: they fail the
/// task).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The coordinator address is not a URL tonic can connect to.
    #[error(
        "invalid coordinator address `{url}`: {reason} (expected e.g. http://127.0.0.1:50051)"
    )]
    BadCoordinator {
        /// The address as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The coordinator answered, but refused this worker (bad token, bad registration).
    #[error("the coordinator at {url} refused this worker: {message}")]
    Refused {
        /// The coordinator's address.
        url: String,
        /// The coordinator's status and message.
        message: String,
    },
    /// The blob cache directory cannot be created or used.
    #[error("cannot use the blob cache directory {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Loading the engine failed (weights file unreadable or not a VGG).
    #[error(transparent)]
    Engine(#[from] stylefarm_engine::EngineError),
}

#[cfg(test)]
mod tests {
    use super::memory_limit;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
    const TOTAL: u64 = 24_576_000 * 1024;

    #[test]
    fn the_memory_is_the_machines_without_a_control_group_limit() {
        assert_eq!(memory_limit(MEMINFO, None, None), Some(TOTAL));
        assert_eq!(memory_limit(MEMINFO, Some("max\n"), None), Some(TOTAL));
        // cgroup v1's "unlimited" is a number near 2^63.
        assert_eq!(
            memory_limit(MEMINFO, None, Some("9223372036854771712\n")),
            Some(TOTAL)
        );
    }

    #[test]
    fn a_containers_memory_limit_is_the_memory_it_reports() {
        assert_eq!(
            memory_limit(MEMINFO, Some("4294967296\n"), None),
            Some(4 << 30)
        );
        assert_eq!(
            memory_limit(MEMINFO, None, Some("2147483648")),
            Some(2 << 30)
        );
    }

    #[test]
    fn no_meminfo_means_unknown() {
        assert_eq!(memory_limit("", Some("4294967296"), None), None);
    }
}
