//! The node's guard relays: the first hop of every private path it builds. A small set,
//! kept for a long time (a guard is retired 30 to 60 days after it was chosen), so that a
//! node that picks a hostile guard at all does so rarely, instead of meeting every hostile
//! relay sooner or later as a node with a new first hop for every path would.
//!
//! Guards are used in the order they were chosen: the first that is not resting. A guard
//! that fails rests (10 s, doubling with each failure in a row, up to 10 minutes) and the
//! next one carries the paths meanwhile. When every guard rests, a new one is sampled at
//! once only while there are fewer than [`PRIMARY_GUARDS`]; beyond those, one more only when
//! every guard has failed every attempt for [`WIDEN_EVERY_MS`] and the newest is that old,
//! up to [`MAX_GUARDS`]; meanwhile the guard whose rest ends first is tried early. So a node whose paths fail for reasons that are not its guards'
//! (its own link, an overloaded network) meets few relays as guards, not one more each
//! time its guards rest: each new guard is one more chance of a colluding one. A guard that
//! failed every attempt for [`PATIENCE_MS`] is dropped.
//! Guards are not chosen from the nodes of this user's contacts, unless those are the only
//! relays there are and the node has no guard at all.
//!
//! Sans-I/O: time and randomness come in as arguments; the caller persists the records
//! when [`Guards::pick`] says they changed.

use libp2p::{Multiaddr, PeerId};
use rand::seq::SliceRandom as _;

use crate::net::PeerAddrs;
use crate::store::GuardRecord;

/// Guards sampled at most.
pub const MAX_GUARDS: usize = 8;
/// Guards sampled at once when all known ones rest.
pub const PRIMARY_GUARDS: usize = 3;
/// Beyond the primary guards, one more at most this often, and only when every guard has
/// failed every attempt for this long.
pub const WIDEN_EVERY_MS: u64 = 10 * 60 * 1000;
/// A guard is retired this long after it was chosen, plus up to as long again at random.
pub const LIFETIME_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// A guard every attempt on which failed for this long is dropped.
pub const PATIENCE_MS: u64 = 3 * 24 * 60 * 60 * 1000;
/// The first rest after a failure; it doubles with each failure in a row.
const FIRST_REST_MS: u64 = 10_000;
/// The longest rest.
const MAX_REST_MS: u64 = 600_000;
/// Addresses kept per guard.
const ADDRS: usize = 4;
/// Paths in a row that failed after a guard (each with another middle and exit) before
/// the guard itself is taken for failing.
pub const PATHS_FAILED_AFTER: u32 = 5;

/// One guard: its record and how it does now.
#[derive(Clone, Debug)]
struct Guard {
    record: GuardRecord,
    peer: PeerId,
    failures: u32,
    /// Paths in a row that failed after this guard.
    failed_after: u32,
    resting_until_ms: u64,
    used: u64,
}

/// A guard as `sotto paths` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GuardView {
    pub peer: String,
    pub added_ms: u64,
    pub retire_ms: u64,
    pub failing_since_ms: Option<u64>,
    pub failures_in_a_row: u32,
    pub resting_until_ms: Option<u64>,
    /// Paths through it this run.
    pub used: u64,
}

/// The guard set.
#[derive(Clone, Debug, Default)]
pub struct Guards {
    guards: Vec<Guard>,
}

/// What [`Guards::pick`] chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// The records changed (a guard sampled or dropped): persist them.
    pub changed: bool,
}

fn addr_bytes(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
    addrs.iter().take(ADDRS).map(|a| a.to_vec()).collect()
}

impl Guards {
    /// The guards from their records (unreadable ones are skipped).
    pub fn from_records(records: Vec<GuardRecord>) -> Self {
        let guards = records
            .into_iter()
            .filter_map(|record| {
                let peer = PeerId::from_bytes(&record.peer).ok()?;
                Some(Guard {
                    record,
                    peer,
                    failures: 0,
                    failed_after: 0,
                    resting_until_ms: 0,
                    used: 0,
                })
            })
            .take(MAX_GUARDS)
            .collect();
        Guards { guards }
    }

