//! stylefarm's coordinator: takes style-transfer jobs over gRPC, splits them into tasks (one
//! per content frame, sweep point or coarse-to-fine stage, or the statistics and shards of
//! tiles, some depending on others), leases the tasks to workers, assembles contact sheets,
//! drives the optimisation of tiles in lock step with its workers' shards, and keeps jobs,
//! tasks, progress and results in SQLite and a content-addressed blob store under its data
//! directory, so that they survive a restart.
//!
//! [`serve`] runs the whole coordinator on an already-bound listener until a shutdown future
//! completes: tests and the client's embedded mode start exactly what the binary starts.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let config = stylefarm_coordinator::Config::new("/tmp/farm");
//! let server = tokio::spawn(stylefarm_coordinator::serve(listener, config, async {
//!     let _ = stopped.await;
//! }));
//! // ... connect clients to `url` ...
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```

mod assemble;
mod blobs;
mod clock;
mod error;
mod lockstep;
mod plan;
mod scheduler;
mod service;
mod state;
mod store;
mod validate;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use stylefarm_proto::v1::{
    admin_service_server::AdminServiceServer, blob_service_server::BlobServiceServer,
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
use tonic::transport::server::TcpIncoming;

pub use crate::clock::{Clock, ManualClock, Sleep, SystemClock};
pub use crate::error::CoordinatorError;

use crate::assemble::assembler_loop;
use crate::blobs::BlobStore;
use crate::lockstep::Lockstep;
use crate::scheduler::SchedulerConfig;
use crate::service::{Api, Auth, Limits};
use crate::state::{Signals, State, StateHandle};
use crate::validate::{ImageChecker, JobLimits};

/// How the coordinator runs.
#[derive(Clone)]
pub struct Config {
    /// Where the database (`stylefarm.db`) and the blobs (`blobs/`) live.
    pub data_dir: PathBuf,
    /// How long a lease lasts without an update from its worker.
    pub lease_duration: Duration,
    /// How often workers are asked to report (sent to them at registration).
    pub heartbeat_interval: Duration,
    /// Attempts per task when a job does not say.
    pub default_max_attempts: u32,
    /// The longest a `LeaseTask` call is held open waiting for a task.
    pub max_long_poll: Duration,
    /// The largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// The most tasks (content images) in one job.
    pub max_tasks_per_job: usize,
    /// The farm token: when set, every stylefarm call needs `authorization: Bearer TOKEN`
    /// (health and reflection stay open).
    pub token: Option<String>,
}

impl Config {
    /// The defaults, with data under `data_dir`: leases of 30 s, heartbeats every 2 s, 3
    /// attempts, long polls of up to 10 s, blobs of up to 512 MiB, 1000 tasks per job, no
    /// token.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            default_max_attempts: 3,
            max_long_poll: Duration::from_secs(10),
            max_blob_bytes: 512 * 1024 * 1024,
            max_tasks_per_job: 1000,
            token: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("lease_duration", &self.lease_duration)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("default_max_attempts", &self.default_max_attempts)
            .field("max_long_poll", &self.max_long_poll)
            .field("max_blob_bytes", &self.max_blob_bytes)
            .field("max_tasks_per_job", &self.max_tasks_per_job)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Runs the coordinator on `listener` with the system clock until `shutdown` completes, then
/// stops gracefully: open long polls and watch streams end, the database is closed.
///
/// # Errors
/// When the data directory or its database cannot be opened, or the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_clock(listener, config, Arc::new(SystemClock), shutdown).await
}

/// [`serve`] with an injected clock (tests move a [`ManualClock`] to expire leases).
///
/// # Errors
/// As [`serve`].
pub async fn serve_with_clock(
    listener: tokio::net::TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the listener has no local address")?;
    let lease_ms = i64::try_from(config.lease_duration.as_millis()).unwrap_or(i64::MAX);
    anyhow::ensure!(lease_ms > 0, "the lease duration must be longer than 0 ms");
    let auth = Auth::new(config.token.as_deref())?;
    let signals = Arc::new(Signals::new());

    let data_dir = config.data_dir.clone();
    let sched_config = SchedulerConfig {
        lease_ms,
        default_max_attempts: config.default_max_attempts.max(1),
    };
    let (state, blobs) = {
        let (clock, signals) = (clock.clone(), signals.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(State, BlobStore)> {
            std::fs::create_dir_all(&data_dir).with_context(|| {
                format!("cannot create the data directory {}", data_dir.display())
            })?;
            let blobs = BlobStore::open(&data_dir)
                .with_context(|| format!("cannot open the blob store in {}", data_dir.display()))?;
            let state = State::open(&data_dir, sched_config, clock, signals)
                .with_context(|| format!("cannot open the database in {}", data_dir.display()))?;
            Ok((state, blobs))
        })
        .await
        .context("opening the data directory failed")??
    };
    let (state, db_stopped) =
        StateHandle::start(state).context("cannot start the database thread")?;

    let blobs = Arc::new(blobs);
    let lockstep = Arc::new(Lockstep::default());
    let api = Api {
        lockstep: lockstep.clone(),
        state: state.clone(),
        blobs: blobs.clone(),
        images: Arc::new(ImageChecker::new()),
        signals: signals.clone(),
        limits: Limits {
            job: JobLimits {
                max_tasks: config.max_tasks_per_job,
            },
            max_blob_bytes: config.max_blob_bytes,
            max_long_poll: config.max_long_poll,
            heartbeat_interval: config.heartbeat_interval,
        },
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        stylefarm_proto::v1::job_service_server::SERVICE_NAME,
        stylefarm_proto::v1::blob_service_server::SERVICE_NAME,
        stylefarm_proto::v1::worker_service_server::SERVICE_NAME,
        stylefarm_proto::v1::admin_service_server::SERVICE_NAME,
    ] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stylefarm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stylefarm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;

    let signal = {
        let signals = signals.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            signals.begin_shutdown();
        }
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "coordinator listening");
    let server = {
        let signals = signals.clone();
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(JobServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(BlobServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                // A shard's reply carries a tile's gradient.
                WorkerServiceServer::new(api.clone())
                    .max_decoding_message_size(stylefarm_proto::MAX_SHARD_MESSAGE_BYTES),
                auth.clone(),
            ))
            .add_service(AdminServiceServer::with_interceptor(api, auth));
        async move {
            let served = router
                // Without TCP_NODELAY every small answer waits ~40 ms for the peer's delayed
                // ACK (measured: 43 ms per LeaseTask on loopback).
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .await;
            signals.begin_shutdown();
            served
        }
    };
    let (served, (), ()) = tokio::join!(
        server,
        expiry_loop(state.clone(), clock, signals.clone()),
        assembler_loop(state.clone(), blobs, signals, lockstep)
    );
    state.stop().await;
    let _ = db_stopped.await;
    served.context("the gRPC server failed")?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Takes back lapsed leases: sleeps (on the injected clock) until the earliest deadline, or
/// until a new lease may have an earlier one, then expires what is due.
async fn expiry_loop(state: StateHandle, clock: Arc<dyn Clock>, signals: Arc<Signals>) {
    loop {
        let changed = signals.leases_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = match state.call(|c| Ok(c.sched.next_deadline())).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "the lease-expiry loop stops");
                return;
            }
        };
        let due = async {
            match next {
                Some(deadline) => clock.sleep_until_ms(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = signals.shutdown_requested() => return,
            () = &mut changed => {}
            () = due => {}
        }
        if let Err(e) = state.call(|c| c.apply(|s, now| Ok(s.expire(now)))).await {
            tracing::error!(error = %e, "expiring leases failed");
        }
    }
}
