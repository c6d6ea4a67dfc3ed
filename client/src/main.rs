//! `stylefarm`: the command line. Parses, sets up logging (only when `RUST_LOG` is set: the
//! embedded coordinator and worker log there, as text on stderr or, with
//! `STYLEFARM_LOG_FORMAT=json`, JSON lines on stdout), runs the command, and prints its error
//! as one sentence.

use std::process::ExitCode;

use clap::Parser;

use stylefarm_client::cli::{self, Cli};
use stylefarm_proto::logging::{self, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        logging::init(format, filter);
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, skipping a cause whose text the message already
/// holds (engine errors quote their cause).
fn one_sentence(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
