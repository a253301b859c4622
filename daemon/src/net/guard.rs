//! How the node defends itself on every protocol: [`Guard`] checks each request a peer
//! makes against that peer's token bucket for its kind ([`Limiter`]), and bans a peer that
//! keeps going over — it keeps the ban table, closes and refuses the banned peer's
//! connections (through libp2p's block list, which it wraps), lifts bans when they run out,
//! and reports every ban made or lifted as an event for the store to record. The request-
//! response protocols ask it through [`Guard::admit`]; Kademlia has its own limiter in
//! [`super::dht::Guarded`] and asks the guard only to ban.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{allow_block_list, Multiaddr, PeerId};

use crate::clock::{self, Monotonic};
use crate::limits::{Kind, Limiter, Limits, Verdict};
use crate::store::Ban;

/// How many refusals one request refused by its address's bucket counts towards its
/// sender's ban.
pub const IP_REFUSAL_WEIGHT: u32 = 10;

/// Bans in force at most; beyond, the one that ends soonest is lifted early.
pub const MAX_BANS: usize = 10_000;
/// Bans in force beyond which new ones are recorded but not announced as events.
pub const ANNOUNCED_BANS: usize = 100;
/// Ban events waiting for the swarm task, at most.
const QUEUED: usize = 1_024;

/// A ban the guard made or lifted, for the store to record, in the order they happened.
#[derive(Clone, Debug)]
pub enum BanEvent {
    /// A new ban, and whether to announce it to clients (not when very many are in force,
    /// so that a Sybil flood cannot push everything else out of the event log).
    Banned(Ban, bool),
    /// The ban ran out or was lifted.
    Lifted(PeerId),
}

/// The guard: rate limits, the ban table and the block list.
pub struct Guard {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limiter: Limiter,
    /// Envelopes from peers that are not contacts' nodes, by IP address
    /// ([`Limits::envelope_per_ip`]).
    by_ip: Limiter<IpAddr>,
    /// The limiter's clock: monotonic, so that a clock step cannot starve or flood buckets.
    clock: Monotonic,
    /// Banned peers and when their bans end (ms since the Unix epoch).
    banned: HashMap<PeerId, u64>,
    events: VecDeque<BanEvent>,
    /// The nodes of this user's contacts (not message requests, not blocked contacts):
    /// their envelopes count against [`Limits::contact_envelope`].
    contacts: HashSet<PeerId>,
    /// Peers that misbehaved in a way no rate limit sees (a host serving junk), with how
    /// often and since when (monotonic ms).
    strikes: HashMap<PeerId, (u32, u64)>,
    /// Envelopes that did not open, per peer that sent them, with since when (monotonic
    /// ms); and contacts' nodes that sent too many, demoted to strangers' limits until then.
    junk: HashMap<PeerId, (u32, u64)>,
    demoted: HashMap<PeerId, u64>,
}

/// Envelopes that do not open a contact's node may send within [`STRIKE_WINDOW`] before it
/// is held to strangers' limits for as long.
pub const CONTACT_JUNK: u32 = 32;

/// Misdeeds a peer may commit within [`STRIKE_WINDOW`] before it is banned.
pub const STRIKES_BEFORE_BAN: u32 = 3;
/// How long a strike counts.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(3_600);
/// Peers with strikes remembered at most.
const MAX_STRUCK: usize = 1_024;

/// Contacts' nodes the guard knows at most (one per contact).
pub const MAX_CONTACT_PEERS: usize = 10_000;

impl Guard {
    /// A guard applying `limits`, with the `bans` still in force from an earlier run.
    pub fn new(limits: &Limits, bans: &[Ban]) -> Self {
        let mut guard = Guard {
            blocked: Default::default(),
            limiter: Limiter::new(limits.clone()),
            // Addresses are never banned (bans are per PeerId): their buckets only refuse.
            by_ip: Limiter::new(Limits {
                envelope: limits.envelope_per_ip,
                ban_after: u32::MAX,
                ..limits.clone()
            }),
            clock: Monotonic::start(),
            banned: HashMap::new(),
            events: VecDeque::new(),
            contacts: HashSet::new(),
            strikes: HashMap::new(),
            junk: HashMap::new(),
            demoted: HashMap::new(),
        };
        for ban in bans {
            if let Some(peer) = ban.peer_id() {
                guard.blocked.block_peer(peer);
                guard.banned.insert(peer, ban.until_ms);
            }
        }
        guard
    }

