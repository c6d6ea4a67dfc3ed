//! `stylefarm-bench`: measurements the README's performance table comes from.
//!
//! * `step`: one forward+backward of the seed's objective on VGG (what an L-BFGS iteration
//!   costs), timed `--evals` times after a warm-up, as one JSON line. `bench/speed.py` runs it
//!   alternately with the same measurement in PyTorch (`bench/step.py`).

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Step(args) => step::run(&args),
    }
}
