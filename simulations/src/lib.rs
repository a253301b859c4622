//! # sotto-sim
//!
//! Runs real sotto nodes — the daemon library with its libp2p swarm and sled store, each in a
//! temporary directory on its own loopback port — inside one process, to show and measure
//! how they behave together.
//!
//! [`demo::run`] is the guided tour behind `sotto-sim demo`:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let summary = sotto_sim::demo::run(&sotto_sim::demo::Options { narrate: true }).await?;
//! assert_eq!(summary.messages_delivered, summary.messages_sent);
//! # Ok(())
//! # }
//! ```
//!
//! [`node::SimNode`] is the building block: a node that can be started, stopped and started
//! again from the same directory and port.
//!
//! `sotto-sim run SCENARIO.toml` runs a [`scenario::Scenario`]: many nodes in one process on
//! the in-process memory transport (or loopback TCP), with link delays and loss, churn,
//! traffic, spammers and passive colluders; [`engine::run`] drives it, [`figures`] and
//! [`privacy`] compute what it showed, [`output`] writes the files:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use sotto_sim::{engine, figures, scenario::Scenario};
//! let scenario = Scenario::load("simulations/scenarios/smoke.toml".as_ref())?;
//! let run = engine::run(&scenario, &engine::Options::default()).await?;
//! let summary = figures::summarise(&scenario, scenario.seed, &run);
//! assert_eq!(summary.delivery.delivered, summary.delivery.sent);
//! # Ok(())
//! # }
//! ```

pub mod demo;
pub mod engine;
pub mod figures;
mod groups;
pub mod node;
pub mod output;
pub mod peer;
pub mod privacy;
pub mod record;
pub mod scenario;
