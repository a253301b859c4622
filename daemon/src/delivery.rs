//! The outbox worker: the shell around [`sotto_protocol::outbox::Queue`]. It loads the
//! outbox from the store at start, feeds the queue what the service queued and whom it
//! heard from, turns the queue's actions into direct sends and mailbox deposits (many at
//! once) and store writes, and feeds their results back. Store writes of one turn of the
//! loop go in one flushed transaction.
//!
//! Each send and deposit runs as a task of its own, not as a future the worker polls
//! between its own awaits: a deposit at this node's own host takes the store's locks
//! (the host's, the flush's), and a future that holds one while the worker awaits the
//! same lock in its store write would never be polled again — every flush of the node
//! would wait for ever.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use libp2p::{Multiaddr, PeerId};
use serde_json::Value;
use sotto_protocol::identity::AccountKey;
use sotto_protocol::outbox::{self, Action, DirectOutcome, Queue};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::unix_ms;
use crate::mailbox::{self, deposit::HostCache};
use crate::net::{Envelopes, Frame, Protocol};
use crate::service::{Service, Signal};
use crate::store::{self, Batch, Seq, State, StoreError};

/// The longest the worker sleeps without looking at the queue.
const IDLE: Duration = Duration::from_secs(30);
/// How long the worker waits after a store failure (a full disk, say) before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What came back from the network for one entry.
enum Outcome {
    Direct(AccountKey, Seq, DirectOutcome),
    Deposit(AccountKey, Seq, Result<Vec<Vec<u8>>, mailbox::Error>),
}

/// The worker's state.
struct Worker {
    service: Service,
    mailbox: mailbox::Client,
    queue: Queue<AccountKey>,
    /// Where each recipient with entries can be reached directly, if it can.
    routes: HashMap<AccountKey, (PeerId, Vec<Multiaddr>)>,
    /// Recipients by their node's PeerId, to hear of them when that node connects.
    by_peer: HashMap<PeerId, AccountKey>,
    hosts: HostCache,
    /// Sends and deposits under way, each a task (aborted if the worker stops).
    flying: JoinSet<Outcome>,
    /// What each of those tasks is for (recipient, entry, direct or not), to answer for
    /// one that panicked.
    running: HashMap<tokio::task::Id, (AccountKey, Seq, bool)>,
    /// The hosts that hold a deposited entry, until the queue says what to do with it.
    pending_hosts: HashMap<Seq, Vec<Vec<u8>>>,
    /// Store changes the queue asked for that are not written yet (the last write failed):
    /// written with the next turn's. Each is safe to write twice.
    unwritten: Vec<Change>,
}

/// A change to the store that one of the queue's actions asks for.
enum Change {
    Delivered(Seq),
    /// On hosts; whether it is done; the hosts that hold it, if a deposit just said.
    OnHosts(Seq, outbox::Entry, bool, Option<Vec<Vec<u8>>>),
    Retry(Seq, outbox::Entry),
}

