//! `stylefarm-worker`: a render node. Parses options, sets up logging (`RUST_LOG`, text or JSON
//! lines), loads the weights, serves `/healthz` and `/metrics` when given an HTTP port, and
//! runs the worker until SIGTERM or ctrl-c (a running task gets `--grace` seconds to finish);
//! or, with `--health-check`, checks a running worker for container probes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stylefarm_core::cache;
use stylefarm_engine::device::{self, DeviceKind};
use stylefarm_proto::logging::{self, LogFormat};
use stylefarm_worker::{CandleEngine, Config};

/// Side of the image the start-up speed measurement runs: small on the CPU, where it costs
/// start-up time; larger on a GPU, which a small image leaves mostly idle.
const SPEED_SIDE_CPU: usize = 64;
const SPEED_SIDE_GPU: usize = 384;

/// A stylefarm render node: leases style-transfer tasks from a coordinator and renders them.
#[derive(Parser)]
#[command(name = "stylefarm-worker", version)]
struct Args {
    /// The coordinator's address.
    #[arg(
        long,
        env = "STYLEFARM_COORDINATOR",
        value_name = "URL",
        required_unless_present = "health_check"
    )]
    coordinator: Option<String>,
    /// VGG weights file (.safetensors or .onnx); default: $STYLEFARM_WEIGHTS, then the cache
    /// ($STYLEFARM_CACHE, else ~/.cache/stylefarm).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Where the engine runs: cpu, cuda (the first GPU) or cuda:N. cuda needs a worker built
    /// with `--features cuda` and an NVIDIA driver.
    #[arg(
        long,
        env = "STYLEFARM_DEVICE",
        default_value = "cpu",
        value_name = "DEVICE"
    )]
    device: DeviceKind,
    /// CPU threads for the engine (default: all).
    #[arg(
        long,
        value_name = "N",
        env = "STYLEFARM_THREADS",
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    threads: Option<u32>,
    /// Name shown by `stylefarm workers` (default: host-pid).
    #[arg(long, env = "STYLEFARM_WORKER_NAME")]
    name: Option<String>,
    /// The farm token (or the workers' token), if the coordinator requires one.
    #[arg(long, env = "STYLEFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS: the authority that signed the coordinator's certificate, PEM (an `https://`
    /// address without it trusts the system's roots).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: this worker's certificate, PEM (with --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Mutual TLS: this worker's private key, PEM (with --tls-cert).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Where fetched images are cached (default: the stylefarm cache's `blobs` folder).
    #[arg(long, value_name = "DIR", env = "STYLEFARM_WORKER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Iterations between progress previews (0: none).
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        env = "STYLEFARM_PREVIEW_EVERY"
    )]
    preview_every: u32,
    /// Seconds a running task may take to finish on shutdown (SIGTERM) before it is handed
    /// back; the process exits within about this long plus a few seconds.
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        env = "STYLEFARM_GRACE_SECONDS"
    )]
    grace: f64,
    /// Address for the HTTP port (/healthz, /metrics); off when not given.
    #[arg(
        long,
        visible_alias = "metrics-listen",
        value_name = "ADDR",
        env = "STYLEFARM_HTTP_LISTEN"
    )]
    http_listen: Option<String>,
    /// Log lines as human text on stderr, or as JSON objects on stdout (one per line).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "STYLEFARM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Do not work: check a running worker and exit 0 if it is healthy, 1 if not. With
    /// --http-listen it asks that port's /healthz; without, it asks whether the coordinator
    /// answers grpc.health.v1.
    #[arg(long)]
    health_check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.health_check {
        return match health_check(&args) {
            Ok(()) => {
                println!("healthy");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stylefarm-worker: unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Before any thread exists: candle's CPU kernels read it when they first run.
    if let Some(n) = args.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    logging::init(args.log_format, logging::filter_or("info"));
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--health-check`: this worker's `/healthz`, or else its coordinator's gRPC health.
fn health_check(args: &Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let checked = match (&args.http_listen, &args.coordinator) {
        (Some(listen), _) => {
            let address = stylefarm_proto::connect::local_address(listen);
            runtime.block_on(stylefarm_worker::http::check_health(&address, timeout))
        }
        (None, Some(url)) => {
            let tls = stylefarm_proto::connect::TlsFiles {
                ca: args.tls_ca.clone(),
                identity: args.tls_cert.clone().zip(args.tls_key.clone()),
            };
            let endpoint =
                stylefarm_proto::connect::endpoint(url, &tls).map_err(|e| anyhow::anyhow!(e))?;
            runtime.block_on(stylefarm_proto::connect::check_health(endpoint, timeout))
        }
        (None, None) => Err("give --http-listen or --coordinator to check".to_string()),
    };
    checked.map_err(|e| anyhow::anyhow!(e))
}

fn start(args: Args) -> anyhow::Result<()> {
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        anyhow::bail!("invalid --grace: {} is not a number of seconds", args.grace);
    }
    let device = device::open(args.device)?;
    let coordinator = args
        .coordinator
        .context("--coordinator (or STYLEFARM_COORDINATOR) is required")?;
    let weights_path = cache::find_weights(args.weights.as_deref()).map_err(|e| {
        match (&e, cache::cache_dir()) {
            (cache::WeightsError::NoWeights, Ok(dir)) => anyhow::anyhow!(
                "no VGG weights: none given (--weights, ${}) and none in the cache {}: run \
                 `stylefarm fetch-weights` with the same cache, or mount a volume holding them",
                cache::WEIGHTS_ENV,
                dir.display()
            ),
            _ => anyhow::Error::from(e),
        }
    })?;
    let engine = CandleEngine::load_on(&weights_path, &device)
        .with_context(|| format!("could not load the weights {}", weights_path.display()))?;
    let side = if device.is_cpu() {
        SPEED_SIDE_CPU
    } else {
        SPEED_SIDE_GPU
    };
    let speed = device::measure_speed(engine.vgg(), side)
        .with_context(|| format!("could not run the network on {}", args.device))?;
    let gpu = device::gpu_info(&device);
    tracing::info!(
        weights = %weights_path.display(),
        models = ?stylefarm_worker::Engine::models(&engine),
        device = %args.device,
        gpu = gpu.as_ref().map_or("", |g| g.name.as_str()),
        gpu_free_mib = gpu.as_ref().map_or(0, |g| g.free_bytes >> 20),
        pixels_per_second = speed.round(),
        "engine ready"
    );

    let mut config = Config::new(coordinator);
    config.gpu = gpu;
    config.pixels_per_second = speed;
    if let Some(n) = args.threads {
        config.threads = n as usize;
    } else if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.threads = n;
    }
    if let Some(name) = args.name {
        config.name = name;
    }
    config.token = stylefarm_proto::connect::token(args.token, args.token_file.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.tls = stylefarm_proto::connect::TlsFiles {
        ca: args.tls_ca,
        identity: args.tls_cert.zip(args.tls_key),
    };
    config.cache_dir = args
        .cache_dir
        .or_else(|| cache::cache_dir().ok().map(|d| d.join("blobs")));
    config.preview_every = args.preview_every;
    config.grace = Duration::from_secs_f64(args.grace);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("stylefarm-worker-io")
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let http_listen = args.http_listen;
    runtime.block_on(async move {
        let http = match &http_listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {listen}"))?;
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(http_addr = %addr, "worker serving HTTP (/healthz, /metrics)");
                }
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(stylefarm_worker::http::serve(
                    listener,
                    config.metrics.clone(),
                    async {
                        let _ = stopped.await;
                    },
                ));
                Some((stop, server))
            }
            None => None,
        };
        let worked = stylefarm_worker::run(config, Arc::new(engine), shutdown_signal()).await;
        if let Some((stop, server)) = http {
            let _ = stop.send(());
            server
                .await
                .context("the HTTP server panicked")?
                .context("the HTTP server failed")?;
        }
        worked
    })
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
