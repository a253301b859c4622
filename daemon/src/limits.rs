//! How a node defends itself against peers that ask too much: a token bucket per remote peer
//! and request type, refusals counted per peer, and a ban for a peer that keeps going.
//! docs/robustness.md says what each limit defends against and how to change it.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;

/// A sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// `per_minute`, with a burst of as many (a minute's worth at once).
    pub fn per_minute(per_minute: u32) -> Self {
        Rate {
            per_minute,
            burst: per_minute.max(1),
        }
    }
}

/// Every limit a node applies to its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Envelopes sent directly to this node (`/sotto/envelope/1`) by a peer that is not
    /// a contact's node.
    pub envelope: Rate,
    /// … by all such peers at one IP address together: PeerIds cost nothing to make, so
    /// that one host cannot make this node open junk at the rate of many identities.
    pub envelope_per_ip: Rate,
    /// … by a contact's node (its PeerId came in the contact's encrypted presence, or its
    /// card). Set far above what a person or a reasonable bot sends; going over it is
    /// answered with "slow down" but never leads to a ban (blocking the contact does).
    pub contact_envelope: Rate,
    /// Deposits at this node as a mailbox host.
    pub deposit: Rate,
    /// Fetches and deletes at this node as a mailbox host.
    pub fetch: Rate,
    /// Kademlia requests (find node, providers, records) this node answers.
    pub dht: Rate,
    /// Onion cells (`/sotto/onion/1`) this node relays for a peer: the hop before it on
    /// someone's private path.
    pub onion: Rate,
    /// Chunks of blobs (`/sotto/blob/1`) this node serves a peer: its own attachments, to
    /// those it sent them to.
    pub chunk: Rate,
    /// Kademlia lookups this node starts itself: kept below its peers' `dht` limit (a
    /// lookup asks each peer at most once), so that an honest node never trips it.
    pub own_lookups: Rate,
    /// Refusals for being over a limit, within [`Limits::ban_window`], after which the peer
    /// is disconnected and banned.
    pub ban_after: u32,
    pub ban_window: Duration,
    /// How long a ban lasts.
    pub ban_for: Duration,
    /// Established incoming connections in all, connections per peer, incoming
    /// connections being set up.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending: u32,
    /// Established incoming connections from one IP address (see [`crate::net::per_ip`]).
    pub max_connections_per_ip: u32,
    /// Relay onion cells for others (`--no-relay` turns it off: the node then only sends
    /// its own).
    pub relay: bool,
    /// Peers whose buckets are kept; beyond that, the longest idle are forgotten (a
    /// forgotten peer starts again with full buckets, which only helps honest peers).
    pub max_tracked_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            envelope: Rate {
                per_minute: 300,
                burst: 300,
            },
            contact_envelope: Rate {
                per_minute: 60_000,
                burst: 10_000,
            },
            envelope_per_ip: Rate {
                per_minute: 600,
                burst: 300,
            },
            deposit: Rate {
                per_minute: 600,
                burst: 600,
            },
            fetch: Rate {
                per_minute: 1_200,
                burst: 1_200,
            },
            dht: Rate {
                per_minute: 1_200,
                burst: 1_200,
            },
            onion: Rate {
                per_minute: 12_000,
                burst: 3_000,
            },
            // A chunk is 60 KiB: 30,000 a minute is 30 MiB/s to one peer.
            chunk: Rate {
                per_minute: 30_000,
                burst: 2_000,
            },
            own_lookups: Rate {
                per_minute: 1_000,
                burst: 1_000,
            },
            ban_after: 300,
            ban_window: Duration::from_secs(60),
            ban_for: Duration::from_secs(3_600),
            max_connections: 512,
            max_connections_per_peer: 4,
            max_pending: 128,
            max_connections_per_ip: 32,
            max_tracked_peers: 10_000,
            relay: true,
        }
    }
}

impl Limits {
    /// Limits no test or benchmark of throughput runs into (rates of a million a minute);
    /// connection limits as by default.
    pub fn generous() -> Self {
        Limits {
            envelope: Rate::per_minute(1_000_000),
            contact_envelope: Rate::per_minute(1_000_000),
            envelope_per_ip: Rate::per_minute(1_000_000),
            deposit: Rate::per_minute(1_000_000),
            fetch: Rate::per_minute(1_000_000),
            dht: Rate::per_minute(1_000_000),
            onion: Rate::per_minute(1_000_000),
            chunk: Rate::per_minute(1_000_000),
            own_lookups: Rate::per_minute(1_000_000),
            ..Limits::default()
        }
    }
}

/// The kinds of request a peer can make of this node, each with a bucket of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Envelope,
    Deposit,
    Fetch,
    Dht,
    /// An envelope from a contact's node.
    ContactEnvelope,
    /// An onion cell to relay.
    Onion,
    /// A chunk of a blob this node offers.
    Chunk,
}

/// Every kind, in the order of their buckets.
const KINDS: [Kind; 7] = [
    Kind::Envelope,
    Kind::Deposit,
    Kind::Fetch,
    Kind::Dht,
    Kind::ContactEnvelope,
    Kind::Onion,
    Kind::Chunk,
];

