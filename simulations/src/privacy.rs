//! What colluding mailbox hosts learn about who talks to whom.
//!
//! Every node of a run records the mailbox requests it answers (see [`crate::record::Recorder`]).
//! Colluders are passive: they answer like everyone else and only pool what they saw. So
//! one run serves every collusion: for each fraction `f`, a set of `round(f·N)` nodes is
//! drawn from the seed (nested: the colluders at 0.1 are among those at 0.2) and the
//! attacker below is given only the records of requests those nodes answered.
//!
//! The attacker, the strongest simple one written so far:
//!
//! 1. **By dead drop.** Deposits and fetches at the same address: whoever fetches a dead
//!    drop holds its drop key (the recipient), and the first node seen depositing there is
//!    taken for the sender (later depositors are mostly hosts handing envelopes over to each
//!    other). Each (first depositor, fetcher) pair of an address is a guessed conversation.
//!    Requests the colluders made themselves (their own traffic, their handovers) are left
//!    out.
//! 2. **By timing**, for what is left (envelope sizes are padded buckets; only whether a
//!    fetch returned anything is used): a deposit whose address nobody was seen
//!    fetching is linked to the first node that fetched a non-empty page at any colluder
//!    within a fetch interval (plus slack) after it; a non-empty fetch whose address nobody
//!    was seen depositing at is linked to the last node that deposited an envelope at any
//!    colluder within the same window before it.
//!
//! Each guess is dated by the epoch of the first request seen at its address, which is how
//! the attacker follows a pair across dead-drop rotations: the pair's two PeerIds do not
//! rotate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::SeedableRng;
use serde::Serialize;

use crate::record::{Kind, Observation, Run};

/// The colluders for fraction `f` of `n` nodes: a prefix of one permutation drawn from `seed`.
pub fn colluders(seed: u64, n: usize, f: f64) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x636f_6c6c_7564_6521));
    let k = ((f * n as f64).round() as usize).min(n);
    order.into_iter().take(k).collect()
}

/// How a pair was guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Evidence {
    Address,
    Timing,
}

/// The privacy figures for one collusion.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub fraction: f64,
    pub colluders: usize,
    /// Host requests the colluders saw.
    pub observations: usize,
    /// Conversations between two honest (non-colluding) nodes: the ones measured.
    pub conversations: usize,
    /// Share of those whose two nodes the colluders name.
    pub linkage: f64,
    /// Share named from a shared dead drop alone.
    pub linkage_by_address: f64,
    /// Pairs the colluders name, and the share of them that are real conversations.
    pub guesses: usize,
    pub precision: f64,
    /// Per conversation: of the epochs in which it sent messages, in how many the colluders
    /// named it from that epoch's dead drops (mean, max), and the mean share.
    pub span_mean: f64,
    pub span_max: u64,
    pub span_share: f64,
    /// Mean number of candidate partners left for a conversation's node (N−1 when the
    /// colluders cannot tell, or name the wrong ones).
    pub anonymity_mean: f64,
    /// For comparison: f² (each side behind its own relay) and 1−(1−f)^k (one dead drop at
    /// k hosts).
    pub f_squared: f64,
    pub one_drop: f64,
}

/// The privacy figures of `run` for each fraction.
pub fn analyse(
    run: &Run,
    seed: u64,
    fractions: &[f64],
    replicas: usize,
    epoch_ms: u64,
    fetch_interval_ms: u64,
) -> Vec<Figures> {
    let n = run.nodes.len();
    let epochs = ActiveEpochs::of(run, epoch_ms);
    fractions
        .iter()
        .map(|&f| {
            let bad = colluders(seed, n, f);
            let seen: Vec<&Observation> = run
                .observations
                .iter()
                .filter(|o| bad.contains(&o.host))
                .collect();
            let guesses = attack(
                &seen,
                &bad,
                run.epoch_origin_ms,
                epoch_ms,
                fetch_interval_ms,
            );
            score(run, f, &bad, seen.len(), &guesses, &epochs, replicas)
        })
        .collect()
}

