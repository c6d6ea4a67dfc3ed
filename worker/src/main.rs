//! `stylefarm-worker`: a render node. Parses options, sets up logging (`RUST_LOG`), loads the
//! weights and runs the worker until SIGTERM or ctrl-c.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stylefarm_core::cache;
use stylefarm_engine::device::{self, DeviceKind};
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
    #[arg(long, env = "STYLEFARM_COORDINATOR", value_name = "URL")]
    coordinator: String,
    /// VGG weights file (.safetensors or .onnx); default: $STYLEFARM_WEIGHTS, then the cache.
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: Option<u32>,
    /// Name shown by `stylefarm workers` (default: host-pid).
    #[arg(long)]
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
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Iterations between progress previews (0: none).
    #[arg(long, default_value_t = 10, value_name = "N")]
    preview_every: u32,
    /// Seconds a running task may take to finish on shutdown before it is handed back.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    grace: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: candle's CPU kernels read it when they first run.
    if let Some(n) = args.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        anyhow::bail!("invalid --grace: {} is not a number of seconds", args.grace);
    }
    let device = device::open(args.device)?;
    let weights_path = cache::find_weights(args.weights.as_deref())?;
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

    let mut config = Config::new(args.coordinator);
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
    runtime.block_on(stylefarm_worker::run(
        config,
        Arc::new(engine),
        shutdown_signal(),
    ))
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
