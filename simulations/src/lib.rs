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

pub mod demo;
pub mod node;