/// Guessed pairs (smaller index first), with the epochs and kinds of their evidence.
type Guesses = BTreeMap<(usize, usize), BTreeSet<(u64, Evidence)>>;

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The attacker (see the module documentation).
fn attack(
    seen: &[&Observation],
    colluders: &BTreeSet<usize>,
    origin_ms: u64,
    epoch_ms: u64,
    fetch_interval_ms: u64,
) -> Guesses {
    let epoch_of = |t: u64| t.saturating_sub(origin_ms) / epoch_ms.max(1);
    // Requests by others, per address.
    #[derive(Default)]
    struct AtAddress {
        first_ms: u64,
        /// Someone, colluders included, deposited here.
        deposited: bool,
        depositors: Vec<(u64, usize)>,
        fetchers: Vec<(u64, usize, usize)>,
    }
    let mut by_address: BTreeMap<[u8; 32], AtAddress> = BTreeMap::new();
    let mut deposits: Vec<(u64, usize)> = Vec::new();
    let mut full_fetches: Vec<(u64, usize)> = Vec::new();
    for o in seen {
        let a = by_address.entry(o.address).or_insert_with(|| AtAddress {
            first_ms: o.at_ms,
            ..Default::default()
        });
        a.first_ms = a.first_ms.min(o.at_ms);
        a.deposited |= o.kind == Kind::Deposit;
        let Some(peer) = o.peer.filter(|p| !colluders.contains(p)) else {
            continue;
        };
        match o.kind {
            Kind::Deposit if o.stored => {
                a.depositors.push((o.at_ms, peer));
                deposits.push((o.at_ms, peer));
            }
            Kind::Fetch => {
                a.fetchers.push((o.at_ms, peer, o.amount));
                if o.amount > 0 {
                    full_fetches.push((o.at_ms, peer));
                }
            }
            _ => {}
        }
    }
    deposits.sort_unstable();
    full_fetches.sort_unstable();
    let window = 2 * fetch_interval_ms + 2_000;
    let mut guesses = Guesses::new();
    for a in by_address.values() {
        let epoch = epoch_of(a.first_ms);
        // The first depositor is the sender; the others are hosts handing over.
        let depositors: BTreeSet<usize> =
            a.depositors.iter().min().map(|d| d.1).into_iter().collect();
        let fetchers: BTreeSet<usize> = a.fetchers.iter().map(|f| f.1).collect();
        if !depositors.is_empty() && !fetchers.is_empty() {
            for &d in &depositors {
                for &f in &fetchers {
                    if d != f {
                        guesses
                            .entry(pair(d, f))
                            .or_default()
                            .insert((epoch, Evidence::Address));
                    }
                }
            }
        } else if !depositors.is_empty() {
            if let Some(&(t, d)) = a.depositors.iter().min() {
                let next = full_fetches
                    .iter()
                    .find(|(ft, f)| *ft > t && *ft <= t + window && *f != d);
                if let Some(&(_, f)) = next {
                    guesses
                        .entry(pair(d, f))
                        .or_default()
                        .insert((epoch, Evidence::Timing));
                }
            }
        } else if !a.deposited {
            for &(t, f, amount) in &a.fetchers {
                if amount == 0 {
                    continue;
                }
                let last = deposits
                    .iter()
                    .rev()
                    .find(|(dt, d)| *dt < t && *dt + window >= t && *d != f);
                if let Some(&(_, d)) = last {
                    guesses
                        .entry(pair(d, f))
                        .or_default()
                        .insert((epoch, Evidence::Timing));
                }
            }
        }
    }
    guesses
}

/// The epochs in which each conversation sent messages.
struct ActiveEpochs(Vec<BTreeSet<u64>>);

impl ActiveEpochs {
    fn of(run: &Run, epoch_ms: u64) -> Self {
        let mut v = vec![BTreeSet::new(); run.conversations.len()];
        for m in &run.messages {
            if m.sent_at > 0 {
                v[m.conversation]
                    .insert(m.sent_at.saturating_sub(run.epoch_origin_ms) / epoch_ms.max(1));
            }
        }
        ActiveEpochs(v)
    }
}