/// Run the outbox worker until `shutdown` turns true: `signals` come from the service,
/// `connected` names peers this node just connected to. A fetch round is woken when the
/// node was without connections (it is back) or a contact's node connects; not by every
/// connection (relays and hosts connect all the time, and each round costs paths).
pub async fn run(
    mailbox: mailbox::Client,
    mut signals: mpsc::Receiver<Signal>,
    mut connected: mpsc::Receiver<crate::net::Connected>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = mailbox.service().clone();
    let config = outbox::Config {
        direct: !service.mailbox_config().mailbox_only,
        replicas: service.mailbox_config().replicas,
        ..outbox::Config::default()
    };
    let mut worker = Worker {
        service,
        mailbox,
        queue: Queue::new(config),
        routes: HashMap::new(),
        by_peer: HashMap::new(),
        hosts: HostCache::default(),
        flying: JoinSet::new(),
        running: HashMap::new(),
        pending_hosts: HashMap::new(),
        unwritten: Vec::new(),
    };
    if let Err(e) = worker.load() {
        tracing::error!("outbox: cannot load the outbox: {e}");
    }
    loop {
        let wait = match worker.turn().await {
            // Wake for what falls due after the moment the queue was polled at (not after
            // now: the turn's store write took time, and what fell due meanwhile is due).
            Ok(polled_at) => worker
                .queue
                .next_wake(polled_at)
                .map_or(IDLE, |t| Duration::from_millis(t.saturating_sub(unix_ms())))
                .min(IDLE),
            Err(e) => {
                tracing::warn!("outbox: {e}");
                STORE_RETRY
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
            Some(signal) = signals.recv() => worker.on_signal(signal),
            Some(c) = connected.recv() => {
                let contact = worker.by_peer.get(&c.peer).copied();
                if c.was_alone || contact.is_some() {
                    worker.service.fetch_wake().notify_one();
                }
                if let Some(key) = contact {
                    worker.queue.heard(&key, unix_ms());
                }
            }
            Some(done) = worker.flying.join_next_with_id(), if !worker.flying.is_empty() => {
                worker.finished(done);
            }
        }
        // Take in whatever else is ready before the next turn, so that one turn's store
        // writes cover as many results as possible.
        while let Some(done) = worker.flying.try_join_next_with_id() {
            worker.finished(done);
        }
        while let Ok(signal) = signals.try_recv() {
            worker.on_signal(signal);
        }
    }
}

/// The queue's view of a stored entry.
fn queued(e: &store::OutboxEntry) -> outbox::Entry {
    outbox::Entry {
        seq: e.seq.0,
        failures: e.failures,
        next_attempt_at: e.next_attempt_at,
        hosts: e.hosts.len(),
        host_retries: e.host_retries,
    }
}

impl Worker {
    /// Carry out what the queue wants done now: start sends and deposits, and write what
    /// came of earlier ones to the store (one transaction, flushed). Returns the moment the
    /// queue was polled at.
    async fn turn(&mut self) -> Result<u64, StoreError> {
        let now = unix_ms();
        while let Some(action) = self.queue.poll(now) {
            tracing::trace!("outbox: {action:?}");
            match action {
                Action::Send { to, seq } => self.send(to, Seq(seq)),
                Action::Deposit { to, seq } => self.deposit(to, Seq(seq)),
                Action::Delivered { seq, .. } => self.unwritten.push(Change::Delivered(Seq(seq))),
                Action::OnHosts { entry, done, .. } => {
                    let hosts = self.pending_hosts.remove(&Seq(entry.seq));
                    self.unwritten
                        .push(Change::OnHosts(Seq(entry.seq), entry, done, hosts))
                }
                Action::Retry { entry, .. } => {
                    self.unwritten.push(Change::Retry(Seq(entry.seq), entry))
                }
            }
        }
        if !self.unwritten.is_empty() {
            self.write().await?;
        }
        Ok(now)
    }

    /// Write the changes the queue asked for; they stay to be written again if this fails.
    async fn write(&mut self) -> Result<(), StoreError> {
        let service = &self.service;
        let store = service.store();
        let order = service.events().order().await;
        let mut batch = Batch::new();
        let mut events: Vec<Value> = Vec::new();
        for change in &self.unwritten {
            match change {
                Change::Delivered(seq) => {
                    batch.remove_outbox(*seq);
                    events.extend(service.stage_message_state(
                        &mut batch,
                        *seq,
                        State::Delivered,
                    )?);
                }
                Change::OnHosts(seq, entry, done, hosts) => {
                    events.extend(service.stage_message_state(&mut batch, *seq, State::OnHosts)?);
                    if *done {
                        batch.remove_outbox(*seq);
                    } else if let Some(mut stored) = store.outbox_entry(*seq)? {
                        if let Some(hosts) = hosts {
                            stored.hosts = hosts.clone();
                        }
                        stored.host_retries = entry.host_retries;
                        stored.next_attempt_at = entry.next_attempt_at;
                        batch.put_outbox(&stored)?;
                    }
                }
                Change::Retry(seq, entry) => {
                    tracing::debug!("message {seq:?} not delivered (attempt {})", entry.failures);
                    if let Some(mut stored) = store.outbox_entry(*seq)? {
                        stored.failures = entry.failures;
                        stored.next_attempt_at = entry.next_attempt_at;
                        batch.put_outbox(&stored)?;
                    }
                }
            }
        }
        store.commit(batch).await?;
        service.events().publish(events);
        drop(order);
        self.unwritten.clear();
        Ok(())
    }

    /// Start sending the entry `seq` straight to `to`'s node. Whatever happens, an outcome
    /// comes back for it.
    fn send(&mut self, to: AccountKey, seq: Seq) {
        let store = self.service.store().clone();
        let route = self.routes.get(&to).cloned();
        let net = self.service.network().clone();
        self.start(
            to,
            seq,
            true,
            async move {
                let outcome = match (store.outbox_entry(seq), route) {
                    (Ok(Some(entry)), Some((peer, addrs))) => {
                        match net.send(peer, addrs, Frame::Bytes(entry.envelope)).await {
                            Ok(answer) if answer.is_delivered() => DirectOutcome::Delivered,
                            Ok(answer) => match Envelopes::slow_down(&answer) {
                                Some(pause) => DirectOutcome::SlowDown {
                                    retry_after_ms: pause.as_millis() as u64,
                                },
                                None => {
                                    tracing::debug!("direct delivery refused: {answer:?}");
                                    DirectOutcome::Unreachable
                                }
                            },
                            Err(e) => {
                                tracing::debug!("direct delivery failed: {e}");
                                DirectOutcome::Unreachable
                            }
                        }
                    }
                    (entry, route) => {
                        tracing::debug!(
                            "direct delivery of {seq:?} impossible: entry {}, route {}",
                            match entry {
                                Ok(Some(_)) => "found".to_owned(),
                                Ok(None) => "gone".to_owned(),
                                Err(e) => e.to_string(),
                            },
                            route.is_some()
                        );
                        DirectOutcome::Unreachable
                    }
                };
                tracing::trace!("direct delivery of {seq:?}: {outcome:?}");
                Outcome::Direct(to, seq, outcome)
            }
            .boxed(),
        );
    }

    /// Start depositing the entry `seq` at the mailbox hosts that do not hold it yet.
    /// Whatever happens, an outcome comes back for it.
    fn deposit(&mut self, to: AccountKey, seq: Seq) {
        let client = self.mailbox.clone();
        let hosts = self.hosts.clone();
        self.start(
            to,
            seq,
            false,
            async move {
                let result = match client.service().store().outbox_entry(seq) {
                    Ok(Some(entry)) => client.deposit_entry(&entry, &hosts).await,
                    Ok(None) => Ok(Vec::new()),
                    Err(e) => Err(e.into()),
                };
                Outcome::Deposit(to, seq, result)
            }
            .boxed(),
        );
    }

    /// Queue everything the store holds.
    fn load(&mut self) -> Result<(), StoreError> {
        for e in self.service.store().outbox()? {
            self.insert(&e)?;
        }
        Ok(())
    }

    fn insert(&mut self, e: &store::OutboxEntry) -> Result<(), StoreError> {
        let new_line = !self.queue.has(&e.to);
        self.queue.insert(e.to, queued(e));
        if new_line {
            self.refresh_route(e.to)?;
        }
        Ok(())
    }

    /// Look up where `key`'s node is: from its last presence, else from its card.
    fn refresh_route(&mut self, key: AccountKey) -> Result<(), StoreError> {
        let route = match self.service.store().contact(&key)? {
            Some(contact) => contact.node(),
            None => None,
        };
        if let Some((old, _)) = self.routes.remove(&key) {
            self.by_peer.remove(&old);
        }
        self.queue.set_route(key, route.is_some());
        if let Some((peer, addrs)) = route {
            self.by_peer.insert(peer, key);
            self.routes.insert(key, (peer, addrs));
        }
        Ok(())
    }

    fn on_signal(&mut self, signal: Signal) {
        let now = unix_ms();
        let result = match signal {
            Signal::Queued(seq) => match self.service.store().outbox_entry(seq) {
                Ok(Some(e)) => {
                    let to = e.to;
                    // A new message tries the whole queue for its contact again, in order
                    // (but is no evidence that the contact's node is there).
                    self.queue.due_now(&to, now);
                    self.insert(&e)
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Signal::Heard(key) => {
                self.queue.heard(&key, now);
                if self.queue.has(&key) {
                    self.refresh_route(key)
                } else {
                    Ok(())
                }
            }
            Signal::Forgotten(key) => {
                self.queue.forget(&key);
                if let Some((peer, _)) = self.routes.remove(&key) {
                    self.by_peer.remove(&peer);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!("outbox: {e}");
        }
    }

    /// Run `attempt` (a direct send if `direct`, else a deposit of `seq` for `to`) as a
    /// task of its own.
    fn start(
        &mut self,
        to: AccountKey,
        seq: Seq,
        direct: bool,
        attempt: BoxFuture<'static, Outcome>,
    ) {
        let task = self.flying.spawn(attempt);
        self.running.insert(task.id(), (to, seq, direct));
    }

    /// Take the outcome of a finished task; one that panicked counts as a failed attempt.
    fn finished(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let outcome = match done {
            Ok((id, outcome)) => {
                self.running.remove(&id);
                outcome
            }
            Err(e) => {
                let Some((to, seq, direct)) = self.running.remove(&e.id()) else {
                    return;
                };
                tracing::error!("outbox: the attempt for {seq:?} failed: {e}");
                if direct {
                    Outcome::Direct(to, seq, DirectOutcome::Unreachable)
                } else {
                    Outcome::Deposit(to, seq, Ok(Vec::new()))
                }
            }
        };
        self.on_outcome(outcome);
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let now = unix_ms();
        match outcome {
            Outcome::Direct(to, seq, result) => self.queue.direct_result(to, seq.0, result, now),
            Outcome::Deposit(to, seq, result) => {
                let hosts = match result {
                    Ok(hosts) => hosts,
                    Err(e) => {
                        tracing::debug!("message {seq:?} not deposited: {e}");
                        Vec::new()
                    }
                };
                // The store keeps which hosts hold it; the queue, how many.
                if !hosts.is_empty() && self.queue.has(&to) {
                    self.pending_hosts.insert(seq, hosts.clone());
                }
                self.queue
                    .deposit_result(to, seq.0, hosts.len(), now, rand::random::<f64>());
            }
        }
    }
}
