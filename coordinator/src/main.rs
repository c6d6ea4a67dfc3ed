//! `stylefarm-coordinator`: parses the command line, sets up logging (`RUST_LOG`, text or JSON
//! lines), binds the address and runs the coordinator until ctrl-c or SIGTERM; or, with
//! `--health-check`, asks a running coordinator whether it serves, for container probes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use stylefarm_coordinator::{serve_on, Config, Listeners, ServerTls, SystemClock};
use stylefarm_proto::logging::{self, LogFormat};

/// The stylefarm coordinator: takes jobs, hands their tasks to workers, keeps the results.
#[derive(Debug, Parser)]
#[command(name = "stylefarm-coordinator", version, about)]
struct Cli {
    /// Address to listen on for gRPC (clients and workers).
    #[arg(
        long,
        value_name = "ADDR",
        env = "STYLEFARM_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: String,
    /// Address for the HTTP port (health at /healthz, metrics, the web monitor); off when
    /// not given.
    #[arg(
        long,
        visible_alias = "metrics-listen",
        value_name = "ADDR",
        env = "STYLEFARM_HTTP_LISTEN"
    )]
    http_listen: Option<String>,
    /// Directory for the database and the blobs (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        env = "STYLEFARM_DATA_DIR",
        required_unless_present = "health_check"
    )]
    data_dir: Option<PathBuf>,
    /// Farm token for clients and workers: when set, they must send it. Without any token a
    /// coordinator listening beyond loopback makes one and writes it to DATA_DIR/token.
    #[arg(long, env = "STYLEFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the farm token from this file (its first line).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The clients' own token (submit, watch, cancel, fetch); workers cannot use it.
    #[arg(long, env = "STYLEFARM_CLIENT_TOKEN", hide_env_values = true)]
    client_token: Option<String>,
    /// Read the clients' token from this file.
    #[arg(long, value_name = "FILE", env = "STYLEFARM_CLIENT_TOKEN_FILE")]
    client_token_file: Option<PathBuf>,
    /// The workers' own token (register, lease, report); clients cannot use it.
    #[arg(long, env = "STYLEFARM_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Read the workers' token from this file.
    #[arg(long, value_name = "FILE", env = "STYLEFARM_WORKER_TOKEN_FILE")]
    worker_token_file: Option<PathBuf>,
    /// Serve with no token even when reachable beyond loopback (an open farm).
    #[arg(long, env = "STYLEFARM_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// TLS: the coordinator's certificate chain, PEM (with --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS: the coordinator's private key, PEM (with --tls-cert).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every peer must show a certificate signed by this authority, PEM.
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Seconds a lease lasts without a heartbeat.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "STYLEFARM_LEASE_SECONDS",
        default_value_t = 30
    )]
    lease_seconds: u64,
    /// Attempts per task when a job does not say.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    max_attempts: u32,
    /// Limit: pixels of an input image (checked from its header, before decoding).
    #[arg(long, value_name = "N", env = "STYLEFARM_MAX_IMAGE_PIXELS", default_value_t = 64 << 20)]
    max_image_pixels: u64,
    /// Limit: bytes of one blob (an upload).
    #[arg(long, value_name = "BYTES", env = "STYLEFARM_MAX_BLOB_BYTES", default_value_t = 512 << 20)]
    max_blob_bytes: u64,
    /// Limit: bytes of all blobs kept.
    #[arg(long, value_name = "BYTES", env = "STYLEFARM_MAX_STORE_BYTES", default_value_t = 64 << 30)]
    max_store_bytes: u64,
    /// Limit: iterations of one task.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_ITERATIONS",
        default_value_t = 100_000
    )]
    max_iterations: u32,
    /// Limit: tasks of one job.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_TASKS_PER_JOB",
        default_value_t = 1000
    )]
    max_tasks_per_job: usize,
    /// Limit: unfinished jobs on the farm.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_QUEUED_JOBS",
        default_value_t = 10_000
    )]
    max_queued_jobs: usize,
    /// Limit: unfinished jobs of one client address.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_QUEUED_JOBS_PER_CLIENT",
        default_value_t = 1000
    )]
    max_queued_jobs_per_client: usize,
    /// Limit: bytes of one gRPC message (a lock-step shard's stream is allowed 256 MiB).
    #[arg(long, value_name = "BYTES", env = "STYLEFARM_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Limit: short calls in flight at once; past it, calls are refused at once.
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256
    )]
    max_concurrent_requests: usize,
    /// Limit: long-lived calls open at once (watches, long polls, shards, transfers).
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    max_concurrent_streams: usize,
    /// Limit: seconds a short call may take (watches, long polls and transfers are not cut).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "STYLEFARM_RPC_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    rpc_timeout_seconds: u64,
    /// Finished jobs are deleted with their blobs after this many days (0: kept until
    /// `stylefarm delete`).
    #[arg(
        long,
        value_name = "DAYS",
        env = "STYLEFARM_RETENTION_DAYS",
        default_value_t = 30
    )]
    retention_days: u64,
    /// A blob that no job names is deleted once unused for this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "STYLEFARM_BLOB_GRACE_SECONDS",
        default_value_t = 3600
    )]
    blob_grace_seconds: u64,
    /// Log lines as human text on stderr, or as JSON objects on stdout (one per line).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "STYLEFARM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Do not serve: ask the coordinator at --listen (127.0.0.1 for 0.0.0.0, with the TLS
    /// flags) whether it serves (grpc.health.v1), and exit 0 if it does, 1 if not.
    #[arg(long)]
    health_check: bool,
    /// With --health-check over TLS: the name the coordinator's certificate must carry
    /// (default: the address connected to).
    #[arg(long, value_name = "NAME", env = "STYLEFARM_HEALTH_CHECK_DOMAIN")]
    health_check_domain: Option<String>,
    /// With --health-check over TLS: the authority that signed the coordinator's certificate,
    /// PEM (default: --tls-client-ca, else the certificate chain of --tls-cert itself).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_HEALTH_CHECK_CA")]
    health_check_ca: Option<PathBuf>,
}

