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
//!
//! That is the **hosts** strategy. With private paths a host sees exits, not endpoints, so
//! two more strategies pool what the colluders saw as relays too (every onion cell: the hop
//! before, the hop after or the exit's request, the time, and the relay's place on the path,
//! which a relay reads off its layer):
//!
//! - **relays**: each request at a dead-drop address that a colluder saw (as the exit, or as
//!   a host: then its asker is the exit) is traced back hop by hop: the cell a colluder
//!   passed to that hop last before (within [`CHAIN_WINDOW_MS`]) is taken for the same
//!   one, across an honest hop too; a trace that reaches a first relay names the node
//!   before it as the request's origin. Deposits name senders, fetches and deletes
//!   recipients, lookups either; each address's best-supported sender and recipient make a
//!   guessed pair.
//! - **timing**: as *relays*, and a host's request that cannot be traced is given to the
//!   node whose cell a colluding first relay took last before it (within
//!   [`TIMING_WINDOW_MS`]).
//!
//! The figures reported are those of the strategy that links most conversations, with the
//! linkage of each strategy beside them. Kademlia requests are not pooled: with private
//! paths a node's own lookups of dead-drop addresses are made by exits, which the
//! strategies above already follow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::SeedableRng;
use serde::Serialize;

use crate::record::{Kind, Observation, RelayObservation, Run, Step};

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
    /// Traced back through relays to a first relay.
    Path,
}

/// A cell a colluder passed on is taken for the one the next colluder saw from that hop if
/// it went out at most this long before.
pub const CHAIN_WINDOW_MS: u64 = 2_000;
/// How long before a host's request a first relay's cell may have gone out to be taken for
/// it, in the timing strategy.
pub const TIMING_WINDOW_MS: u64 = 1_000;

/// One strategy's guesses.
struct Attack {
    name: &'static str,
    guesses: Guesses,
    /// When each pair was first named (ms since the Unix epoch).
    named_at: BTreeMap<(usize, usize), u64>,
}

impl Attack {
    fn new(name: &'static str) -> Self {
        Attack {
            name,
            guesses: Guesses::new(),
            named_at: BTreeMap::new(),
        }
    }

    fn name(&mut self, p: (usize, usize), epoch: u64, evidence: Evidence, at_ms: u64) {
        self.guesses.entry(p).or_default().insert((epoch, evidence));
        let t = self.named_at.entry(p).or_insert(at_ms);
        *t = (*t).min(at_ms);
    }
}

/// The privacy figures for one collusion.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub fraction: f64,
    pub colluders: usize,
    /// Host requests the colluders saw.
    pub observations: usize,
    /// Onion cells the colluders relayed.
    pub relay_observations: usize,
    /// The strategy whose figures these are: the one whose linkage is furthest above
    /// chance (what naming as many pairs at random would link).
    pub strategy: &'static str,
    /// The linkage that naming [`Figures::guesses`] pairs of honest nodes at random would
    /// reach.
    pub chance: f64,
    /// Every strategy's figures: hosts, relays, timing.
    pub strategies: Vec<Strategy>,
    /// Messages a named conversation had sent (both ways) when the colluders first named it:
    /// the median over named conversations (`None` when none is named).
    pub messages_to_disclosure: Option<f64>,
    /// Where the colluders' view comes from (from every relay's records, which no
    /// attacker has): the share of measured conversations whose two nodes each sent cells
    /// through a colluding first relay (guard) during the run, and the share of the
    /// conversations the best strategy named correctly for which that holds.
    pub both_guards_colluding: f64,
    pub named_with_both_guards_colluding: f64,
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

