//! The outbox queue: which sealed envelope goes where next. Sans-I/O: entries, results and
//! time come in; actions come out. The daemon's delivery shell turns actions into network
//! requests and store writes, and feeds their results back.
//!
//! Per recipient the queue keeps its entries in the order they were written (by sequence
//! number) and decides, for each:
//!
//! - **Direct first.** While the recipient's node has a known route and is answering, up
//!   to a *window* of envelopes are in flight to it at once, in order. The window grows by
//!   one with every envelope taken (up to [`Config::window`]) and halves when the recipient
//!   says to slow down.
//! - **Pacing, not fallback.** A recipient that says it is busy or over its limit
//!   ([`DirectOutcome::SlowDown`], with how long to wait) is left alone for that long, and
//!   the refused envelope goes again first. Only a recipient that does not answer at all
//!   ([`DirectOutcome::Unreachable`]) — or that has only said "slow down" for longer than
//!   [`Config::patience_ms`] — sends the line to the mailbox path.
//! - **Mailbox path.** One deposit at a time per recipient, in order. A deposit that reached
//!   no host is retried with back-off ([`next_attempt`]), and later envelopes that rest on
//!   no host yet wait behind it, so that none overtakes it. One that reached some but fewer
//!   than [`Config::replicas`] hosts is tried again for the rest, independently of the others.
//! - **Heard from.** When the recipient is heard from ([`Queue::heard`]), whatever waits for
//!   it may go now, directly again.
//!
//! Nothing here reads a clock or draws a random number: `now` (ms) and `jitter` in [0, 1)
//! come in with each input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hash;

/// The wait after the first failed attempt.
pub const FIRST_RETRY_MS: u64 = 1_000;
/// The longest wait between attempts.
pub const MAX_RETRY_MS: u64 = 5 * 60 * 1_000;

/// When to try again after `failures` failed attempts (1 or more), at `now_ms`.
/// `jitter` in [0, 1) spreads the wait by up to a quarter either way.
pub fn next_attempt(failures: u32, now_ms: u64, jitter: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(20);
    let base = FIRST_RETRY_MS.saturating_mul(1u64 << exp).min(MAX_RETRY_MS);
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = (base as f64 * (0.75 + 0.5 * jitter)) as u64;
    now_ms.saturating_add(spread.min(MAX_RETRY_MS))
}

/// How the queue behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Direct requests in flight to one recipient, at most.
    pub window: usize,
    /// Whether envelopes may go straight to recipients' nodes at all (not in mailbox-only
    /// mode).
    pub direct: bool,
    /// Mailbox hosts an envelope should rest on before it leaves the outbox.
    pub replicas: usize,
    /// Attempts to reach the remaining hosts once an envelope is on at least one.
    pub max_host_retries: u32,
    /// Deposits in flight across all recipients, at most.
    pub max_deposits: usize,
    /// How long a recipient may keep saying "slow down", without taking anything, before
    /// its envelopes go to the mailbox path instead.
    pub patience_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 32,
            direct: true,
            replicas: 3,
            max_host_retries: 4,
            max_deposits: 32,
            patience_ms: 60_000,
        }
    }
}

/// An entry's place in the queue, as the store keeps it between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's sequence number: entries to one recipient go in this order.
    pub seq: u64,
    /// Attempts that failed to place it anywhere.
    pub failures: u32,
    /// Not before this (ms).
    pub next_attempt_at: u64,
    /// Mailbox hosts that hold it.
    pub hosts: usize,
    /// Attempts to reach the remaining hosts, once on at least one.
    pub host_retries: u32,
}

impl Entry {
    /// A new entry, due at `now_ms`.
    pub fn new(seq: u64, now_ms: u64) -> Self {
        Entry {
            seq,
            failures: 0,
            next_attempt_at: now_ms,
            hosts: 0,
            host_retries: 0,
        }
    }
}

/// What came of sending an envelope straight to the recipient's node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectOutcome {
    /// The recipient took it (now or before).
    Delivered,
    /// The recipient is there but asked to be left alone for `retry_after_ms`.
    SlowDown { retry_after_ms: u64 },
    /// No answer: the node could not be reached, or the request failed or timed out, or it
    /// refused the envelope for good.
    Unreachable,
}

