//! `stylefarm-bench`: measurements the README's performance table comes from.
//!
//! * `step`: one forward+backward of the seed's objective on VGG (what an L-BFGS iteration
//!   costs), timed `--evals` times after a warm-up, as one JSON line. `bench/speed.py` runs it
//!   alternately with the same measurement in PyTorch (`bench/step.py`).
//! * `render`: a whole render by the engine alone, the baseline of the farm's per-task
//!   overhead (`bench/speed.py --overhead` runs it against `stylefarm render`).
//! * `dispatch`: tasks per second and lease latency of the coordinator with 1, 8 and 64
//!   simulated workers whose engine does nothing.
//! * `seams`: the seam score of a tiled render against an untiled one (`bench/tiles.py`).

mod dispatch;
mod render;
mod seams;
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
    /// Render with the engine alone (no farm).
    Render(render::Args),
    /// Measure the coordinator's dispatch rate with no-op workers.
    Dispatch(dispatch::Args),
    /// Seam score of a tiled render against an untiled one.
    Seams(seams::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Step(args) => step::run(&args),
        Command::Render(args) => render::run(&args),
        Command::Dispatch(args) => dispatch::run(&args),
        Command::Seams(args) => seams::run(&args),
    }
}
