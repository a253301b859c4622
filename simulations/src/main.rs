//! `sotto-sim`: runs real sotto nodes side by side on this machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Log filter when `SOTTO_LOG` is unset: warnings only, without libp2p-kad's complaint that
/// nodes started without bootstrap peers have no one to bootstrap from.
const DEFAULT_LOG: &str = "warn,libp2p_kad=error";

#[derive(Parser)]
#[command(
    name = "sotto-sim",
    version,
    about = "Runs real sotto nodes side by side on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start three nodes (alice, bob, carol) on 127.0.0.1, let them exchange cards and
    /// messages, restart one, and show that nothing was lost. Cleans up after itself.
    Demo {
        /// Print a JSON summary on stdout instead of the story.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SOTTO_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo { json } => {
            let options = sotto_sim::demo::Options { narrate: !json };
            match sotto_sim::demo::run(&options).await {
                Ok(summary) => {
                    if json {
                        match serde_json::to_string_pretty(&summary) {
                            Ok(text) => println!("{text}"),
                            Err(e) => {
                                eprintln!("sotto-sim: cannot write the summary: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sotto-sim: the demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