/// A token bucket: `rate` tokens a minute, at most `burst` at once.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    /// Milliseconds from `now_ms` until a token is there (0 if one is).
    fn wait_ms(&self, rate: Rate, now_ms: u64) -> u64 {
        let per_ms = f64::from(rate.per_minute) / 60_000.0;
        let tokens = (self.tokens + now_ms.saturating_sub(self.at_ms) as f64 * per_ms)
            .min(f64::from(rate.burst));
        if tokens >= 1.0 || per_ms <= 0.0 {
            0
        } else {
            ((1.0 - tokens) / per_ms).ceil() as u64
        }
    }

    fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * f64::from(rate.per_minute) / 60_000.0)
            .min(f64::from(rate.burst));
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket for something this node does itself, at `rate`.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: Rate,
    bucket: Bucket,
}

impl Pacer {
    pub fn new(rate: Rate, now_ms: u64) -> Self {
        Pacer {
            rate,
            bucket: Bucket::full(rate, now_ms),
        }
    }

    /// Take a token if one is there.
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.bucket.take(self.rate, now_ms)
    }

    /// Milliseconds from `now_ms` until a token is there (0 if one is).
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.bucket.wait_ms(self.rate, now_ms)
    }
}

#[derive(Clone, Debug)]
struct PeerState {
    buckets: [Bucket; 7],
    /// Refusals in the current window, and when the window started.
    refused: u32,
    window_start_ms: u64,
    last_ms: u64,
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it: the peer is over the limit.
    Refuse,
    /// Refuse it and ban the peer: it kept going.
    Ban,
}

/// The limiter: token buckets per remote peer (by default keyed by PeerId; the guard
/// keeps a second one keyed by IP address), owned by the swarm task.
#[derive(Debug)]
pub struct Limiter<K = PeerId> {
    limits: Limits,
    peers: HashMap<K, PeerState>,
}

impl<K: Copy + Eq + std::hash::Hash + Ord> Limiter<K> {
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            peers: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn rate(&self, kind: Kind) -> Rate {
        match kind {
            Kind::Envelope => self.limits.envelope,
            Kind::Deposit => self.limits.deposit,
            Kind::Fetch => self.limits.fetch,
            Kind::Dht => self.limits.dht,
            Kind::ContactEnvelope => self.limits.contact_envelope,
            Kind::Onion => self.limits.onion,
            Kind::Chunk => self.limits.chunk,
        }
    }

    /// Milliseconds from `now_ms` until `peer` may make a request of `kind` again.
    pub fn wait_ms(&self, peer: &K, kind: Kind, now_ms: u64) -> u64 {
        self.peers.get(peer).map_or(0, |s| {
            s.buckets[kind as usize].wait_ms(self.rate(kind), now_ms)
        })
    }

    /// May `peer` make a request of `kind` at `now_ms`?
    pub fn check(&mut self, peer: &K, kind: Kind, now_ms: u64) -> Verdict {
        if !self.peers.contains_key(peer) && self.peers.len() >= self.limits.max_tracked_peers {
            self.forget_idle();
        }
        let rates = KINDS.map(|k| self.rate(k));
        let rate = self.rate(kind);
        let state = self.peers.entry(*peer).or_insert_with(|| PeerState {
            buckets: rates.map(|r| Bucket::full(r, now_ms)),
            refused: 0,
            window_start_ms: now_ms,
            last_ms: now_ms,
        });
        state.last_ms = now_ms;
        if state.buckets[kind as usize].take(rate, now_ms) {
            return Verdict::Allow;
        }
        if kind == Kind::ContactEnvelope {
            return Verdict::Refuse;
        }
        self.refused(peer, now_ms)
    }

    /// Count a refusal of `peer`'s request that another limit made: it counts towards a
    /// ban as one of this limiter's own would.
    pub fn refused(&mut self, peer: &K, now_ms: u64) -> Verdict {
        let Some(state) = self.peers.get_mut(peer) else {
            return Verdict::Refuse;
        };
        let window = self.limits.ban_window.as_millis() as u64;
        if now_ms.saturating_sub(state.window_start_ms) > window {
            state.window_start_ms = now_ms;
            state.refused = 0;
        }
        state.refused = state.refused.saturating_add(1);
        if state.refused >= self.limits.ban_after {
            self.peers.remove(peer);
            Verdict::Ban
        } else {
            Verdict::Refuse
        }
    }

    /// Forget the longest-idle half of the peers.
    fn forget_idle(&mut self) {
        let mut idle: Vec<(u64, K)> = self.peers.iter().map(|(p, s)| (s.last_ms, *p)).collect();
        idle.sort_unstable();
        for (_, peer) in idle.iter().take(idle.len().div_ceil(2)) {
            self.peers.remove(peer);
        }
    }

