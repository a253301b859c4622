//! Kademlia behind a rate limit: [`Guarded`] wraps libp2p's Kademlia behaviour and checks
//! every request a peer makes of this node's DHT (find node, get providers, add provider,
//! get record, put record) against that peer's own bucket ([`Kind::Dht`]). A request over
//! the limit never reaches Kademlia and is not answered: the connection it came on is
//! closed (Kademlia has no "slow down" answer, and an unanswered request would hold one of
//! the connection's 32 Kademlia streams for as long as it lasts), and it counts towards a
//! ban like any other refusal.
//!
//! libp2p-kad 0.49 does not say who sent a request in the events it reports
//! (`kad::Event::InboundRequest` has no peer), so the guard looks at the events the
//! connection handlers send to the behaviour, which carry the peer. Their type is private
//! to libp2p-kad; the guard tells requests from answers to this node's own queries by the
//! event's variant name, as its `Debug` form begins with it ([`request_kind`]). A test pins
//! that reading for each of the five kinds with the libp2p version in `Cargo.lock`
//! (`every_kind_of_dht_request_is_seen_by_the_guard` in daemon/tests/abuse.rs), so an
//! upgrade that changes it fails loudly. The guard keeps its own buckets and refusal
//! counts: DHT refusals and refusals on the other protocols do not add up to one ban.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::kad;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::traffic::Traffic;
use crate::limits::{Kind, Limiter, Limits, Verdict};

type Kademlia = kad::Behaviour<kad::store::MemoryStore>;

/// Bans and closings waiting to be picked up by the swarm, at most (beyond that a peer
/// that kept going is not banned this time: its bucket starts over and it is refused
/// again).
const QUEUED: usize = 1_024;

/// The Kademlia handler events that are requests from the remote peer, by variant name;
/// [`Traffic::dht_requests`] counts them in this order.
pub const REQUESTS: [&str; 5] = [
    "FindNodeReq",
    "GetProvidersReq",
    "AddProvider",
    "GetRecord",
    "PutRecord",
];

/// What the guarded DHT reports.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // as libp2p's own events: one at a time, not stored
pub enum Event {
    Kad(kad::Event),
    /// `peer` kept sending DHT requests over its limit: ban it.
    Ban(PeerId),
}

/// Kademlia with a per-peer rate limit on the requests it answers. Dereferences to the
/// Kademlia behaviour.
pub struct Guarded {
    kad: Kademlia,
    limiter: Limiter,
    clock: Instant,
    queued: VecDeque<ToSwarm<Event, THandlerInEvent<Guarded>>>,
    traffic: Arc<Traffic>,
}

impl Guarded {
    /// `kad`, limited as `limits.dht` says; refusals are counted in `traffic.dht_refused`.
    pub fn new(kad: Kademlia, limits: &Limits, traffic: Arc<Traffic>) -> Self {
        Guarded {
            kad,
            limiter: Limiter::new(limits.clone()),
            clock: Instant::now(),
            queued: VecDeque::new(),
            traffic,
        }
    }
}

impl Deref for Guarded {
    type Target = Kademlia;
    fn deref(&self) -> &Kademlia {
        &self.kad
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Kademlia {
        &mut self.kad
    }
}

/// Is this handler event (by its `Debug` form) a request from the remote peer, as opposed
/// to an answer to one of this node's queries or news about the protocol?
pub fn is_request(event: &dyn fmt::Debug) -> bool {
    request_kind(event).is_some()
}

/// Which of [`REQUESTS`] this handler event is, if any.
pub fn request_kind(event: &dyn fmt::Debug) -> Option<usize> {
    let mut name = VariantName::default();
    // Writing stops with an error once the name is complete: only the first few bytes of
    // the event are ever formatted, however large it is.
    let _ = write!(name, "{event:?}");
    REQUESTS.iter().position(|r| *r == name.as_str())
}

/// The leading identifier of a `Debug` form, collected until the first other character.
#[derive(Default)]
struct VariantName {
    buf: [u8; 24],
    len: usize,
    done: bool,
}

impl VariantName {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for VariantName {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if self.done || !(b.is_ascii_alphanumeric() || b == b'_') || self.len == self.buf.len()
            {
                self.done = true;
                return Err(fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl NetworkBehaviour for Guarded {
    type ConnectionHandler = <Kademlia as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.kad.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.kad.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if let Some(kind) = request_kind(&event) {
            self.traffic.dht_requests[kind].fetch_add(1, Ordering::Relaxed);
            let now = self.clock.elapsed().as_millis() as u64;
            match self.limiter.check(&peer_id, Kind::Dht, now) {
                Verdict::Allow => {}
                verdict => {
                    self.traffic.dht_refused.fetch_add(1, Ordering::Relaxed);
                    if self.queued.len() < QUEUED {
                        self.queued.push_back(ToSwarm::CloseConnection {
                            peer_id,
                            connection: CloseConnection::One(connection_id),
                        });
                        if verdict == Verdict::Ban {
                            self.queued
                                .push_back(ToSwarm::GenerateEvent(Event::Ban(peer_id)));
                        }
                    }
                    return;
                }
            }
        }
        self.kad
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(event) = self.queued.pop_front() {
            return Poll::Ready(event);
        }
        self.kad.poll(cx).map(|e| e.map_out(Event::Kad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Sample {
        FindNodeReq { key: Vec<u8> },
        FindNodeRes { peers: Vec<u8> },
        GetRecord(u8),
        PutRecordRes,
        ProtocolConfirmed,
    }

    #[test]
    fn requests_are_told_from_answers_by_their_variant_name() {
        assert!(is_request(&Sample::FindNodeReq { key: vec![1; 1000] }));
        assert!(is_request(&Sample::GetRecord(3)));
        assert!(!is_request(&Sample::FindNodeRes { peers: vec![] }));
        assert!(!is_request(&Sample::PutRecordRes));
        assert!(!is_request(&Sample::ProtocolConfirmed));
        assert!(
            !is_request(&"FindNodeReq"),
            "a string's Debug form is quoted"
        );
    }
}
