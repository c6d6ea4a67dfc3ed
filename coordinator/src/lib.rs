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
mod checkpoint;
mod clock;
mod collect;
mod error;
mod http;
mod lock;
mod lockstep;
mod metrics;
mod plan;
mod scaler;
mod scheduler;
mod service;
mod state;
mod store;
mod validate;
mod web;

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
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

pub use crate::clock::{Clock, ManualClock, Sleep, SystemClock};
pub use crate::error::CoordinatorError;

use crate::assemble::assembler_loop;
use crate::blobs::BlobStore;
use crate::collect::{collector_loop, Retention};
use crate::lock::DataDirLock;
use crate::lockstep::Lockstep;
use crate::scheduler::SchedulerConfig;
use crate::service::{Api, Auth, GuardLayer, GuardLimits, Limits, ShardSplit};
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
    /// The farm token, for clients and workers alike: when set, every stylefarm call needs
    /// `authorization: Bearer TOKEN` (health and reflection stay open).
    pub token: Option<String>,
    /// The clients' own token (submit, watch, cancel, fetch), instead of `token` for them.
    pub client_token: Option<String>,
    /// The workers' own token (register, lease, report), instead of `token` for them.
    pub worker_token: Option<String>,
    /// Serve with no token at all even when reachable beyond loopback; otherwise such a
    /// coordinator makes a token, writes it to `<data_dir>/token` and says so.
    pub allow_unauthenticated: bool,
    /// TLS: the coordinator's certificate and key, and the authority whose certificates
    /// workers (and clients) must show, for mutual TLS.
    pub tls: Option<ServerTls>,
    /// The largest decoded image accepted, in pixels (checked from the header, before
    /// decoding).
    pub max_image_pixels: u64,
    /// The most iterations a job may ask for per task.
    pub max_iterations: u32,
    /// The most jobs not yet finished, on the whole farm and per client address.
    pub max_queued_jobs: usize,
    /// As `max_queued_jobs`, for one client address.
    pub max_queued_jobs_per_client: usize,
    /// The most bytes the blob store holds (uploads past it are refused).
    pub max_store_bytes: u64,
    /// The largest gRPC message, except a lock-step shard's (which carries a tile).
    pub max_message_bytes: usize,
    /// Short calls in flight at once; past it calls are refused at once.
    pub max_concurrent_requests: usize,
    /// Long-lived calls (watches, long polls, shards, transfers) open at once.
    pub max_concurrent_streams: usize,
    /// The longest a short call may take.
    pub rpc_timeout: Duration,
    /// Finished jobs older than this are deleted with their blobs (`None`: kept until
    /// deleted by hand).
    pub retention: Option<Duration>,
    /// A blob no job names is deleted once unused for this long.
    pub blob_grace: Duration,
    /// Time between collections of old jobs and unused blobs.
    pub collect_interval: Duration,
    /// How long a lock-step driver waits for a shard's answer to a step beyond twice the
    /// slowest time per tile it has seen, before it gives the shard's tiles to the others.
    pub shard_step_timeout: Duration,
    /// A lock-step driver saves a checkpoint (under `checkpoints/`) after this many
    /// iterations (0: by time only)...
    pub checkpoint_iterations: u32,
    /// ...or this long after the last one, whichever comes first.
    pub checkpoint_interval: Duration,
}

/// The coordinator's TLS material, PEM.
#[derive(Clone)]
pub struct ServerTls {
    /// Its certificate chain.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// When set, every peer must show a certificate signed by this authority (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl Config {
    /// The defaults, with data under `data_dir`: leases of 30 s, heartbeats every 2 s, 3
    /// attempts, long polls of up to 10 s, blobs of up to 512 MiB and 64 GiB in all, 1000
    /// tasks per job, images of up to 64 megapixels, 100,000 iterations, 10,000 unfinished
    /// jobs (1000 per client), messages of 4 MiB, 256 calls and 1024 streams at once, short
    /// calls of up to 60 s, no token, no TLS; lock-step shards dropped when a step takes 30 s
    /// more than the earlier ones, driver checkpoints every 10 iterations or 30 s.
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
            client_token: None,
            worker_token: None,
            allow_unauthenticated: false,
            tls: None,
            max_image_pixels: stylefarm_core::image_io::DecodeLimits::default().max_pixels,
            max_iterations: stylefarm_core::settings::MAX_ITERATIONS,
            max_queued_jobs: 10_000,
            max_queued_jobs_per_client: 1000,
            max_store_bytes: 64 << 30,
            max_message_bytes: 4 << 20,
            max_concurrent_requests: 256,
            max_concurrent_streams: 1024,
            rpc_timeout: Duration::from_secs(60),
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            blob_grace: Duration::from_secs(3600),
            collect_interval: Duration::from_secs(600),
            shard_step_timeout: lockstep::DEFAULT_STEP_TIMEOUT,
            checkpoint_iterations: 10,
            checkpoint_interval: Duration::from_secs(30),
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
            .field("client_token", &self.client_token.as_ref().map(|_| "<set>"))
            .field("worker_token", &self.worker_token.as_ref().map(|_| "<set>"))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("tls", &self.tls.as_ref().map(|t| t.client_ca_pem.is_some()))
            .field("max_image_pixels", &self.max_image_pixels)
            .field("max_iterations", &self.max_iterations)
            .field("max_queued_jobs", &self.max_queued_jobs)
            .field(
                "max_queued_jobs_per_client",
                &self.max_queued_jobs_per_client,
            )
            .field("max_store_bytes", &self.max_store_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("retention", &self.retention)
            .field("blob_grace", &self.blob_grace)
            .field("collect_interval", &self.collect_interval)
            .field("shard_step_timeout", &self.shard_step_timeout)
            .field("checkpoint_iterations", &self.checkpoint_iterations)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish()
    }
}

