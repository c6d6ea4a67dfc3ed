//! The worker's main loop: register (waiting for the coordinator if it is not up yet), then
//! long-poll for leases and run them one at a time until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::v1::{
    Capabilities, Device, LeaseTaskRequest, LeaseTaskResponse, RegisterWorkerRequest,
};
use tonic::{Code, Status};

use crate::blobs::BlobCache;
use crate::context::TaskContext;
use crate::engine::Engine;
use crate::rpc::{describe, within, Backoff, Rpc, RPC_TIMEOUT};
use crate::shutdown::Shutdown;
use crate::task::run_lease;
use crate::{Config, WorkerError};

/// How long the coordinator may hold a `LeaseTask` call when no task is ready.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// Heartbeat gap when the coordinator does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Bounds on the coordinator's heartbeat interval and `retry_after`.
const MIN_GAP: Duration = Duration::from_millis(50);
const MAX_GAP: Duration = Duration::from_secs(60);

/// Runs a worker until `shutdown` completes: registers with the coordinator at
/// `config.coordinator` (retrying until it answers), then leases and runs tasks one at a time
/// on `engine`.
///
/// On shutdown it stops leasing; a running task gets `config.grace` to finish, after which it
/// is cancelled and handed back as interrupted. `run` returns once the coordinator has
/// acknowledged (or after a bounded number of retries when it cannot be reached). It holds no
/// global state, so several workers can run in one process.
///
/// # Errors
/// A bad coordinator address, an unusable cache directory, or a coordinator that refuses this
/// worker (bad token). Failed tasks are reported to the coordinator, never returned here.
pub async fn run(
    config: Config,
    engine: Arc<dyn Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::new(shutdown);
    let rpc = Rpc::connect(&config.coordinator, config.token.as_deref(), &config.tls)?;
    let cache = BlobCache::open(config.cache_dir.clone()).map_err(|source| WorkerError::Cache {
        path: config.cache_dir.clone().unwrap_or_else(std::env::temp_dir),
        source,
    })?;
    let request = RegisterWorkerRequest {
        name: config.name.clone(),
        capabilities: Some(Capabilities {
            device: (if config.gpu.is_some() {
                Device::Cuda
            } else {
                Device::Cpu
            }) as i32,
            threads: u32::try_from(config.threads).unwrap_or(u32::MAX),
            memory_bytes: config.memory_bytes,
            models: engine.models(),
            gpu_name: config
                .gpu
                .as_ref()
                .map(|g| g.name.clone())
                .unwrap_or_default(),
            gpu_free_bytes: config.gpu.as_ref().map_or(0, |g| g.free_bytes),
            pixels_per_second: config.pixels_per_second,
        }),
    };
    let Some(mut registration) = register(&rpc, &request, &mut shutdown).await? else {
        tracing::info!("worker stopped before it registered");
        return Ok(());
    };
    let mut ctx = TaskContext {
        rpc: rpc.clone(),
        engine,
        cache: Arc::new(cache),
        heartbeat: registration.heartbeat,
        preview_every: config.preview_every,
        grace: config.grace,
        memory_bytes: config.memory_bytes,
        metrics: config.metrics.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        let lease_request = LeaseTaskRequest {
            worker_id: registration.worker_id.clone(),
            wait_ms: u32::try_from(LEASE_WAIT.as_millis()).unwrap_or(u32::MAX),
        };
        let mut client = rpc.workers.clone();
        let lease = within(LEASE_WAIT + RPC_TIMEOUT, client.lease_task(lease_request));
        let Some(answer) = shutdown.unless(lease).await else {
            break;
        };
        let wait = match answer.map(tonic::Response::into_inner) {
            Ok(LeaseTaskResponse {
                lease: Some(lease), ..
            }) => {
                backoff.reset();
                run_lease(&ctx, lease, &mut shutdown).await;
                continue;
            }
            Ok(LeaseTaskResponse {
                lease: None,
                retry_after_ms,
            }) => {
                backoff.reset();
                Duration::from_millis(u64::from(retry_after_ms)).clamp(MIN_GAP, MAX_GAP)
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::warn!(
                    "the coordinator does not know this worker ({}): registering again",
                    describe(&s)
                );
                match register(&rpc, &request, &mut shutdown).await? {
                    Some(r) => registration = r,
                    None => break,
                }
                ctx.heartbeat = registration.heartbeat;
                continue;
            }
            Err(s) if refused(&s) => return Err(refusal(&rpc, &s).into()),
            Err(s) => {
                tracing::warn!("asking for a task failed: {}", describe(&s));
                backoff.next_wait()
            }
        };
        if shutdown.unless(tokio::time::sleep(wait)).await.is_none() {
            break;
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// What the coordinator gave this worker.
struct Registration {
    worker_id: String,
    heartbeat: Duration,
}

/// Registers, retrying while the coordinator cannot be reached; `None` if shutdown came
/// first.
async fn register(
    rpc: &Rpc,
    request: &RegisterWorkerRequest,
    shutdown: &mut Shutdown,
) -> Result<Option<Registration>, WorkerError> {
    let mut backoff = Backoff::new();
    let mut told = false;
    loop {
        let mut client = rpc.workers.clone();
        let call = within(RPC_TIMEOUT, client.register_worker(request.clone()));
        let Some(answer) = shutdown.unless(call).await else {
            return Ok(None);
        };
        match answer.map(tonic::Response::into_inner) {
            Ok(r) if r.worker_id.is_empty() => {
                return Err(refusal(
                    rpc,
                    &Status::internal("the registration has no worker id"),
                ));
            }
            Ok(r) => {
                let heartbeat = match r.heartbeat_interval_ms {
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(u64::from(ms)).clamp(MIN_GAP, MAX_GAP),
                };
                tracing::info!(worker_id = %r.worker_id, heartbeat_ms = heartbeat.as_millis() as u64, "registered with the coordinator at {}", rpc.url);
                return Ok(Some(Registration {
                    worker_id: r.worker_id,
                    heartbeat,
                }));
            }
            Err(s) if refused(&s) => return Err(refusal(rpc, &s)),
            Err(s) => {
                // One side speaking TLS and the other not looks like a dead peer: say so.
                let why = stylefarm_proto::connect::tls_mismatch(&rpc.url, &format!("{s:?}"))
                    .unwrap_or_else(|| describe(&s));
                if told {
                    tracing::debug!("still waiting for the coordinator: {why}");
                } else {
                    tracing::info!("waiting for the coordinator at {} ({why})", rpc.url);
                    told = true;
                }
            }
        }
        if shutdown
            .unless(tokio::time::sleep(backoff.next_wait()))
            .await
            .is_none()
        {
            return Ok(None);
        }
    }
}

/// Answers that retrying cannot change.
fn refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unimplemented
    )
}

fn refusal(rpc: &Rpc, status: &Status) -> WorkerError {
    let hint = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => " (check the farm token)",
        Code::Unimplemented => " (is that address a stylefarm coordinator?)",
        _ => "",
    };
    WorkerError::Refused {
        url: rpc.url.clone(),
        message: format!("{}{hint}", describe(status)),
    }
}