    pub fn records(&self) -> Vec<GuardRecord> {
        self.guards.iter().map(|g| g.record.clone()).collect()
    }

    pub fn view(&self, now_ms: u64) -> Vec<GuardView> {
        self.guards
            .iter()
            .map(|g| GuardView {
                peer: g.peer.to_string(),
                added_ms: g.record.added_ms,
                retire_ms: g.record.retire_ms,
                failing_since_ms: g.record.failing_since_ms,
                failures_in_a_row: g.failures,
                resting_until_ms: (g.resting_until_ms > now_ms).then_some(g.resting_until_ms),
                used: g.used,
            })
            .collect()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.guards.iter().any(|g| &g.peer == peer)
    }

    /// Drop retired guards and those that failed for too long; true if any went.
    fn prune(&mut self, now_ms: u64) -> bool {
        let before = self.guards.len();
        self.guards.retain(|g| {
            now_ms < g.record.retire_ms
                && g.record
                    .failing_since_ms
                    .is_none_or(|since| now_ms.saturating_sub(since) < PATIENCE_MS)
        });
        self.guards.len() != before
    }

    /// The guard for the next path: the first one not resting; else a new one sampled from
    /// `relays` (not `me`, not in `exclude`); else the one whose rest ends first. `None`
    /// if there is no guard and no relay to make one of.
    pub fn pick(
        &mut self,
        now_ms: u64,
        me: &PeerId,
        relays: &[PeerAddrs],
        exclude: &[PeerId],
        rng: &mut impl rand::Rng,
    ) -> Option<Picked> {
        let mut changed = self.prune(now_ms);
        // Fresher addresses for guards heard of again.
        for g in &mut self.guards {
            if let Some((_, addrs)) = relays.iter().find(|(p, _)| p == &g.peer) {
                if !addrs.is_empty() {
                    g.record.addrs = addr_bytes(addrs);
                }
            }
        }
        let index = match self
            .guards
            .iter()
            .position(|g| g.resting_until_ms <= now_ms)
        {
            Some(i) => i,
            None => {
                let fresh = |(p, _): &&PeerAddrs| p != me && !self.contains(p);
                let mut candidates: Vec<&PeerAddrs> = relays
                    .iter()
                    .filter(fresh)
                    .filter(|(p, _)| !exclude.contains(p))
                    .collect();
                if candidates.is_empty() && self.guards.is_empty() {
                    // Only contacts' nodes relay (a network of a few nodes): better one of
                    // them than no path at all.
                    candidates = relays.iter().filter(fresh).collect();
                }
                let long_ago = |t: u64| now_ms.saturating_sub(t) >= WIDEN_EVERY_MS;
                let may_widen = self.guards.len() < PRIMARY_GUARDS
                    || (self.guards.len() < MAX_GUARDS
                        && self.guards.iter().all(|g| {
                            long_ago(g.record.added_ms)
                                && g.record.failing_since_ms.is_some_and(long_ago)
                        }));
                match candidates.choose(rng) {
                    Some((peer, addrs)) if may_widen => {
                        self.guards.push(Guard {
                            record: GuardRecord {
                                peer: peer.to_bytes(),
                                addrs: addr_bytes(addrs),
                                added_ms: now_ms,
                                retire_ms: now_ms
                                    .saturating_add(LIFETIME_MS)
                                    .saturating_add(rng.gen_range(0..LIFETIME_MS)),
                                failing_since_ms: None,
                            },
                            peer: *peer,
                            failures: 0,
                            failed_after: 0,
                            resting_until_ms: 0,
                            used: 0,
                        });
                        changed = true;
                        self.guards.len() - 1
                    }
                    _ => self
                        .guards
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, g)| g.resting_until_ms)
                        .map(|(i, _)| i)?,
                }
            }
        };
        let g = &mut self.guards[index];
        g.used += 1;
        Some(Picked {
            peer: g.peer,
            addrs: g
                .record
                .addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                .collect(),
            changed,
        })
    }

    /// A path through `peer` worked. True if its record changed.
    pub fn succeeded(&mut self, peer: &PeerId) -> bool {
        let Some(g) = self.guards.iter_mut().find(|g| &g.peer == peer) else {
            return false;
        };
        g.failures = 0;
        g.failed_after = 0;
        g.resting_until_ms = 0;
        g.record.failing_since_ms.take().is_some()
    }

    /// A path through `peer` failed after it: at a later relay, or at the guard itself,
    /// which may damage or drop what it passes on and blame the next hop (one path cannot
    /// tell them apart). After [`PATHS_FAILED_AFTER`] such paths in a row the guard is
    /// taken for failing: `Some(changed)`, as [`Guards::failed`]; else `None`.
    pub fn failed_after(&mut self, peer: &PeerId, now_ms: u64) -> Option<bool> {
        let g = self.guards.iter_mut().find(|g| &g.peer == peer)?;
        g.failed_after = g.failed_after.saturating_add(1);
        if g.failed_after < PATHS_FAILED_AFTER {
            return None;
        }
        g.failed_after = 0;
        Some(self.failed(peer, now_ms))
    }

    /// `peer` could not be reached, or refused to carry a cell. True if its record changed.
    pub fn failed(&mut self, peer: &PeerId, now_ms: u64) -> bool {
        let Some(g) = self.guards.iter_mut().find(|g| &g.peer == peer) else {
            return false;
        };
        g.failures = g.failures.saturating_add(1);
        let rest = FIRST_REST_MS
            .saturating_mul(1u64 << (g.failures - 1).min(16))
            .min(MAX_REST_MS);
        g.resting_until_ms = now_ms.saturating_add(rest);
        if g.record.failing_since_ms.is_none() {
            g.record.failing_since_ms = Some(now_ms);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn relays(n: usize) -> Vec<PeerAddrs> {
        (0..n)
            .map(|i| {
                (
                    PeerId::random(),
                    vec![format!("/ip4/127.0.0.1/tcp/{}", 1000 + i).parse().unwrap()],
                )
            })
            .collect()
    }

    #[test]
    fn the_first_guard_carries_every_path_while_it_works() {
        let mut rng = StdRng::seed_from_u64(1);
        let me = PeerId::random();
        let relays = relays(20);
        let mut guards = Guards::default();
        let first = guards.pick(0, &me, &relays, &[], &mut rng).unwrap();
        assert!(first.changed);
        for t in 1..100 {
            let again = guards.pick(t, &me, &relays, &[], &mut rng).unwrap();
            assert_eq!(again.peer, first.peer);
            assert!(!again.changed);
            guards.succeeded(&again.peer);
        }
        assert_eq!(guards.records().len(), 1);
    }

    #[test]
    fn a_guard_after_which_path_after_path_fails_is_taken_for_failing() {
        let mut rng = StdRng::seed_from_u64(3);
        let me = PeerId::random();
        let relays = relays(20);
        let mut guards = Guards::default();
        let first = guards.pick(0, &me, &relays, &[], &mut rng).unwrap().peer;
        // A path that works in between clears the count.
        for _ in 0..PATHS_FAILED_AFTER - 1 {
            assert_eq!(guards.failed_after(&first, 10), None);
        }
        guards.succeeded(&first);
        for _ in 0..PATHS_FAILED_AFTER - 1 {
            assert_eq!(guards.failed_after(&first, 20), None);
        }
        assert_eq!(
            guards.pick(30, &me, &relays, &[], &mut rng).unwrap().peer,
            first
        );
        assert_eq!(guards.failed_after(&first, 40), Some(true));
        let next = guards.pick(50, &me, &relays, &[], &mut rng).unwrap().peer;
        assert_ne!(next, first, "the next guard carries the paths meanwhile");
    }

    #[test]
    fn a_failing_guard_rests_while_the_next_carries_and_is_preferred_again_later() {
        let mut rng = StdRng::seed_from_u64(2);
        let me = PeerId::random();
        let relays = relays(20);
        let mut guards = Guards::default();
        let first = guards.pick(0, &me, &relays, &[], &mut rng).unwrap().peer;
        assert!(guards.failed(&first, 0));
        let second = guards.pick(1, &me, &relays, &[], &mut rng).unwrap();
        assert_ne!(second.peer, first);
        assert!(second.changed, "a second guard was sampled");
        // After its rest the first is tried again, and preferred once it works.
        let later = guards
            .pick(FIRST_REST_MS, &me, &relays, &[], &mut rng)
            .unwrap();
        assert_eq!(later.peer, first);
        assert!(guards.succeeded(&first));
        assert_eq!(guards.records()[0].failing_since_ms, None);
    }

    #[test]
    fn guards_are_bounded_never_a_contacts_node_and_dropped_after_long_failure_or_age() {
        let mut rng = StdRng::seed_from_u64(3);
        let me = PeerId::random();
        let relays = relays(30);
        let contacts: Vec<PeerId> = relays[..10].iter().map(|(p, _)| *p).collect();
        let mut guards = Guards::default();
        // Every path fails, a pick a minute for a day: the primary guards at once, then
        // one more every ten minutes at most, never more than the bound.
        let minute = 60_000;
        for t in 0..24 * 60 {
            let now = t * minute;
            let p = guards.pick(now, &me, &relays, &contacts, &mut rng).unwrap();
            assert!(!contacts.contains(&p.peer), "never a contact's node");
            assert_ne!(p.peer, me);
            guards.failed(&p.peer, now);
            let widened = (now / WIDEN_EVERY_MS) as usize;
            assert!(
                guards.records().len() <= (PRIMARY_GUARDS + widened).min(MAX_GUARDS),
                "{} guards after {} minutes",
                guards.records().len(),
                t
            );
        }
        assert_eq!(guards.records().len(), MAX_GUARDS);
        // Failing for longer than the patience: all dropped, fresh ones sampled.
        let later = 24 * 60 * minute + PATIENCE_MS;
        let p = guards
            .pick(later, &me, &relays, &contacts, &mut rng)
            .unwrap();
        assert!(p.changed);
        assert_eq!(guards.records().len(), 1);
        // Retired after its lifetime, however well it did.
        guards.succeeded(&p.peer);
        let retire = guards.records()[0].retire_ms;
        assert!((later + LIFETIME_MS..later + 2 * LIFETIME_MS).contains(&retire));
        let next = guards
            .pick(retire, &me, &relays, &contacts, &mut rng)
            .unwrap();
        assert_ne!(next.peer, p.peer);
    }

    #[test]
    fn no_relays_no_guard_and_records_survive_a_restart() {
        let mut rng = StdRng::seed_from_u64(4);
        let me = PeerId::random();
        let mut guards = Guards::default();
        assert_eq!(guards.pick(0, &me, &[], &[], &mut rng), None);
        assert_eq!(
            guards.pick(0, &me, &[(me, vec![])], &[], &mut rng),
            None,
            "never itself"
        );
        let relays = relays(5);
        let p = guards.pick(0, &me, &relays, &[], &mut rng).unwrap();
        let mut again = Guards::from_records(guards.records());
        assert_eq!(again.pick(1, &me, &[], &[], &mut rng).unwrap().peer, p.peer);
        assert_eq!(
            again.pick(1, &me, &[], &[], &mut rng).unwrap().addrs,
            relays.iter().find(|r| r.0 == p.peer).unwrap().1
        );
    }

    #[test]
    fn guards_that_fail_now_and_then_do_not_widen_the_set_beyond_the_primaries() {
        let mut rng = StdRng::seed_from_u64(5);
        let me = PeerId::random();
        let relays = relays(30);
        let mut guards = Guards::default();
        // An overloaded network: every guard fails most paths, but each works now and then.
        let minute = 60_000;
        for t in 0..24 * 60u64 {
            let p = guards
                .pick(t * minute, &me, &relays, &[], &mut rng)
                .unwrap();
            if t % 7 == 0 {
                guards.succeeded(&p.peer);
            } else {
                guards.failed(&p.peer, t * minute);
            }
        }
        assert_eq!(guards.records().len(), PRIMARY_GUARDS);
    }
}
