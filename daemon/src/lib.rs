//! # sotto-daemon
//!
//! The sotto node as a library: the libp2p swarm ([`network`]), the sled store ([`store`]),
//! the delivery service ([`service`]) and the JSON-RPC control server ([`rpc`]), tied
//! together by [`node::Node`]. The `sottod` binary, the integration tests and `sotto-sim` all
//! run this same code.

pub mod config;
pub mod delivery;
pub mod dht;
pub mod events;
pub mod host;
pub mod limits;
pub mod link;
pub mod mailbox;
pub mod network;
pub mod node;
pub mod per_ip;
pub mod rpc;
pub mod service;
pub mod store;