/// One strategy's main figures.
#[derive(Clone, Debug, Serialize)]
pub struct Strategy {
    pub name: &'static str,
    pub linkage: f64,
    pub precision: f64,
    pub guesses: usize,
    pub chance: f64,
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
            let relayed: Vec<&RelayObservation> = run
                .relay_observations
                .iter()
                .filter(|o| bad.contains(&o.relay))
                .collect();
            let attacks = [
                attack(
                    &seen,
                    &bad,
                    run.epoch_origin_ms,
                    epoch_ms,
                    fetch_interval_ms,
                ),
                trace(&seen, &relayed, &bad, run.epoch_origin_ms, epoch_ms, false),
                trace(&seen, &relayed, &bad, run.epoch_origin_ms, epoch_ms, true),
            ];
            let scored: Vec<Figures> = attacks
                .iter()
                .map(|a| {
                    let mut fig = score(run, f, &bad, &a.guesses, &epochs, replicas);
                    fig.strategy = a.name;
                    fig.messages_to_disclosure = disclosure(run, &bad, a);
                    fig
                })
                .collect();
            // Furthest above chance; on a tie the more precise, then the first.
            let mut top = 0;
            for (i, s) in scored.iter().enumerate().skip(1) {
                let t = &scored[top];
                let order = (s.linkage - s.chance)
                    .total_cmp(&(t.linkage - t.chance))
                    .then(s.precision.total_cmp(&t.precision));
                if order == std::cmp::Ordering::Greater {
                    top = i;
                }
            }
            let mut best = scored[top].clone();
            best.observations = seen.len();
            best.relay_observations = relayed.len();
            let (both, named) = guard_exposure(run, &bad, &scored_named(&attacks, &scored, &best));
            best.both_guards_colluding = both;
            best.named_with_both_guards_colluding = named;
            best.strategies = scored
                .iter()
                .map(|s| Strategy {
                    name: s.strategy,
                    linkage: s.linkage,
                    precision: s.precision,
                    guesses: s.guesses,
                    chance: s.chance,
                })
                .collect();
            best
        })
        .collect()
}

/// The pairs the strategy of `best` guessed.
fn scored_named<'a>(
    attacks: &'a [Attack],
    scored: &[Figures],
    best: &Figures,
) -> Vec<&'a (usize, usize)> {
    scored
        .iter()
        .position(|f| f.strategy == best.strategy)
        .map(|i| attacks[i].guesses.keys().collect())
        .unwrap_or_default()
}

/// The share of measured conversations whose two nodes both used a colluding first relay,
/// and the share of those `named` correctly for which that holds (see [`Figures`]).
fn guard_exposure(run: &Run, bad: &BTreeSet<usize>, named: &[&(usize, usize)]) -> (f64, f64) {
    let mut exposed: HashSet<usize> = HashSet::new();
    for r in &run.relay_observations {
        if r.hop == Some(0) && bad.contains(&r.relay) {
            if let Some(p) = r.prev {
                exposed.insert(p);
            }
        }
    }
    let named: HashSet<(usize, usize)> = named.iter().map(|p| **p).collect();
    let (mut measured, mut both, mut right, mut right_both) = (0usize, 0usize, 0usize, 0usize);
    for &(a, b) in &run.conversations {
        if bad.contains(&a) || bad.contains(&b) {
            continue;
        }
        measured += 1;
        let exp = exposed.contains(&a) && exposed.contains(&b);
        both += usize::from(exp);
        if named.contains(&pair(a, b)) {
            right += 1;
            right_both += usize::from(exp);
        }
    }
    let share = |x: usize, of: usize| if of == 0 { 0.0 } else { x as f64 / of as f64 };
    (share(both, measured), share(right_both, right))
}

/// The median number of messages a conversation named by `attack` had sent when it was
/// first named.
fn disclosure(run: &Run, bad: &BTreeSet<usize>, attack: &Attack) -> Option<f64> {
    let mut sent_before: Vec<u64> = Vec::new();
    for (i, &(a, b)) in run.conversations.iter().enumerate() {
        if bad.contains(&a) || bad.contains(&b) {
            continue;
        }
        let Some(&at) = attack.named_at.get(&pair(a, b)) else {
            continue;
        };
        let n = run
            .messages
            .iter()
            .filter(|m| m.conversation == i && m.sent_at > 0 && m.sent_at <= at)
            .count();
        sent_before.push(n as u64);
    }
    median(&mut sent_before)
}

fn median(v: &mut [u64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] + v[m]) as f64 / 2.0
    })
}

/// Which side of a dead drop a request shows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Side {
    Sender,
    Recipient,
    Either,
}

/// Cells colluders passed on, by the hop they went to: (time, the hop before, the
/// colluder's place on its path), in time order.
type Forwards = HashMap<usize, Vec<(u64, Option<usize>, Option<usize>)>>;