/// The already-bound ports a coordinator serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: clients and workers.
    pub grpc: tokio::net::TcpListener,
    /// HTTP (`--http-listen`), when wanted.
    pub http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// gRPC only.
    pub fn grpc(grpc: tokio::net::TcpListener) -> Self {
        Self { grpc, http: None }
    }

    /// Also serve HTTP on `http`.
    #[must_use]
    pub fn with_http(self, http: tokio::net::TcpListener) -> Self {
        Self {
            http: Some(http),
            ..self
        }
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
    serve_on(
        Listeners::grpc(listener),
        config,
        Arc::new(SystemClock),
        shutdown,
    )
    .await
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
    serve_on(Listeners::grpc(listener), config, clock, shutdown).await
}

/// [`serve_with_clock`] on every port in `listeners`: gRPC, and HTTP when given.
///
/// # Errors
/// As [`serve`].
pub async fn serve_on(
    listeners: Listeners,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        http: http_listener,
    } = listeners;
    let addr = listener
        .local_addr()
        .context("the listener has no local address")?;
    let lease_ms = i64::try_from(config.lease_duration.as_millis()).unwrap_or(i64::MAX);
    anyhow::ensure!(lease_ms > 0, "the lease duration must be longer than 0 ms");
    let signals = Arc::new(Signals::new());

    let data_dir = config.data_dir.clone();
    let max_store_bytes = config.max_store_bytes;
    let sched_config = SchedulerConfig {
        lease_ms,
        default_max_attempts: config.default_max_attempts.max(1),
    };
    let (_lock, state, blobs) = {
        let (clock, signals) = (clock.clone(), signals.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(DataDirLock, State, BlobStore)> {
            std::fs::create_dir_all(&data_dir).with_context(|| {
                format!("cannot create the data directory {}", data_dir.display())
            })?;
            let lock = DataDirLock::acquire(&data_dir)?;
            let blobs = BlobStore::open(&data_dir)
                .with_context(|| format!("cannot open the blob store in {}", data_dir.display()))?
                .with_limit(max_store_bytes);
            let state = State::open(&data_dir, sched_config, clock, signals)
                .with_context(|| format!("cannot open the database in {}", data_dir.display()))?;
            Ok((lock, state, blobs))
        })
        .await
        .context("opening the data directory failed")??
    };
    let tokens = farm_tokens(&config, addr)?;
    let client_auth = Auth::new(&[&tokens.client])?;
    let worker_auth = Auth::new(&[&tokens.worker])?;
    let blob_auth = Auth::new(&[&tokens.client, &tokens.worker])?;
    let metrics = state.metrics();
    let (state, db_stopped) =
        StateHandle::start(state).context("cannot start the database thread")?;

    let blobs = Arc::new(blobs);
    let lockstep = Arc::new(Lockstep::new(&config));
    let api = Api {
        lockstep: lockstep.clone(),
        state: state.clone(),
        blobs: blobs.clone(),
        images: Arc::new(ImageChecker::new(config.max_image_pixels)),
        signals: signals.clone(),
        metrics: metrics.clone(),
        limits: Limits {
            job: JobLimits {
                max_tasks: config.max_tasks_per_job,
                max_iterations: config.max_iterations,
                max_queued_jobs: config.max_queued_jobs,
                max_queued_jobs_per_client: config.max_queued_jobs_per_client,
            },
            max_blob_bytes: config.max_blob_bytes,
            max_long_poll: config.max_long_poll,
            heartbeat_interval: config.heartbeat_interval,
        },
    };

    let http_server = {
        let server = http_listener.map(|listener| {
            let router = http::router(http::HttpState {
                api: api.clone(),
                client_auth: client_auth.clone(),
            });
            if let Ok(http_addr) = listener.local_addr() {
                tracing::info!(%http_addr, "coordinator serving HTTP");
            }
            http::serve(listener, router, signals.clone())
        });
        async move {
            match server {
                Some(server) => server.await,
                None => Ok(()),
            }
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        stylefarm_proto::v1::job_service_server::SERVICE_NAME,
        stylefarm_proto::v1::blob_service_server::SERVICE_NAME,
        stylefarm_proto::v1::worker_service_server::SERVICE_NAME,
        stylefarm_proto::v1::admin_service_server::SERVICE_NAME,
        stylefarm_proto::externalscaler::external_scaler_server::SERVICE_NAME,
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
        let message = config.max_message_bytes;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
            );
            if let Some(ca) = &tls.client_ca_pem {
                tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(tls_config)
                .context("cannot set up TLS with the given certificate and key")?;
        }
        let router = builder
            .layer(GuardLayer::new(GuardLimits {
                max_requests: config.max_concurrent_requests.max(1),
                max_streams: config.max_concurrent_streams.max(1),
                rpc_timeout: config.rpc_timeout,
                max_message_bytes: message,
            }))
            .add_service(health_service)
            // Open like health: KEDA sends no token; it reads counts per pool.
            .add_service(
                stylefarm_proto::externalscaler::external_scaler_server::ExternalScalerServer::new(
                    scaler::Scaler {
                        metrics,
                        signals: signals.clone(),
                    },
                ),
            )
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(InterceptedService::new(
                JobServiceServer::new(api.clone()).max_decoding_message_size(message),
                client_auth.clone(),
            ))
            .add_service(InterceptedService::new(
                BlobServiceServer::new(api.clone()).max_decoding_message_size(message),
                blob_auth,
            ))
            .add_service(ShardSplit {
                small: InterceptedService::new(
                    WorkerServiceServer::new(api.clone()).max_decoding_message_size(message),
                    worker_auth.clone(),
                ),
                // A shard's reply carries a tile's gradient.
                shard: InterceptedService::new(
                    WorkerServiceServer::new(api.clone())
                        .max_decoding_message_size(stylefarm_proto::MAX_SHARD_MESSAGE_BYTES),
                    worker_auth,
                ),
            })
            .add_service(InterceptedService::new(
                AdminServiceServer::new(api).max_decoding_message_size(message),
                client_auth,
            ));
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
    let retention = Retention {
        jobs: config.retention,
        grace: config.blob_grace,
        interval: config.collect_interval.max(Duration::from_millis(10)),
    };
    let (served, http_served, (), (), ()) = tokio::join!(
        server,
        http_server,
        expiry_loop(state.clone(), clock.clone(), signals.clone()),
        collector_loop(
            state.clone(),
            blobs.clone(),
            signals.clone(),
            clock,
            retention
        ),
        assembler_loop(state.clone(), blobs, signals, lockstep)
    );
    state.stop().await;
    let _ = db_stopped.await;
    served.context("the gRPC server failed")?;
    http_served.context("the HTTP server failed")?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The tokens each role must send; empty when the farm is open.
struct FarmTokens {
    client: Option<String>,
    worker: Option<String>,
}

/// Who must send which token: each role its own token, or else the farm token. A farm with
/// no token at all that is reachable beyond loopback is not left open unless the config says
/// so: it makes a token, writes it to `<data_dir>/token` (readable by its owner only) and
/// logs where.
fn farm_tokens(config: &Config, addr: std::net::SocketAddr) -> anyhow::Result<FarmTokens> {
    let shared = config.token.clone().filter(|t| !t.is_empty());
    let client = config.client_token.clone().filter(|t| !t.is_empty());
    let worker = config.worker_token.clone().filter(|t| !t.is_empty());
    let tokens = FarmTokens {
        client: client.or_else(|| shared.clone()),
        worker: worker.or(shared),
    };
    match (&tokens.client, &tokens.worker) {
        (Some(_), Some(_)) => Ok(tokens),
        (Some(_), None) => anyhow::bail!(
            "a client token is set but no worker token: set --worker-token too, or one --token \
             for both"
        ),
        (None, Some(_)) => anyhow::bail!(
            "a worker token is set but no client token: set --client-token too, or one --token \
             for both"
        ),
        (None, None) if addr.ip().is_loopback() || config.allow_unauthenticated => Ok(tokens),
        (None, None) => {
            let token = generated_token(&config.data_dir)?;
            Ok(FarmTokens {
                client: Some(token.clone()),
                worker: Some(token),
            })
        }
    }
}

/// The token in `<data_dir>/token`, made (32 random bytes, hex) when the file is missing.
fn generated_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_string();
        if !token.is_empty() {
            tracing::warn!(path = %path.display(), "no token was given and the coordinator is reachable beyond loopback: clients and workers must send the token in this file (--token-file)");
            return Ok(token);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write the generated token to {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the generated token to {}", path.display()))?;
    tracing::warn!(path = %path.display(), "no token was given and the coordinator is reachable beyond loopback: it made one, which clients and workers must send (--token-file); pass --allow-unauthenticated to run an open farm");
    Ok(token)
}

/// The wait before expiring leases again after a failed try.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

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
            // The lapse is still due: wait before the next try (a full disk, say, does not
            // clear in a millisecond), or the loop would spin on it.
            tracing::error!(error = %e, "expiring leases failed; trying again in a second");
            tokio::select! {
                () = signals.shutdown_requested() => return,
                () = tokio::time::sleep(EXPIRY_RETRY) => {}
            }
        }
    }
}