fn score(
    run: &Run,
    f: f64,
    bad: &BTreeSet<usize>,
    observations: usize,
    guesses: &Guesses,
    epochs: &ActiveEpochs,
    replicas: usize,
) -> Figures {
    let n = run.nodes.len();
    let truth: HashSet<(usize, usize)> =
        run.conversations.iter().map(|&(a, b)| pair(a, b)).collect();
    let measured: Vec<(usize, (usize, usize))> = run
        .conversations
        .iter()
        .enumerate()
        .filter(|(_, (a, b))| !bad.contains(a) && !bad.contains(b))
        .map(|(i, &(a, b))| (i, pair(a, b)))
        .collect();
    let mut partners: HashMap<usize, BTreeSet<usize>> = HashMap::new();
    for &(a, b) in guesses.keys() {
        partners.entry(a).or_default().insert(b);
        partners.entry(b).or_default().insert(a);
    }
    let (mut linked, mut by_address) = (0usize, 0usize);
    let (mut span_sum, mut span_max, mut share_sum, mut share_n) = (0u64, 0u64, 0.0, 0usize);
    let (mut anon_sum, mut anon_n) = (0.0, 0usize);
    for &(i, p) in &measured {
        let evidence = guesses.get(&p);
        if let Some(ev) = evidence {
            linked += 1;
            if ev.iter().any(|(_, e)| *e == Evidence::Address) {
                by_address += 1;
            }
        }
        // Only the epochs in which the conversation sent messages count (a pair's intro
        // drops, used once when they added each other, do not rotate).
        let active = &epochs.0[i];
        let followed: BTreeSet<u64> = evidence
            .map(|ev| {
                ev.iter()
                    .map(|(e, _)| *e)
                    .filter(|e| active.contains(e))
                    .collect()
            })
            .unwrap_or_default();
        let span = followed.len() as u64;
        span_sum += span;
        span_max = span_max.max(span);
        if !active.is_empty() {
            share_sum += span as f64 / active.len() as f64;
            share_n += 1;
        }
        for (me, other) in [(p.0, p.1), (p.1, p.0)] {
            let set = match partners.get(&me) {
                Some(c) if c.contains(&other) => c.len(),
                _ => n.saturating_sub(1),
            };
            anon_sum += set as f64;
            anon_n += 1;
        }
    }
    let right = guesses.keys().filter(|p| truth.contains(p)).count();
    let m = measured.len().max(1) as f64;
    Figures {
        fraction: f,
        colluders: bad.len(),
        observations,
        conversations: measured.len(),
        linkage: linked as f64 / m,
        linkage_by_address: by_address as f64 / m,
        guesses: guesses.len(),
        precision: if guesses.is_empty() {
            0.0
        } else {
            right as f64 / guesses.len() as f64
        },
        span_mean: span_sum as f64 / m,
        span_max,
        span_share: if share_n == 0 {
            0.0
        } else {
            share_sum / share_n as f64
        },
        anonymity_mean: if anon_n == 0 {
            n.saturating_sub(1) as f64
        } else {
            anon_sum / anon_n as f64
        },
        f_squared: f * f,
        one_drop: 1.0 - (1.0 - f).powi(replicas as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(
        at_ms: u64,
        host: usize,
        peer: usize,
        kind: Kind,
        addr: u8,
        amount: usize,
    ) -> Observation {
        Observation {
            at_ms,
            host,
            peer: Some(peer),
            kind,
            address: [addr; 32],
            amount,
            stored: true,
        }
    }

    #[test]
    fn colluders_are_nested_and_sized() {
        let small = colluders(7, 200, 0.1);
        let large = colluders(7, 200, 0.2);
        assert_eq!(small.len(), 20);
        assert_eq!(large.len(), 40);
        assert!(small.is_subset(&large));
        assert!(colluders(7, 200, 0.0).is_empty());
    }

    #[test]
    fn a_shared_dead_drop_links_its_depositor_and_fetcher() {
        let bad: BTreeSet<usize> = [9].into();
        let seen = [
            obs(1_000, 9, 1, Kind::Deposit, 5, 512),
            obs(3_000, 9, 2, Kind::Fetch, 5, 1),
            // Another drop, only fetched (empty): nothing to link.
            obs(3_000, 9, 3, Kind::Fetch, 6, 0),
            // The colluder's own deposit is not evidence.
            obs(3_500, 9, 9, Kind::Deposit, 6, 512),
        ];
        let refs: Vec<&Observation> = seen.iter().collect();
        let g = attack(&refs, &bad, 0, 10_000, 1_000);
        assert_eq!(g.keys().copied().collect::<Vec<_>>(), vec![(1, 2)]);
        assert!(g[&(1, 2)].contains(&(0, Evidence::Address)));
    }

    #[test]
    fn timing_links_a_lone_deposit_to_the_next_full_fetch() {
        let bad: BTreeSet<usize> = [8, 9].into();
        let seen = [
            obs(1_000, 9, 1, Kind::Deposit, 5, 512),
            // Fetched elsewhere, but node 2 fetches a non-empty page at colluder 8 soon after.
            obs(1_500, 8, 2, Kind::Fetch, 7, 1),
            // Too late to count.
            obs(20_000, 8, 3, Kind::Fetch, 8, 1),
        ];
        let refs: Vec<&Observation> = seen.iter().collect();
        let g = attack(&refs, &bad, 0, 10_000, 1_000);
        assert!(g.contains_key(&(1, 2)), "{g:?}");
        assert!(!g.contains_key(&(1, 3)), "{g:?}");
        assert!(g[&(1, 2)].contains(&(0, Evidence::Timing)));
    }
}
