//! # sotto-daemon
//!
//! The sotto node as a library, tied together by [`node::Node`]: the libp2p swarm
//! ([`net`]), the sled store ([`store`]), the service that sends and receives ([`service`]),
//! the outbox worker ([`delivery`]), mailbox hosting and fetching ([`mailbox`]), the files
//! of attachments ([`blobs`]), private
//! paths through relays ([`paths`]), the event
//! log ([`events`]) and the JSON-RPC control server ([`rpc`]). The `sottod` binary, the
//! integration tests and `sotto-sim` all run this same code. docs/architecture.md draws
//! the modules and the path of one message through them.

pub mod blobs;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod events;
pub mod limits;
pub mod link;
pub mod mailbox;
pub mod net;
pub mod node;
pub mod paths;
pub mod rpc;
pub mod service;
pub mod store;