/// What the shell should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<R> {
    /// Send the envelope `seq` straight to `to`'s node; report with [`Queue::direct_result`].
    Send { to: R, seq: u64 },
    /// Deposit the envelope `seq` at the mailbox hosts that do not hold it yet; report with
    /// [`Queue::deposit_result`].
    Deposit { to: R, seq: u64 },
    /// `to` took the envelope `seq`: it leaves the outbox; the message is delivered.
    Delivered { to: R, seq: u64 },
    /// The envelope rests on `entry.hosts` hosts. If `done`, it leaves the outbox; else the
    /// shell keeps `entry` (to reach more hosts later).
    OnHosts { to: R, entry: Entry, done: bool },
    /// Nothing took the envelope this time; the shell keeps `entry` (its failures and next
    /// attempt).
    Retry { to: R, entry: Entry },
}

/// What is in flight for an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flight {
    Direct,
    Deposit,
}

/// One recipient's part of the queue.
#[derive(Debug)]
struct Line {
    /// Entries not in flight, by sequence number.
    waiting: BTreeMap<u64, Entry>,
    /// Entries in flight, on which path, and since when.
    flying: BTreeMap<u64, (Entry, Flight, u64)>,
    /// The recipient's node has a known route.
    route: bool,
    /// The current direct window.
    window: usize,
    /// Direct sends wait until then (the recipient asked to slow down).
    paused_until: u64,
    /// Since when the recipient has only said "slow down" without taking anything.
    slowing_since: Option<u64>,
    /// Since when the recipient has not answered (a connection dropped, a dial failed),
    /// if it has not answered since its last answer. A first failure is retried directly
    /// once after [`RETRY_DIRECT_MS`]: connections drop now and then.
    failing_since: Option<u64>,
    /// The direct path is off until then (the recipient did not answer twice).
    down_until: u64,
    /// How many times in a row it did not answer.
    downs: u32,
}

/// How long after a first failure to reach a recipient's node the direct path is tried
/// again, before the recipient counts as unreachable.
pub const RETRY_DIRECT_MS: u64 = 250;

impl Line {
    fn new(window: usize) -> Self {
        Line {
            waiting: BTreeMap::new(),
            flying: BTreeMap::new(),
            route: false,
            window,
            paused_until: 0,
            slowing_since: None,
            failing_since: None,
            down_until: 0,
            downs: 0,
        }
    }

    fn in_flight(&self, flight: Flight) -> usize {
        self.flying
            .values()
            .filter(|(_, f, _)| *f == flight)
            .count()
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.flying.is_empty()
    }
}

/// Where an entry may go now.
enum Path {
    Direct,
    Deposit,
    /// Not now.
    Hold,
}

/// The outbox queue, for recipients named by `R`.
#[derive(Debug)]
pub struct Queue<R> {
    config: Config,
    lines: BTreeMap<R, Line>,
    /// Results waiting to be handed out, before any new send.
    out: VecDeque<Action<R>>,
    /// Sends and deposits found by the last pass over the lines, not handed out yet.
    ready: VecDeque<Action<R>>,
    deposits: usize,
}