    /// May `peer` make a request of `kind` now? `Err` says how long until it may: a
    /// banned peer may not (requests read before its connections closed are not served,
    /// and the wait is the rest of the ban); one that keeps going over its limit is banned
    /// here. An envelope from a contact's node counts against the contacts' limit.
    pub fn admit(
        &mut self,
        peer: PeerId,
        source: Option<IpAddr>,
        kind: Kind,
    ) -> Result<(), Duration> {
        if let Some(until) = self.banned.get(&peer) {
            return Err(Duration::from_millis(
                until.saturating_sub(clock::unix_ms()),
            ));
        }
        let kind = match kind {
            Kind::Envelope if self.is_contact(&peer) => Kind::ContactEnvelope,
            other => other,
        };
        let now = self.clock.ms();
        let mut verdict = self.limiter.check(&peer, kind, now);
        let mut wait_ms = match verdict {
            Verdict::Allow => 0,
            _ => self.limiter.wait_ms(&peer, kind, now),
        };
        // A stranger's envelope also counts against its address's bucket.
        if let (Verdict::Allow, Kind::Envelope, Some(ip)) =
            (verdict, kind, source.map(super::per_ip::address_key))
        {
            if self.by_ip.check(&ip, Kind::Envelope, now) != Verdict::Allow {
                wait_ms = self.by_ip.wait_ms(&ip, Kind::Envelope, now);
                // A new identity sending on from an address that is over its limit is
                // plainly part of a flood: each such refusal counts ten towards its ban.
                for _ in 0..IP_REFUSAL_WEIGHT {
                    verdict = self.limiter.refused(&peer, now);
                    if verdict == Verdict::Ban {
                        break;
                    }
                }
            }
        }
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Refuse => Err(Duration::from_millis(wait_ms.max(1))),
            Verdict::Ban => {
                self.ban(
                    peer,
                    format!("over the {kind:?} rate limit, and kept going"),
                );
                Err(self.limiter.limits().ban_for)
            }
        }
    }

    /// `peer` did something no honest node does (a host served envelopes that do not open
    /// at a dead drop only the pair can deposit at): [`STRIKES_BEFORE_BAN`] such within
    /// [`STRIKE_WINDOW`] ban it.
    pub fn strike(&mut self, peer: PeerId, reason: &str) {
        let now = self.clock.ms();
        let window = STRIKE_WINDOW.as_millis() as u64;
        if !self.strikes.contains_key(&peer) && self.strikes.len() >= MAX_STRUCK {
            self.strikes
                .retain(|_, (_, since)| now.saturating_sub(*since) < window);
            if self.strikes.len() >= MAX_STRUCK {
                self.strikes.clear();
            }
        }
        let entry = self.strikes.entry(peer).or_insert((0, now));
        if now.saturating_sub(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 += 1;
        tracing::debug!("strike {} against {peer}: {reason}", entry.0);
        if entry.0 >= STRIKES_BEFORE_BAN {
            self.strikes.remove(&peer);
            self.ban(peer, format!("{reason}, {STRIKES_BEFORE_BAN} times"));
        }
    }

    /// The nodes of this user's contacts, from now on (at most [`MAX_CONTACT_PEERS`]).
    pub fn set_contacts(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.contacts = peers.into_iter().take(MAX_CONTACT_PEERS).collect();
    }

    /// Is `peer` the node of one of this user's contacts (and not demoted for junk)?
    pub fn is_contact(&self, peer: &PeerId) -> bool {
        self.contacts.contains(peer)
            && self
                .demoted
                .get(peer)
                .is_none_or(|until| *until <= self.clock.ms())
    }

    /// `peer` sent an envelope that did not open. A contact's node gets the contacts' limit
    /// because it is trusted to send what opens; one that sends [`CONTACT_JUNK`] that do
    /// not within [`STRIKE_WINDOW`] is held to strangers' limits for as long.
    pub fn junk_from(&mut self, peer: PeerId) {
        if !self.contacts.contains(&peer) {
            return;
        }
        let now = self.clock.ms();
        let window = STRIKE_WINDOW.as_millis() as u64;
        if !self.junk.contains_key(&peer) && self.junk.len() >= MAX_STRUCK {
            self.junk.clear();
        }
        let entry = self.junk.entry(peer).or_insert((0, now));
        if now.saturating_sub(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 += 1;
        if entry.0 >= CONTACT_JUNK {
            self.junk.remove(&peer);
            if self.demoted.len() >= MAX_STRUCK {
                self.demoted.retain(|_, until| *until > now);
            }
            tracing::warn!("a contact's node, {peer}, keeps sending envelopes that do not open: held to strangers' limits for an hour");
            self.demoted.insert(peer, now.saturating_add(window));
        }
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    /// Ban `peer` for the configured time: close its connections and refuse new ones.
    pub fn ban(&mut self, peer: PeerId, reason: String) {
        if self.banned.contains_key(&peer) {
            return;
        }
        if self.banned.len() >= MAX_BANS {
            if let Some(first) = self.banned.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p) {
                self.lift(first);
            }
        }
        let now = clock::unix_ms();
        let until = now.saturating_add(self.limiter.limits().ban_for.as_millis() as u64);
        tracing::warn!("banned peer {peer} until {until} (ms): {reason}");
        self.blocked.block_peer(peer);
        self.banned.insert(peer, until);
        let announce = self.banned.len() <= ANNOUNCED_BANS;
        self.report(BanEvent::Banned(
            Ban {
                peer: peer.to_bytes(),
                since_ms: now,
                until_ms: until,
                reason,
            },
            announce,
        ));
    }

    /// Lift the ban on `peer`; false if it was not banned.
    pub fn lift(&mut self, peer: PeerId) -> bool {
        let was = self.banned.remove(&peer).is_some();
        self.blocked.unblock_peer(peer);
        // Reported even if not banned here: the store may hold a ban from an earlier run.
        self.report(BanEvent::Lifted(peer));
        was
    }

    /// Lift the bans that ran out by now.
    pub fn lift_expired(&mut self) {
        let now = clock::unix_ms();
        let expired: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            tracing::info!("the ban of {peer} ran out");
            self.lift(peer);
        }
    }

    fn report(&mut self, event: BanEvent) {
        if self.events.len() >= QUEUED {
            tracing::warn!("cannot record a ban: the queue is full");
            return;
        }
        self.events.push_back(event);
    }
}