/// The token from a flag or a file, or a clear error.
fn token(
    flag: Option<String>,
    file: Option<PathBuf>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    stylefarm_proto::connect::token(flag, file.as_deref())
        .map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `--health-check`: `Ok` when the coordinator at `--listen` answers SERVING.
async fn health_check(cli: &Cli) -> anyhow::Result<()> {
    let address = stylefarm_proto::connect::local_address(&cli.listen);
    let endpoint = match &cli.tls_cert {
        None => tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| anyhow::anyhow!("invalid --listen address {}: {e}", cli.listen))?,
        Some(cert) => {
            // Trust the authority given, else the farm's client authority (which often signed
            // the coordinator's certificate too), else the chain in the certificate file;
            // under mutual TLS, show the coordinator's own certificate.
            let (roots, what) = match (&cli.health_check_ca, &cli.tls_client_ca) {
                (Some(ca), _) => (ca, "health check CA certificate"),
                (None, Some(ca)) => (ca, "client CA certificate"),
                (None, None) => (cert, "TLS certificate"),
            };
            let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(read_pem(roots, what)?),
            );
            if cli.tls_client_ca.is_some() {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read_pem(cert, "TLS certificate")?,
                    read_pem(
                        cli.tls_key.as_deref().context("--tls-key is missing")?,
                        "TLS key",
                    )?,
                ));
            }
            if let Some(name) = &cli.health_check_domain {
                tls = tls.domain_name(name.clone());
            }
            tonic::transport::Endpoint::from_shared(format!("https://{address}"))
                .map_err(|e| anyhow::anyhow!("invalid --listen address {}: {e}", cli.listen))?
                .tls_config(tls)
                .context("cannot set up TLS for the health check")?
        }
    };
    stylefarm_proto::connect::check_health(endpoint, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli
        .data_dir
        .context("--data-dir (or STYLEFARM_DATA_DIR) is required")?;
    anyhow::ensure!(cli.lease_seconds > 0, "--lease-seconds must be at least 1");
    anyhow::ensure!(cli.max_attempts > 0, "--max-attempts must be at least 1");
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let mut listeners = Listeners::grpc(listener);
    if let Some(http) = &cli.http_listen {
        let http = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {http}"))?;
        listeners = listeners.with_http(http);
    }
    anyhow::ensure!(
        cli.rpc_timeout_seconds > 0,
        "--rpc-timeout-seconds must be at least 1"
    );
    let mut config = Config::new(data_dir);
    config.token = token(cli.token, cli.token_file, "token")?;
    config.client_token = token(cli.client_token, cli.client_token_file, "client-token")?;
    config.worker_token = token(cli.worker_token, cli.worker_token_file, "worker-token")?;
    config.allow_unauthenticated = cli.allow_unauthenticated;
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        config.tls = Some(ServerTls {
            cert_pem: read_pem(cert, "TLS certificate")?,
            key_pem: read_pem(key, "TLS key")?,
            client_ca_pem: cli
                .tls_client_ca
                .as_deref()
                .map(|ca| read_pem(ca, "client CA certificate"))
                .transpose()?,
        });
    }
    config.lease_duration = Duration::from_secs(cli.lease_seconds);
    config.default_max_attempts = cli.max_attempts;
    config.max_image_pixels = cli.max_image_pixels;
    config.max_blob_bytes = cli.max_blob_bytes;
    config.max_store_bytes = cli.max_store_bytes;
    config.max_iterations = cli.max_iterations;
    config.max_tasks_per_job = cli.max_tasks_per_job;
    config.max_queued_jobs = cli.max_queued_jobs;
    config.max_queued_jobs_per_client = cli.max_queued_jobs_per_client;
    config.max_message_bytes = cli.max_message_bytes;
    config.max_concurrent_requests = cli.max_concurrent_requests;
    config.max_concurrent_streams = cli.max_concurrent_streams;
    config.rpc_timeout = Duration::from_secs(cli.rpc_timeout_seconds);
    config.retention =
        (cli.retention_days > 0).then(|| Duration::from_secs(cli.retention_days * 24 * 3600));
    config.blob_grace = Duration::from_secs(cli.blob_grace_seconds);
    serve_on(listeners, config, Arc::new(SystemClock), shutdown_signal()).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.health_check {
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(health_check(&cli)));
        return match checked {
            Ok(()) => {
                println!("serving");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stylefarm-coordinator: unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    logging::init(cli.log_format, logging::filter_or("info"));
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stylefarm-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