impl<R: Copy + Eq + Hash + Ord> Queue<R> {
    pub fn new(config: Config) -> Self {
        Queue {
            config,
            lines: BTreeMap::new(),
            out: VecDeque::new(),
            ready: VecDeque::new(),
            deposits: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Entries in the queue, in flight or waiting.
    pub fn len(&self) -> usize {
        self.lines
            .values()
            .map(|l| l.waiting.len() + l.flying.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `to` has a line in the queue (an entry waiting or in flight).
    pub fn has(&self, to: &R) -> bool {
        self.lines.contains_key(to)
    }

    fn line(&mut self, to: R) -> &mut Line {
        let window = self.config.window.max(1);
        self.lines.entry(to).or_insert_with(|| Line::new(window))
    }

    /// Add `entry` for `to` (a new message, or one loaded from the store). An entry with a
    /// sequence number already queued is ignored.
    pub fn insert(&mut self, to: R, entry: Entry) {
        let line = self.line(to);
        if !line.flying.contains_key(&entry.seq) {
            line.waiting.entry(entry.seq).or_insert(entry);
        }
    }

    /// Whether `to`'s node has a known route (a direct send is possible).
    pub fn set_route(&mut self, to: R, route: bool) {
        if let Some(line) = self.lines.get_mut(&to) {
            line.route = route;
        }
    }

    /// `to` was just heard from: whatever waits for it may go now, directly again.
    pub fn heard(&mut self, to: &R, now: u64) {
        if let Some(line) = self.lines.get_mut(to) {
            line.down_until = 0;
            line.downs = 0;
            line.failing_since = None;
            line.paused_until = 0;
            line.slowing_since = None;
            for e in line.waiting.values_mut() {
                e.next_attempt_at = e.next_attempt_at.min(now);
            }
        }
    }

    /// Make whatever waits for `to` due at `now` (a new message for it: the queue is tried
    /// again, in order). Unlike [`Queue::heard`], this keeps what the queue knows of the
    /// recipient's node (that it failed, or asked for a pause).
    pub fn due_now(&mut self, to: &R, now: u64) {
        if let Some(line) = self.lines.get_mut(to) {
            for e in line.waiting.values_mut() {
                e.next_attempt_at = e.next_attempt_at.min(now);
            }
        }
    }

    /// Forget everything for `to` (its entries were removed from the store). Results of
    /// what is in flight are then ignored.
    pub fn forget(&mut self, to: &R) {
        if let Some(line) = self.lines.remove(to) {
            self.deposits -= line.in_flight(Flight::Deposit);
        }
    }

    /// The next action, if any is due at `now`. Call until it gives `None`: the sends and
    /// deposits of one pass over the recipients are found together (a pass costs one look
    /// at each recipient, however many actions it yields), and each one handed out must be
    /// carried out.
    pub fn poll(&mut self, now: u64) -> Option<Action<R>> {
        if let Some(action) = self.out.pop_front() {
            return Some(action);
        }
        if self.ready.is_empty() {
            let keys: Vec<R> = self.lines.keys().copied().collect();
            for to in keys {
                while let Some(action) = self.next_for(to, now) {
                    self.ready.push_back(action);
                }
            }
        }
        self.ready.pop_front()
    }

    /// The next send or deposit for `to` at `now`.
    fn next_for(&mut self, to: R, now: u64) -> Option<Action<R>> {
        let direct_ok = self.config.direct;
        let patience = self.config.patience_ms;
        let deposits_full = self.deposits >= self.config.max_deposits;
        let line = self.lines.get_mut(&to)?;
        // Entries that rest on no host yet go in order: the first of them that is not due
        // holds back the rest.
        let mut ordered_blocked = false;
        let mut choice = None;
        for (seq, e) in &line.waiting {
            let ordered = e.hosts == 0;
            if ordered && ordered_blocked {
                continue;
            }
            if e.next_attempt_at > now {
                ordered_blocked |= ordered;
                continue;
            }
            match path(line, direct_ok, patience, now) {
                Path::Direct => {
                    if line.in_flight(Flight::Direct) < line.window {
                        choice = Some((*seq, Flight::Direct));
                    }
                    break;
                }
                Path::Deposit => {
                    if line.in_flight(Flight::Deposit) == 0 && !deposits_full {
                        choice = Some((*seq, Flight::Deposit));
                    }
                    break;
                }
                Path::Hold => break,
            }
        }
        let (seq, flight) = choice?;
        let entry = line.waiting.remove(&seq)?;
        line.flying.insert(seq, (entry, flight, now));
        Some(match flight {
            Flight::Direct => Action::Send { to, seq },
            Flight::Deposit => {
                self.deposits += 1;
                Action::Deposit { to, seq }
            }
        })
    }

    /// When to poll again (ms, after `now`) if no result comes first: the earliest time
    /// after `now` at which an entry falls due or a pause ends. What is blocked only by
    /// results in flight needs no wake: its result is an input.
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        let patience = self.config.patience_ms;
        self.lines
            .values()
            .filter(|line| !line.waiting.is_empty())
            .filter_map(|line| {
                let out_of_patience = line
                    .slowing_since
                    .map(|since| since.saturating_add(patience).saturating_add(1));
                line.waiting
                    .values()
                    .map(|e| e.next_attempt_at)
                    .chain([line.paused_until, line.down_until])
                    .chain(out_of_patience)
                    .filter(|t| *t > now)
                    .min()
            })
            .min()
    }

    /// What came of [`Action::Send`] for `to`'s entry `seq`.
    pub fn direct_result(&mut self, to: R, seq: u64, outcome: DirectOutcome, now: u64) {
        let max_window = self.config.window.max(1);
        let Some(line) = self.lines.get_mut(&to) else {
            return;
        };
        let Some((entry, _, sent_at)) = line.flying.remove(&seq) else {
            return;
        };
        match outcome {
            DirectOutcome::Delivered => {
                line.window = (line.window + 1).min(max_window);
                line.slowing_since = None;
                line.failing_since = None;
                line.downs = 0;
                self.out.push_back(Action::Delivered { to, seq });
            }
            DirectOutcome::SlowDown { retry_after_ms } => {
                // It answered: it is there, only busy.
                line.failing_since = None;
                line.downs = 0;
                // Halve once per pause, not once per refused envelope of a window.
                if line.paused_until <= now {
                    line.window = (line.window / 2).max(1);
                }
                line.paused_until = line.paused_until.max(now.saturating_add(retry_after_ms));
                line.slowing_since.get_or_insert(now);
                line.waiting.insert(seq, entry);
            }
            DirectOutcome::Unreachable => {
                // Not an answer: patience counts only pauses the recipient asked for.
                line.slowing_since = None;
                match line.failing_since {
                    // A first failure: try again directly in a moment.
                    None => {
                        line.failing_since = Some(now);
                        line.paused_until = line.paused_until.max(now + RETRY_DIRECT_MS);
                    }
                    // Sent before the failures began: the same failure (a window of
                    // envelopes fails together when a connection drops).
                    Some(since) if sent_at <= since => {}
                    // The retry failed too: the recipient is unreachable for now.
                    Some(_) => {
                        line.failing_since = Some(now);
                        line.downs = line.downs.saturating_add(1);
                        line.down_until = line.down_until.max(next_attempt(line.downs, now, 0.5));
                    }
                }
                line.waiting.insert(seq, entry);
            }
        }
        self.drop_if_empty(&to);
    }

    /// What came of [`Action::Deposit`] for `to`'s entry `seq`: `hosts` hosts hold it now
    /// (those that held it before included). `jitter` in [0, 1) spreads the retry.
    pub fn deposit_result(&mut self, to: R, seq: u64, hosts: usize, now: u64, jitter: f64) {
        let replicas = self.config.replicas.max(1);
        let max_retries = self.config.max_host_retries;
        let Some(line) = self.lines.get_mut(&to) else {
            return;
        };
        let Some((mut entry, _, _)) = line.flying.remove(&seq) else {
            return;
        };
        self.deposits -= 1;
        if hosts == 0 {
            entry.failures = entry.failures.saturating_add(1);
            entry.next_attempt_at = next_attempt(entry.failures, now, jitter);
            line.waiting.insert(seq, entry.clone());
            self.out.push_back(Action::Retry { to, entry });
        } else {
            let done = hosts >= replicas || entry.host_retries >= max_retries;
            entry.hosts = hosts;
            if !done {
                entry.host_retries = entry.host_retries.saturating_add(1);
                entry.next_attempt_at = next_attempt(entry.host_retries, now, jitter);
                line.waiting.insert(seq, entry.clone());
            }
            self.out.push_back(Action::OnHosts { to, entry, done });
        }
        self.drop_if_empty(&to);
    }

    fn drop_if_empty(&mut self, to: &R) {
        if self.lines.get(to).is_some_and(Line::is_empty) {
            self.lines.remove(to);
        }
    }

    /// The sequence numbers of `to`'s entries in flight (for tests and status).
    pub fn in_flight(&self, to: &R) -> BTreeSet<u64> {
        self.lines
            .get(to)
            .map(|l| l.flying.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Where `line`'s next due entry may go at `now`.
fn path(line: &Line, direct_ok: bool, patience_ms: u64, now: u64) -> Path {
    if !direct_ok || !line.route || line.down_until > now {
        return Path::Deposit;
    }
    if line.paused_until > now {
        let out_of_patience = line
            .slowing_since
            .is_some_and(|since| now.saturating_sub(since) > patience_ms);
        return if out_of_patience {
            Path::Deposit
        } else {
            Path::Hold
        };
    }
    Path::Direct
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: u8 = 1;
    const CAROL: u8 = 2;

    fn queue(config: Config) -> Queue<u8> {
        Queue::new(config)
    }

    /// Everything the queue wants to do at `now`, until it waits.
    fn drain(q: &mut Queue<u8>, now: u64) -> Vec<Action<u8>> {
        std::iter::from_fn(|| q.poll(now)).take(10_000).collect()
    }

    fn sends(actions: &[Action<u8>]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    fn deposits(actions: &[Action<u8>]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deposit { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    /// A queue with `n` entries for bob, whose node has a route.
    fn burst(config: Config, n: u64) -> Queue<u8> {
        let mut q = queue(config);
        for seq in 1..=n {
            q.insert(BOB, Entry::new(seq, 0));
        }
        q.set_route(BOB, true);
        q
    }

    #[test]
    fn backs_off_and_caps() {
        assert_eq!(next_attempt(1, 0, 0.5), 1_000);
        assert_eq!(next_attempt(2, 0, 0.5), 2_000);
        assert_eq!(next_attempt(4, 10, 0.5), 8_010);
        assert_eq!(next_attempt(40, 0, 0.5), MAX_RETRY_MS);
        assert_eq!(next_attempt(u32::MAX, u64::MAX, 1.0), u64::MAX);
        assert!(next_attempt(1, 0, 0.0) < next_attempt(1, 0, 0.99));
    }

    #[test]
    fn a_burst_to_an_answering_node_goes_direct_in_order_a_window_at_a_time() {
        let mut q = burst(Config::default(), 100);
        let first = drain(&mut q, 0);
        assert_eq!(sends(&first), (1..=32).collect::<Vec<_>>());
        assert!(deposits(&first).is_empty());
        // Each envelope taken frees a slot for the next, in order.
        let mut delivered = Vec::new();
        let mut next_expected = 33;
        for seq in 1..=100 {
            q.direct_result(BOB, seq, DirectOutcome::Delivered, 1);
            for a in drain(&mut q, 1) {
                match a {
                    Action::Delivered { seq, .. } => delivered.push(seq),
                    Action::Send { seq, .. } => {
                        assert_eq!(seq, next_expected);
                        next_expected += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(delivered, (1..=100).collect::<Vec<_>>());
        assert!(q.is_empty());
        assert_eq!(q.next_wake(1), None);
    }

    #[test]
    fn a_node_that_says_slow_down_is_paced_never_sent_to_mailboxes() {
        let mut q = burst(Config::default(), 40);
        assert_eq!(sends(&drain(&mut q, 0)).len(), 32);
        // The 5th is refused: wait 500 ms. The others in flight are taken.
        q.direct_result(
            BOB,
            5,
            DirectOutcome::SlowDown {
                retry_after_ms: 500,
            },
            10,
        );
        for seq in (1..=32).filter(|s| *s != 5) {
            q.direct_result(BOB, seq, DirectOutcome::Delivered, 10);
        }
        let during = drain(&mut q, 10);
        assert!(sends(&during).is_empty(), "nothing goes during the pause");
        assert!(deposits(&during).is_empty(), "nor to a mailbox");
        assert_eq!(q.next_wake(10), Some(510));
        // After the pause the refused one goes first, then the rest, within the window
        // (halved to 16, then grown by one for each of the 31 taken: back to 32).
        let after = drain(&mut q, 510);
        assert_eq!(
            sends(&after),
            [5].into_iter().chain(33..=40).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_node_that_only_ever_says_slow_down_gets_the_mailbox_after_the_patience() {
        let config = Config {
            patience_ms: 1_000,
            ..Config::default()
        };
        let mut q = burst(config, 3);
        let mut now = 0;
        let mut deposited = Vec::new();
        for _ in 0..100 {
            let actions = drain(&mut q, now);
            for seq in sends(&actions) {
                q.direct_result(
                    BOB,
                    seq,
                    DirectOutcome::SlowDown {
                        retry_after_ms: 300,
                    },
                    now,
                );
            }
            deposited.extend(deposits(&actions));
            if !deposited.is_empty() {
                break;
            }
            now = q.next_wake(now).unwrap();
        }
        assert!(now > 1_000, "not before the patience ran out (at {now})");
        assert_eq!(deposited, [1], "one deposit at a time, the first first");
    }

    /// Fail every direct send the queue makes at `now`, and those it retries after
    /// [`RETRY_DIRECT_MS`], so that the line counts as unreachable.
    fn unreachable(q: &mut Queue<u8>, now: u64) -> u64 {
        for seq in sends(&drain(q, now)) {
            q.direct_result(BOB, seq, DirectOutcome::Unreachable, now);
        }
        assert!(
            drain(q, now).is_empty(),
            "a moment's pause after a first failure"
        );
        let again = now + RETRY_DIRECT_MS;
        let retried = sends(&drain(q, again));
        assert!(!retried.is_empty(), "tried directly once more");
        for seq in retried {
            q.direct_result(BOB, seq, DirectOutcome::Unreachable, again);
        }
        again
    }

    #[test]
    fn a_dropped_connection_is_retried_directly_before_any_mailbox() {
        let mut q = burst(Config::default(), 40);
        let first = sends(&drain(&mut q, 0));
        assert_eq!(first.len(), 32);
        // The connection drops: the whole window fails, one failure.
        for seq in &first {
            q.direct_result(BOB, *seq, DirectOutcome::Unreachable, 5);
        }
        let during = drain(&mut q, 5);
        assert!(deposits(&during).is_empty() && sends(&during).is_empty());
        // A moment later it goes directly again, in order, and is taken.
        let retried = sends(&drain(&mut q, 5 + RETRY_DIRECT_MS));
        assert_eq!(retried[0], 1);
        for seq in retried {
            q.direct_result(BOB, seq, DirectOutcome::Delivered, 300);
        }
        let rest = drain(&mut q, 300);
        assert!(deposits(&rest).is_empty(), "no mailbox at all: {rest:?}");
    }

    #[test]
    fn an_unreachable_node_sends_the_line_to_mailboxes_in_order_one_at_a_time() {
        let mut q = burst(Config::default(), 5);
        let now = unreachable(&mut q, 0);
        let mut deposited = Vec::new();
        for _ in 0..10 {
            let actions = drain(&mut q, now);
            let d = deposits(&actions);
            assert!(d.len() <= 1, "one deposit in flight: {d:?}");
            assert!(sends(&actions).is_empty());
            for seq in d {
                deposited.push(seq);
                q.deposit_result(BOB, seq, 3, now, 0.5);
            }
        }
        assert_eq!(deposited, vec![1, 2, 3, 4, 5]);
        let done: Vec<bool> = drain(&mut q, now)
            .iter()
            .filter_map(|a| match a {
                Action::OnHosts { done, .. } => Some(*done),
                _ => None,
            })
            .collect();
        assert!(done.is_empty(), "each OnHosts came with its deposit");
        assert!(q.is_empty());
    }

    #[test]
    fn a_failed_deposit_holds_back_later_envelopes_but_not_those_on_hosts() {
        let mut q = queue(Config {
            direct: false,
            ..Config::default()
        });
        // 1 is on one host already (waiting to reach more, due at 5,000); 2 and 3 are new.
        q.insert(
            BOB,
            Entry {
                hosts: 1,
                host_retries: 1,
                next_attempt_at: 5_000,
                ..Entry::new(1, 0)
            },
        );
        q.insert(BOB, Entry::new(2, 0));
        q.insert(BOB, Entry::new(3, 0));
        assert_eq!(deposits(&drain(&mut q, 0)), [2]);
        q.deposit_result(BOB, 2, 0, 0, 0.5);
        let retry = drain(&mut q, 0);
        assert!(matches!(
            &retry[0],
            Action::Retry { entry, .. } if entry.seq == 2 && entry.failures == 1 && entry.next_attempt_at == 1_000
        ));
        assert!(deposits(&retry).is_empty(), "3 waits behind 2");
        assert_eq!(q.next_wake(0), Some(1_000));
        assert_eq!(deposits(&drain(&mut q, 1_000)), [2]);
        q.deposit_result(BOB, 2, 3, 1_000, 0.5);
        let _ = q.poll(1_000);
        assert_eq!(deposits(&drain(&mut q, 1_000)), [3]);
        q.deposit_result(BOB, 3, 3, 1_000, 0.5);
        let _ = q.poll(1_000);
        // 1 goes when due, for the hosts it still lacks.
        assert_eq!(q.next_wake(1_000), Some(5_000));
        assert_eq!(deposits(&drain(&mut q, 5_000)), [1]);
    }

    #[test]
    fn an_envelope_on_too_few_hosts_is_retried_then_let_go() {
        let mut q = queue(Config {
            direct: false,
            max_host_retries: 2,
            ..Config::default()
        });
        q.insert(BOB, Entry::new(1, 0));
        let mut now = 0;
        let mut results = Vec::new();
        for _ in 0..10 {
            for seq in deposits(&drain(&mut q, now)) {
                q.deposit_result(BOB, seq, 1, now, 0.5);
                if let Some(Action::OnHosts { entry, done, .. }) = q.poll(now) {
                    results.push((entry.host_retries, done));
                }
            }
            match q.next_wake(now) {
                Some(t) => now = t,
                None => break,
            }
        }
        assert_eq!(results, [(1, false), (2, false), (2, true)]);
        assert!(q.is_empty());
    }

    #[test]
    fn being_heard_from_brings_the_direct_path_back_at_once() {
        let mut q = burst(Config::default(), 2);
        let now = unreachable(&mut q, 0);
        // Deposit 1; meanwhile bob is heard from.
        assert_eq!(deposits(&drain(&mut q, now)), [1]);
        q.heard(&BOB, now + 10);
        let actions = drain(&mut q, now + 10);
        assert_eq!(
            sends(&actions),
            [2],
            "2 goes direct while 1's deposit is in flight"
        );
        q.deposit_result(BOB, 1, 3, now + 20, 0.5);
        q.direct_result(BOB, 2, DirectOutcome::Delivered, now + 20);
        let rest = drain(&mut q, now + 20);
        assert_eq!(rest.len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn lines_do_not_wait_for_each_other_and_deposits_are_capped() {
        let mut q = queue(Config {
            direct: false,
            max_deposits: 1,
            ..Config::default()
        });
        q.insert(BOB, Entry::new(1, 0));
        q.insert(CAROL, Entry::new(2, 0));
        assert_eq!(deposits(&drain(&mut q, 0)), [1]);
        q.deposit_result(BOB, 1, 3, 0, 0.5);
        assert_eq!(deposits(&drain(&mut q, 0)), [2]);
        // A forgotten line's result is ignored.
        q.forget(&CAROL);
        q.deposit_result(CAROL, 2, 3, 0, 0.5);
        assert!(q.poll(0).is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn without_a_route_or_in_mailbox_only_mode_nothing_goes_direct() {
        let mut q = queue(Config::default());
        q.insert(BOB, Entry::new(1, 0));
        assert_eq!(deposits(&drain(&mut q, 0)), [1]);
        let mut q = queue(Config {
            direct: false,
            ..Config::default()
        });
        q.insert(BOB, Entry::new(1, 0));
        q.set_route(BOB, true);
        assert_eq!(deposits(&drain(&mut q, 0)), [1]);
    }

    #[test]
    fn patience_runs_out_even_after_a_dropped_connection() {
        let config = Config {
            patience_ms: 1_000,
            ..Config::default()
        };
        let mut q = burst(config, 1);
        // One failure, then only "slow down".
        assert_eq!(sends(&drain(&mut q, 0)), [1]);
        q.direct_result(BOB, 1, DirectOutcome::Unreachable, 0);
        let mut now = RETRY_DIRECT_MS;
        let mut deposited = Vec::new();
        for _ in 0..100 {
            let actions = drain(&mut q, now);
            for seq in sends(&actions) {
                q.direct_result(
                    BOB,
                    seq,
                    DirectOutcome::SlowDown {
                        retry_after_ms: 300,
                    },
                    now,
                );
            }
            deposited.extend(deposits(&actions));
            if !deposited.is_empty() {
                break;
            }
            now = q.next_wake(now).unwrap();
        }
        assert_eq!(
            deposited,
            [1],
            "to the mailbox once patience ran out (at {now})"
        );
        assert!(now > 1_000);
    }

    #[test]
    fn a_new_message_does_not_count_as_hearing_from_the_recipient() {
        let mut q = burst(Config::default(), 1);
        let now = unreachable(&mut q, 0);
        // Down: the entry goes to the mailbox; a new message makes the queue due but
        // does not bring the direct path back.
        assert_eq!(deposits(&drain(&mut q, now)), [1]);
        q.insert(BOB, Entry::new(2, now));
        q.due_now(&BOB, now);
        let actions = drain(&mut q, now);
        assert!(sends(&actions).is_empty(), "{actions:?}");
    }
}
