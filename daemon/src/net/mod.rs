//! The libp2p side of the node. One task ([`task::Network`]) owns the swarm; the rest of the
//! daemon holds a cloneable [`Handle`] that sends it commands over a bounded channel and gets
//! answers on oneshot channels. Requests that arrive are passed to the node as
//! [`Inbound`] values over bounded queues ([`Receivers`]), and the node's answer goes back
//! to the sender on the same stream.
//!
//! The stack: TCP and QUIC, Noise, yamux, identify, ping, Kademlia, and sotto's
//! request-response protocols `/sotto/envelope/1`, `/sotto/mailbox/1`, `/sotto/onion/1`
//! and `/sotto/blob/1`, each a
//! [`codec::Protocol`] on one framing. Every request from a peer passes the [`Guard`]
//! (rate limits and bans) first.
//!
//! | file | what it does |
//! | --- | --- |
//! | `task.rs` | the swarm task: its loop, one handler per event and per command |
//! | `behaviour.rs` | the behaviours and their configuration |
//! | `transport.rs` | the transport stack (and the simulator's delayed links) |
//! | `codec.rs` | the protocols, their framing and limits |
//! | `exchange.rs` | one inbound and outbound path for every request-response protocol |
//! | `guard.rs` | rate limits and bans for every protocol |
//! | `dht.rs` | Kademlia behind its own rate limit |
//! | `per_ip.rs` | the cap on incoming connections per IP address |
//! | `traffic.rs` | byte and request counters |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{kad, Multiaddr, PeerId};
use sotto_protocol::wire::Response;
use sotto_protocol::{blob, mailbox, onion};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub mod behaviour;
pub mod codec;
pub mod dht;
pub mod exchange;
pub mod guard;
pub mod per_ip;
pub mod task;
pub mod traffic;
pub mod transport;

pub use behaviour::{Behaviour, BehaviourEvent};
pub use codec::{Blobs, Codec, Envelopes, Frame, Mailbox, MailboxCodec, Onion, Protocol};
pub use exchange::{Inbound, Inbox};
pub use guard::{BanEvent, Guard};
pub use task::Network;
pub use traffic::{Traffic, TrafficView};
pub use transport::{build_swarm, build_swarm_with};

/// Commands waiting for the swarm task, at most.
pub const COMMAND_QUEUE: usize = 256;
/// Inbound requests waiting for the node, per protocol, at most; beyond that senders are
/// told `Busy`.
pub const INBOUND_QUEUE: usize = 256;
/// Peers remembered as having asked this node to slow down, at most (beyond, the list is
/// pruned of those whose pause is over, then cleared).
const MAX_THROTTLED: usize = 4_096;

/// A peer and the addresses it is known at.
pub type PeerAddrs = (PeerId, Vec<Multiaddr>);

/// A relay this node heard of: where it is, and whether a connection to it is open now
/// (the best sign that it is still there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
}