    /// Peers with state (for tests and status).
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            envelope: Rate {
                per_minute: 60,
                burst: 10,
            },
            ban_after: 20,
            ..Limits::default()
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let mut l = Limiter::new(limits());
        let p = PeerId::random();
        for _ in 0..10 {
            assert_eq!(l.check(&p, Kind::Envelope, 1_000), Verdict::Allow);
        }
        assert_eq!(l.check(&p, Kind::Envelope, 1_000), Verdict::Refuse);
        // One token a second.
        assert_eq!(l.check(&p, Kind::Envelope, 2_001), Verdict::Allow);
        assert_eq!(l.check(&p, Kind::Envelope, 2_002), Verdict::Refuse);
        // Other kinds and other peers have buckets of their own.
        assert_eq!(l.check(&p, Kind::Deposit, 2_002), Verdict::Allow);
        assert_eq!(
            l.check(&PeerId::random(), Kind::Envelope, 2_002),
            Verdict::Allow
        );
    }

    #[test]
    fn a_peer_that_keeps_going_is_banned() {
        let mut l = Limiter::new(limits());
        let p = PeerId::random();
        let verdicts: Vec<Verdict> = (0..30)
            .map(|_| l.check(&p, Kind::Envelope, 5_000))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Allow).count(),
            10
        );
        assert_eq!(verdicts[29], Verdict::Ban, "the 20th refusal bans");
        assert!(verdicts[10..29].iter().all(|v| *v == Verdict::Refuse));
    }

    #[test]
    fn a_contacts_node_is_paced_but_never_banned() {
        let mut l = Limiter::new(Limits {
            contact_envelope: Rate {
                per_minute: 600,
                burst: 5,
            },
            ..limits()
        });
        let p = PeerId::random();
        let verdicts: Vec<Verdict> = (0..100)
            .map(|_| l.check(&p, Kind::ContactEnvelope, 1_000))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allow).count(), 5);
        assert!(verdicts.iter().all(|v| *v != Verdict::Ban));
        // Ten a second: the next token is 100 ms away.
        assert_eq!(l.wait_ms(&p, Kind::ContactEnvelope, 1_000), 100);
        assert_eq!(l.wait_ms(&p, Kind::ContactEnvelope, 1_060), 40);
        assert_eq!(
            l.wait_ms(&p, Kind::Envelope, 1_000),
            0,
            "its own bucket per kind"
        );
    }

    #[test]
    fn refusals_spread_over_windows_do_not_ban() {
        let mut l = Limiter::new(Limits {
            envelope: Rate {
                per_minute: 10,
                burst: 1,
            },
            ..limits()
        });
        let p = PeerId::random();
        let mut now = 0;
        let mut refused = 0;
        // Twice every 6.1 s: one allowed, one refused — ten refusals a minute for ten
        // minutes, under ban_after (20) in every window.
        for _ in 0..100 {
            now += 6_100;
            assert_eq!(l.check(&p, Kind::Envelope, now), Verdict::Allow);
            let v = l.check(&p, Kind::Envelope, now);
            assert_ne!(v, Verdict::Ban);
            refused += usize::from(v == Verdict::Refuse);
        }
        assert_eq!(refused, 100);
    }

    proptest::proptest! {
        /// Whatever a peer does, it never gets more than the burst plus what the rate
        /// refills over the time it spent.
        #[test]
        fn no_peer_gets_more_than_burst_plus_refill(
            gaps in proptest::collection::vec(0u64..5_000, 1..400),
            per_minute in 1u32..2_000,
            burst in 1u32..500,
        ) {
            let rate = Rate { per_minute, burst };
            let mut l = Limiter::new(Limits {
                envelope: rate,
                ban_after: u32::MAX,
                ..Limits::default()
            });
            let p = PeerId::random();
            let mut now = 1_000;
            let mut allowed = 0u64;
            for gap in &gaps {
                now += gap;
                if l.check(&p, Kind::Envelope, now) == Verdict::Allow {
                    allowed += 1;
                }
            }
            let elapsed = now - 1_000;
            let bound = u64::from(burst) + (elapsed * u64::from(per_minute)).div_ceil(60_000);
            proptest::prop_assert!(allowed <= bound, "{allowed} > {bound}");
        }
    }

    #[test]
    fn a_pacer_gives_its_burst_then_one_token_per_interval() {
        let mut p = Pacer::new(
            Rate {
                per_minute: 60,
                burst: 3,
            },
            0,
        );
        assert!((0..3).all(|_| p.take(0)));
        assert!(!p.take(0));
        assert_eq!(p.wait_ms(0), 1_000);
        assert!((600..=601).contains(&p.wait_ms(400)));
        assert!(!p.take(990));
        assert!((10..=11).contains(&p.wait_ms(990)));
        assert!(p.take(1_001));
        assert!(!p.take(1_001));
    }

    #[test]
    fn tracked_peers_stay_bounded() {
        let mut l = Limiter::new(Limits {
            max_tracked_peers: 100,
            ..limits()
        });
        for i in 0..1_000 {
            let _ = l.check(&PeerId::random(), Kind::Fetch, i);
        }
        assert!(l.tracked() <= 100);
    }
}
