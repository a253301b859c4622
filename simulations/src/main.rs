//! `sotto-sim`: runs real sotto nodes side by side on this machine.

use std::path::PathBuf;
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
    /// Run a scenario (see simulations/scenarios/ and docs/simulations.md): many real nodes in
    /// this process, with churn, traffic, spammers and colluding observers; report delivery,
    /// latency, bytes, storage, lookups and privacy figures.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Print the JSON summary on stdout (and no progress bar).
        #[arg(long)]
        json: bool,
        /// Write summary.json, CSV files, SVG plots and report.md here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Use this seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Use this many nodes instead of the scenario's `network.nodes`.
        #[arg(long)]
        nodes: Option<usize>,
        /// Every node does its own mailbox work from its own PeerId, whatever the
        /// scenario's `mailbox.private_paths` says (the "before" of a privacy or latency
        /// measurement).
        #[arg(long)]
        no_private_paths: bool,
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
        Command::Run {
            scenario,
            json,
            out,
            seed,
            nodes,
            no_private_paths,
        } => match run(
            &scenario,
            json,
            out.as_deref(),
            seed,
            nodes,
            no_private_paths,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sotto-sim: {e:#}");
                ExitCode::FAILURE
            }
        },
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

async fn run(
    path: &std::path::Path,
    json: bool,
    out: Option<&std::path::Path>,
    seed: Option<u64>,
    nodes: Option<usize>,
    no_private_paths: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut scenario = sotto_sim::scenario::Scenario::load(path)?;
    if no_private_paths {
        scenario.mailbox.private_paths = false;
    }
    if let Some(n) = nodes {
        scenario.network.nodes = n;
        scenario
            .check()
            .with_context(|| format!("{} with --nodes {n}", path.display()))?;
    }
    let options = sotto_sim::engine::Options {
        seed,
        progress: !json,
    };
    let seed = seed.unwrap_or(scenario.seed);
    let run = sotto_sim::engine::run(&scenario, &options)
        .await
        .with_context(|| format!("the scenario {} failed", scenario.name))?;
    let summary = sotto_sim::figures::summarise(&scenario, seed, &run);
    if let Some(dir) = out {
        sotto_sim::output::write(dir, &summary, &run)?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("cannot encode the summary")?
        );
    } else {
        print!("{}", sotto_sim::output::report(&summary));
        if let Some(dir) = out {
            println!("\nFiles in {}", dir.display());
        }
    }
    Ok(())
}