/// The origin of a request that reached hop `prev` at `at_ms`, the observer being at place
/// `hop` (when known): followed back through the cells colluders passed on. `Err` carries
/// the last time and hop reached when the trace stops short of a first relay.
fn origin(
    forwards: &Forwards,
    mut at_ms: u64,
    mut prev: usize,
    mut hop: Option<usize>,
) -> Result<usize, (u64, usize, Option<usize>)> {
    for _ in 0..=sotto_protocol::onion::MAX_HOPS {
        if hop == Some(0) {
            return Ok(prev);
        }
        let Some(sent) = forwards.get(&prev) else {
            return Err((at_ms, prev, hop));
        };
        // The last cell passed to `prev` at or before `at_ms`, within the window.
        let i = sent.partition_point(|(t, _, _)| *t <= at_ms);
        let Some(&(t, before, place)) = i.checked_sub(1).map(|i| &sent[i]) else {
            return Err((at_ms, prev, hop));
        };
        if t + CHAIN_WINDOW_MS < at_ms {
            return Err((at_ms, prev, hop));
        }
        let Some(before) = before else {
            return Err((at_ms, prev, hop));
        };
        (at_ms, prev, hop) = (t, before, place);
    }
    Err((at_ms, prev, hop))
}

/// A request at an address a colluder saw: time, address, side, the hop it came from, the
/// observer's place on the path.
type Request = (u64, [u8; 32], Side, usize, Option<usize>);

/// Per side and origin at one address: (weight of the evidence, first seen).
type Support = BTreeMap<(Side, usize), (u32, u64)>;