/// What the network looks like right now.
#[derive(Clone, Debug)]
pub struct Status {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub connected_peers: Vec<PeerId>,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("the network task has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// What the rest of the node asks of the swarm task.
pub(crate) enum Command {
    Envelope {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: exchange::Reply<Envelopes>,
    },
    Mailbox {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: exchange::Reply<Mailbox>,
    },
    Onion {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: exchange::Reply<Onion>,
    },
    Blob {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: exchange::Reply<Blobs>,
    },
    Relays {
        reply: oneshot::Sender<Vec<Relay>>,
    },
    Closest {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerAddrs>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Unban {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Contacts {
        peers: Vec<PeerId>,
    },
    Strike {
        peer: PeerId,
        reason: &'static str,
    },
    Junk {
        peer: PeerId,
    },
}

/// A cloneable handle on the swarm task.
///
/// A peer that answers "slow down" (`RateLimited`, `Busy`) on any protocol is left alone
/// for a while ([`codec::RATE_LIMITED_FOR`], [`codec::BUSY_FOR`]): until then every request
/// to it through any handle gets that answer at once, without being sent, so that no loop
/// of this node (deliveries, deposits, fetches, handover) runs into a ban.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    traffic: Arc<Traffic>,
    throttled: Arc<Mutex<HashMap<PeerId, Instant>>>,
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Bytes sent and received on the sotto protocols so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Hand the swarm task a command built around a reply channel, and wait for the reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)
    }

    /// Has `peer` asked this node to leave it alone, and is that pause still on?
    pub fn is_throttled(&self, peer: &PeerId) -> bool {
        self.throttled_for(peer).is_some()
    }

    /// How much is left of the pause `peer` asked for, if any.
    fn throttled_for(&self, peer: &PeerId) -> Option<Duration> {
        let map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.get(peer)
            .filter(|until| **until > now)
            .map(|until| *until - now)
    }

    /// `peer` sent an envelope that did not open ([`Guard::junk_from`]).
    pub async fn junk_from(&self, peer: PeerId) {
        if self.tx.send(Command::Junk { peer }).await.is_err() {
            tracing::debug!("the network task has stopped; junk from {peer} not counted");
        }
    }

    /// Count a misdeed of `peer` towards a ban ([`Guard::strike`]).
    pub async fn strike(&self, peer: PeerId, reason: &'static str) {
        if self
            .tx
            .send(Command::Strike { peer, reason })
            .await
            .is_err()
        {
            tracing::debug!("the network task has stopped; strike against {peer} not counted");
        }
    }

    /// Tell the guard which peers are the nodes of this user's contacts (their envelopes
    /// count against the contacts' limit).
    pub async fn set_contacts(&self, peers: Vec<PeerId>) -> Result<(), SendError> {
        self.tx
            .send(Command::Contacts { peers })
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Leave `peer` alone for `pause`.
    fn throttle(&self, peer: PeerId, pause: Duration) {
        let now = Instant::now();
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_THROTTLED {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_THROTTLED {
                map.clear();
            }
        }
        tracing::debug!("peer {peer} asked this node to slow down");
        map.insert(peer, now + pause);
    }

    /// Send a request on `P` through `command`, unless `peer` asked to be left alone; note
    /// an answer that asks so.
    async fn request<P: Protocol>(
        &self,
        peer: PeerId,
        command: impl FnOnce(exchange::Reply<P>) -> Command,
    ) -> Result<P::Answer, SendError> {
        if let Some(retry_after) = self.throttled_for(&peer) {
            return Ok(P::refusal(codec::Why::RateLimited { retry_after }));
        }
        let answer = self.ask(command).await??;
        if let Some(pause) = P::slow_down(&answer) {
            self.throttle(peer, pause);
        }
        Ok(answer)
    }

    /// Send an envelope to `peer`, dialling `addrs` if not connected, and wait for its
    /// answer.
    pub async fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
    ) -> Result<Response, SendError> {
        self.request::<Envelopes>(peer, |reply| Command::Envelope {
            peer,
            addrs,
            request,
            reply,
        })
        .await
    }

    /// Send a mailbox request to `peer` and wait for its answer.
    pub async fn mailbox(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: &mailbox::Request,
    ) -> Result<mailbox::Response, SendError> {
        let bytes = request
            .to_bytes()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        self.mailbox_frame(peer, addrs, Frame::Bytes(bytes)).await
    }

    /// Send a raw mailbox frame (tests use this to send malformed ones).
    pub async fn mailbox_frame(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
    ) -> Result<mailbox::Response, SendError> {
        self.request::<Mailbox>(peer, |reply| Command::Mailbox {
            peer,
            addrs,
            request,
            reply,
        })
        .await
    }

    /// Send an onion cell to `peer` (the first relay of a path, or the next hop of one this
    /// node relays) and wait for its answer.
    pub async fn onion(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        cell: &onion::Cell,
    ) -> Result<onion::Answer, SendError> {
        let request = Frame::Bytes(cell.to_bytes());
        self.request::<Onion>(peer, |reply| Command::Onion {
            peer,
            addrs,
            request,
            reply,
        })
        .await
    }

    /// Ask `peer` for one sealed chunk of a blob it offers.
    pub async fn chunk(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: &blob::ChunkRequest,
    ) -> Result<blob::ChunkAnswer, SendError> {
        let bytes = request
            .to_bytes()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        self.request::<Blobs>(peer, |reply| Command::Blob {
            peer,
            addrs,
            request: Frame::Bytes(bytes),
            reply,
        })
        .await
    }

    /// Peers known to relay onion cells (they said so in identify), with their addresses.
    pub async fn relays(&self) -> Result<Vec<Relay>, SendError> {
        self.ask(|reply| Command::Relays { reply }).await
    }

    /// The peers closest to `key` that a Kademlia lookup finds (not this node), closest
    /// first.
    pub async fn closest_peers(&self, key: &[u8]) -> Result<Vec<PeerAddrs>, SendError> {
        self.ask(|reply| Command::Closest {
            key: key.to_vec(),
            reply,
        })
        .await
    }

    pub async fn status(&self) -> Result<Status, SendError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Lift the ban on `peer`; false if it was not banned.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, SendError> {
        self.ask(|reply| Command::Unban { peer, reply }).await
    }
}

/// What the network hands to the rest of the node.
/// A peer this node just connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connected {
    pub peer: PeerId,
    /// This node had no connection before: it is back online, or just joined.
    pub was_alone: bool,
}

pub struct Receivers {
    /// Envelopes that arrived.
    pub envelopes: Inbox<Envelopes>,
    /// Mailbox requests that arrived.
    pub mailbox: Inbox<Mailbox>,
    /// Onion cells that arrived, to relay.
    pub onion: Inbox<Onion>,
    /// Chunk requests that arrived.
    pub blob: Inbox<Blobs>,
    /// Peers a new connection was made with (dropped when the queue is full).
    pub connected: mpsc::Receiver<Connected>,
    /// Bans made and run out, to be recorded.
    pub bans: mpsc::Receiver<BanEvent>,
}

/// Is `candidate` closer to `key` than `other` in Kademlia's XOR metric?
pub fn closer(key: &[u8], candidate: &PeerId, other: &PeerId) -> bool {
    let target = kad::KBucketKey::new(key.to_vec());
    target.distance(&kad::KBucketKey::from(*candidate))
        < target.distance(&kad::KBucketKey::from(*other))
}

/// Peers sorted by XOR distance of their Kademlia key to `key`, closest first.
fn sort_by_distance(key: &[u8], peers: Vec<kad::PeerInfo>) -> Vec<PeerAddrs> {
    let target = kad::KBucketKey::new(key.to_vec());
    let mut peers: Vec<_> = peers
        .into_iter()
        .map(|p| (target.distance(&kad::KBucketKey::from(p.peer_id)), p))
        .collect();
    peers.sort_by_key(|p| p.0);
    peers
        .into_iter()
        .map(|(_, p)| (p.peer_id, p.addrs))
        .collect()
}