impl NetworkBehaviour for Guard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = BanEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.blocked
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.blocked.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.blocked.handle_pending_outbound_connection(
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
        self.blocked.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.blocked.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.blocked
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<BanEvent, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        self.blocked
            .poll(cx)
            .map(|e| e.map_out(|never: Infallible| match never {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Rate;

    #[test]
    fn a_peer_that_keeps_going_is_banned_once_and_reported_in_order() {
        let mut guard = Guard::new(
            &Limits {
                envelope: Rate {
                    per_minute: 60,
                    burst: 2,
                },
                ban_after: 3,
                ..Limits::default()
            },
            &[],
        );
        let p = PeerId::random();
        let admitted: Vec<bool> = (0..6)
            .map(|_| guard.admit(p, None, Kind::Envelope).is_ok())
            .collect();
        assert_eq!(admitted, [true, true, false, false, false, false]);
        assert!(guard.is_banned(&p));
        assert!(guard.lift(p));
        assert!(!guard.lift(p), "lifted once");
        let kinds: Vec<&str> = guard
            .events
            .iter()
            .map(|e| match e {
                BanEvent::Banned(..) => "banned",
                BanEvent::Lifted(_) => "lifted",
            })
            .collect();
        assert_eq!(kinds, ["banned", "lifted", "lifted"]);
    }

    #[test]
    fn strangers_at_one_address_share_its_envelope_bucket_and_contacts_do_not() {
        let mut guard = Guard::new(
            &Limits {
                envelope_per_ip: Rate {
                    per_minute: 60,
                    burst: 10,
                },
                ban_after: 20,
                ..Limits::default()
            },
            &[],
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Fresh identities from one address: ten envelopes in all, then "slow down" —
        // however many refusals the address collects (a ban would forget its bucket).
        let taken = (0..300)
            .filter(|_| {
                guard
                    .admit(PeerId::random(), Some(ip), Kind::Envelope)
                    .is_ok()
            })
            .count();
        assert_eq!(taken, 10);
        let wait = guard
            .admit(PeerId::random(), Some(ip), Kind::Envelope)
            .unwrap_err();
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        // Another address, a contact's node, and other kinds have their own buckets.
        assert!(guard
            .admit(
                PeerId::random(),
                Some("192.0.2.2".parse().unwrap()),
                Kind::Envelope
            )
            .is_ok());
        let contact = PeerId::random();
        guard.set_contacts([contact]);
        assert!(guard.admit(contact, Some(ip), Kind::Envelope).is_ok());
        assert!(guard
            .admit(PeerId::random(), Some(ip), Kind::Deposit)
            .is_ok());
    }

    #[test]
    fn a_contacts_node_that_sends_junk_is_held_to_strangers_limits() {
        let mut guard = Guard::new(&Limits::default(), &[]);
        let (contact, stranger) = (PeerId::random(), PeerId::random());
        guard.set_contacts([contact]);
        for _ in 0..CONTACT_JUNK - 1 {
            guard.junk_from(contact);
            guard.junk_from(stranger);
        }
        assert!(guard.is_contact(&contact));
        guard.junk_from(contact);
        assert!(!guard.is_contact(&contact), "demoted");
        assert!(!guard.is_banned(&contact), "not banned");
        // Demotion holds when the contacts are shared again.
        guard.set_contacts([contact]);
        assert!(!guard.is_contact(&contact));
    }

    #[test]
    fn a_third_strike_bans() {
        let mut guard = Guard::new(&Limits::default(), &[]);
        let p = PeerId::random();
        guard.strike(p, "served junk");
        guard.strike(p, "served junk");
        assert!(!guard.is_banned(&p));
        guard.strike(p, "served junk");
        assert!(guard.is_banned(&p));
        assert!(matches!(
            guard.events.back(),
            Some(BanEvent::Banned(ban, true)) if ban.reason.contains("served junk")
        ));
    }

    #[test]
    fn bans_from_an_earlier_run_hold_until_they_run_out() {
        let p = PeerId::random();
        let q = PeerId::random();
        let now = clock::unix_ms();
        let ban = |peer: PeerId, until_ms| Ban {
            peer: peer.to_bytes(),
            since_ms: 0,
            until_ms,
            reason: String::new(),
        };
        let mut guard = Guard::new(
            &Limits::default(),
            &[ban(p, now + 3_600_000), ban(q, now.saturating_sub(1))],
        );
        assert!(guard.admit(p, None, Kind::Fetch).is_err());
        guard.lift_expired();
        assert!(guard.is_banned(&p));
        assert!(!guard.is_banned(&q));
        assert!(guard.admit(q, None, Kind::Fetch).is_ok());
    }

    #[test]
    fn a_contacts_node_gets_the_contacts_limit_and_is_told_how_long_to_wait() {
        let limits = Limits {
            envelope: Rate {
                per_minute: 60,
                burst: 1,
            },
            contact_envelope: Rate {
                per_minute: 6_000,
                burst: 100,
            },
            ban_after: 5,
            ..Limits::default()
        };
        let mut guard = Guard::new(&limits, &[]);
        let (contact, stranger) = (PeerId::random(), PeerId::random());
        guard.set_contacts([contact]);
        let taken = (0..1_000)
            .filter(|_| guard.admit(contact, None, Kind::Envelope).is_ok())
            .count();
        assert!((100..=101).contains(&taken), "the contact's burst: {taken}");
        let wait = guard.admit(contact, None, Kind::Envelope).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        assert!(
            !guard.is_banned(&contact),
            "a contact's node is paced, not banned"
        );
        // A stranger gets the strict limit, and a ban for keeping on.
        assert!(guard.admit(stranger, None, Kind::Envelope).is_ok());
        let wait = guard.admit(stranger, None, Kind::Envelope).unwrap_err();
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        for _ in 0..5 {
            let _ = guard.admit(stranger, None, Kind::Envelope);
        }
        assert!(guard.is_banned(&stranger));
        // Once no longer a contact (blocked, say), the strict limit applies.
        guard.set_contacts([]);
        assert!(guard.admit(contact, None, Kind::Envelope).is_ok());
        assert!(guard.admit(contact, None, Kind::Envelope).is_err());
    }
}
