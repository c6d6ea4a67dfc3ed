//! `stylefarm-coordinator`: parses the command line, sets up logging (`RUST_LOG`), binds the
//! address and runs the coordinator until ctrl-c or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use stylefarm_coordinator::{serve, Config};

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
    /// Directory for the database and the blobs (created if missing).
    #[arg(long, value_name = "DIR", env = "STYLEFARM_DATA_DIR")]
    data_dir: PathBuf,
    /// Farm token: when set, clients and workers must send it.
    #[arg(long, env = "STYLEFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds a lease lasts without a heartbeat.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    lease_seconds: u64,
    /// Attempts per task when a job does not say.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_attempts: u32,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.lease_seconds > 0, "--lease-seconds must be at least 1");
    anyhow::ensure!(cli.max_attempts > 0, "--max-attempts must be at least 1");
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let mut config = Config::new(cli.data_dir);
    config.token = cli.token.filter(|t| !t.is_empty());
    config.lease_duration = Duration::from_secs(cli.lease_seconds);
    config.default_max_attempts = cli.max_attempts;
    serve(listener, config, shutdown_signal()).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