/// The relays and timing strategies (see the module documentation).
fn trace(
    seen: &[&Observation],
    relayed: &[&RelayObservation],
    colluders: &BTreeSet<usize>,
    origin_ms: u64,
    epoch_ms: u64,
    timing: bool,
) -> Attack {
    let epoch_of = |t: u64| t.saturating_sub(origin_ms) / epoch_ms.max(1);
    let mut forwards = Forwards::new();
    // First relays' cells, for the timing strategy: (time, origin).
    let mut firsts: Vec<(u64, usize)> = Vec::new();
    for r in relayed {
        if let Step::Forward { next: Some(next) } = r.step {
            forwards
                .entry(next)
                .or_default()
                .push((r.at_ms, r.prev, r.hop));
        }
        if r.hop == Some(0) {
            if let Some(p) = r.prev {
                firsts.push((r.at_ms, p));
            }
        }
    }
    for v in forwards.values_mut() {
        v.sort_unstable_by_key(|x| x.0);
    }
    firsts.sort_unstable();
    // Every request at an address a colluder saw: (time, address, side, the hop it came
    // from, the observer's place).
    let mut requests: Vec<Request> = Vec::new();
    let side = |k: Kind| match k {
        Kind::Deposit => Side::Sender,
        Kind::Fetch | Kind::Delete => Side::Recipient,
    };
    for r in relayed {
        let Some(prev) = r.prev else { continue };
        match r.step {
            Step::Lookup { address } => {
                requests.push((r.at_ms, address, Side::Either, prev, r.hop))
            }
            Step::Mailbox { kind, address, .. } => {
                requests.push((r.at_ms, address, side(kind), prev, r.hop))
            }
            _ => {}
        }
    }
    for o in seen {
        if let Some(peer) = o.peer {
            if o.kind != Kind::Deposit || o.stored {
                requests.push((o.at_ms, o.address, side(o.kind), peer, None));
            }
        }
    }
    // Support per address, side and origin: (weight, first seen).
    let mut support: BTreeMap<[u8; 32], Support> = BTreeMap::new();
    let mut first_at: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for &(t, address, side, prev, hop) in &requests {
        let f = first_at.entry(address).or_insert(t);
        *f = (*f).min(t);
        let found = match origin(&forwards, t, prev, hop) {
            Ok(o) => Some((o, 4)),
            Err((at, _, None)) if timing => {
                let i = firsts.partition_point(|(ft, _)| *ft <= at);
                i.checked_sub(1)
                    .map(|i| firsts[i])
                    .filter(|(ft, _)| ft + TIMING_WINDOW_MS >= at)
                    .map(|(_, o)| (o, 1))
            }
            Err(_) => None,
        };
        let Some((o, weight)) = found else { continue };
        if colluders.contains(&o) {
            continue;
        }
        let e = support
            .entry(address)
            .or_default()
            .entry((side, o))
            .or_insert((0, t));
        e.0 += weight;
        e.1 = e.1.min(t);
    }
    let mut attack = Attack::new(if timing { "timing" } else { "relays" });
    for (address, by) in &support {
        let epoch = epoch_of(first_at[address]);
        // The best-supported nodes of a side (those with at least half the top's support).
        let best = |want: Side| -> Vec<(usize, u64)> {
            let top = by
                .iter()
                .filter(|((s, _), _)| *s == want)
                .map(|(_, (w, _))| *w)
                .max()
                .unwrap_or(0);
            by.iter()
                .filter(|((s, _), (w, _))| *s == want && top > 0 && 2 * w >= top)
                .map(|((_, o), (_, t))| (*o, *t))
                .collect()
        };
        let (mut senders, mut recipients, either) = (
            best(Side::Sender),
            best(Side::Recipient),
            best(Side::Either),
        );
        if senders.is_empty() {
            senders = either.clone();
        } else if recipients.is_empty() {
            recipients = either;
        }
        for &(d, td) in &senders {
            for &(r, tr) in &recipients {
                if d != r {
                    let evidence = if by.values().all(|(w, _)| *w < 4) {
                        Evidence::Timing
                    } else {
                        Evidence::Path
                    };
                    attack.name(pair(d, r), epoch, evidence, td.max(tr));
                }
            }
        }
    }
    attack
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
) -> Attack {
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
    let mut attack = Attack::new("hosts");
    for a in by_address.values() {
        let epoch = epoch_of(a.first_ms);
        // The first depositor is the sender; the others are hosts handing over.
        let depositors: BTreeSet<(u64, usize)> =
            a.depositors.iter().min().copied().into_iter().collect();
        let mut fetchers: BTreeMap<usize, u64> = BTreeMap::new();
        for &(t, f, _) in &a.fetchers {
            let e = fetchers.entry(f).or_insert(t);
            *e = (*e).min(t);
        }
        if !depositors.is_empty() && !fetchers.is_empty() {
            for &(td, d) in &depositors {
                for (&f, &tf) in &fetchers {
                    if d != f {
                        attack.name(pair(d, f), epoch, Evidence::Address, td.max(tf));
                    }
                }
            }
        } else if !depositors.is_empty() {
            if let Some(&(t, d)) = a.depositors.iter().min() {
                let next = full_fetches
                    .iter()
                    .find(|(ft, f)| *ft > t && *ft <= t + window && *f != d);
                if let Some(&(ft, f)) = next {
                    attack.name(pair(d, f), epoch, Evidence::Timing, ft);
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
                    attack.name(pair(d, f), epoch, Evidence::Timing, t);
                }
            }
        }
    }
    attack
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
            if ev
                .iter()
                .any(|(_, e)| matches!(e, Evidence::Address | Evidence::Path))
            {
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
        observations: 0,
        relay_observations: 0,
        strategy: "hosts",
        chance: {
            let honest = n.saturating_sub(bad.len()) as f64;
            let pairs = honest * (honest - 1.0) / 2.0;
            if pairs > 0.0 {
                (guesses.len() as f64 / pairs).min(1.0)
            } else {
                0.0
            }
        },
        strategies: Vec::new(),
        messages_to_disclosure: None,
        both_guards_colluding: 0.0,
        named_with_both_guards_colluding: 0.0,
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
        let g = attack(&refs, &bad, 0, 10_000, 1_000).guesses;
        assert_eq!(g.keys().copied().collect::<Vec<_>>(), vec![(1, 2)]);
        assert!(g[&(1, 2)].contains(&(0, Evidence::Address)));
    }

    fn relayed(at_ms: u64, relay: usize, prev: usize, hop: usize, step: Step) -> RelayObservation {
        RelayObservation {
            at_ms,
            relay,
            prev: Some(prev),
            hop: Some(hop),
            step,
        }
    }

    #[test]
    fn colluding_first_relays_and_a_colluding_exit_or_host_name_both_sides() {
        let bad: BTreeSet<usize> = [7, 8, 9].into();
        // Node 1's deposit at A: guard 9 (a colluder) -> middle 5 (honest) -> exit 7 (a
        // colluder), which reads the address.
        // Node 2's fetch at A: guard 8 (a colluder) -> exit 4 (honest) -> host 9.
        let relays = [
            relayed(1_000, 9, 1, 0, Step::Forward { next: Some(5) }),
            relayed(
                1_010,
                7,
                5,
                1,
                Step::Mailbox {
                    host: Some(3),
                    kind: Kind::Deposit,
                    address: [6; 32],
                },
            ),
            // Another cell 9 passed to 5 before: the last one before the deposit is taken.
            relayed(100, 9, 11, 0, Step::Forward { next: Some(5) }),
            relayed(2_990, 8, 2, 0, Step::Forward { next: Some(4) }),
        ];
        let hosts = [obs(3_000, 9, 4, Kind::Fetch, 6, 1)];
        let r: Vec<&RelayObservation> = relays.iter().collect();
        let h: Vec<&Observation> = hosts.iter().collect();
        let a = trace(&h, &r, &bad, 0, 10_000, false);
        assert_eq!(a.guesses.keys().copied().collect::<Vec<_>>(), vec![(1, 2)]);
        assert_eq!(
            a.named_at[&(1, 2)],
            3_000,
            "named once both sides were seen"
        );
        // Without the colluding guard of node 2 its side is not traced.
        let r: Vec<&RelayObservation> = relays[..3].iter().collect();
        assert!(trace(&h, &r, &bad, 0, 10_000, false).guesses.is_empty());
    }

    #[test]
    fn an_honest_guard_hides_its_node_from_colluding_middles_and_exits() {
        let bad: BTreeSet<usize> = [7, 8].into();
        // Node 1 -> honest guard 5 -> colluding middle 8 -> colluding exit 7.
        let relays = [
            relayed(1_000, 8, 5, 1, Step::Forward { next: Some(7) }),
            relayed(
                1_005,
                7,
                8,
                2,
                Step::Mailbox {
                    host: Some(3),
                    kind: Kind::Deposit,
                    address: [6; 32],
                },
            ),
        ];
        let r: Vec<&RelayObservation> = relays.iter().collect();
        for timing in [false, true] {
            assert!(trace(&[], &r, &bad, 0, 10_000, timing).guesses.is_empty());
        }
    }

    #[test]
    fn timing_gives_an_untraced_host_request_to_the_last_first_relay_cell_before_it() {
        let bad: BTreeSet<usize> = [8, 9].into();
        // Guard 8 passed node 1's cell to an honest middle; host 9 saw the deposit from an
        // honest exit shortly after. Node 2's fetch likewise through guard 8.
        let relays = [
            relayed(1_000, 8, 1, 0, Step::Forward { next: Some(5) }),
            relayed(5_000, 8, 2, 0, Step::Forward { next: Some(6) }),
        ];
        let hosts = [
            obs(1_020, 9, 4, Kind::Deposit, 6, 512),
            obs(5_030, 9, 3, Kind::Fetch, 6, 1),
        ];
        let r: Vec<&RelayObservation> = relays.iter().collect();
        let h: Vec<&Observation> = hosts.iter().collect();
        assert!(trace(&h, &r, &bad, 0, 10_000, false).guesses.is_empty());
        let a = trace(&h, &r, &bad, 0, 10_000, true);
        assert_eq!(a.guesses.keys().copied().collect::<Vec<_>>(), vec![(1, 2)]);
        assert!(a.guesses[&(1, 2)].contains(&(0, Evidence::Timing)));
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3.0));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2.5));
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
        let g = attack(&refs, &bad, 0, 10_000, 1_000).guesses;
        assert!(g.contains_key(&(1, 2)), "{g:?}");
        assert!(!g.contains_key(&(1, 3)), "{g:?}");
        assert!(g[&(1, 2)].contains(&(0, Evidence::Timing)));
    }
}
