//! `stylefarm-bench`: measurements the README's performance table comes from.
//!
//! * `step`: one forward+backward of the seed's objective on VGG (what an L-BFGS iteration
//!   costs), timed `--evals` times after a warm-up, as one JSON line. `bench/speed.py` runs it
//!   alternately with the same measurement in PyTorch (`bench/step.py`).
//! * `dispatch`: tasks per second and lease latency of the coordinator with 1, 8 and 64
//!   simulated workers whose engine does nothing.

mod dispatch;
mod step;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "stylefarm benchmarks (see bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time forward+backward of the objective.
    Step(step::Args),
    /// Measure the coordinator's dispatch rate with no-op workers.
    Dispatch(dispatch::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Step(args) => step::run(&args),
        Command::Dispatch(args) => dispatch::run(&args),
    }
}
