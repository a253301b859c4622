//! The outbox worker: sends queued envelopes to their recipients' nodes until each is
//! acknowledged, backing off between attempts (see `sotto_protocol::outbox`), in order per
//! contact, and across restarts (the outbox lives in the store).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use libp2p::{Multiaddr, PeerId};
use sotto_protocol::card::Card;
use sotto_protocol::identity::AccountKey;
use sotto_protocol::outbox;
use sotto_protocol::wire;
use tokio::sync::watch;

use crate::mailbox;
use crate::network::Frame;
use crate::service::{now_ms, Error, Service};
use crate::store::{self, Batch, State, Tree};

/// Contacts whose queues are being worked on at once, at most.
pub const MAX_PARALLEL_CONTACTS: usize = 32;
/// The longest the worker sleeps without looking at the outbox.
const IDLE_MS: u64 = 30_000;

/// Run the outbox worker until `shutdown` turns true.
pub async fn run(service: Service, mut shutdown: watch::Receiver<bool>) {
    let busy: Arc<Mutex<HashSet<AccountKey>>> = Arc::default();
    loop {
        let next = match round(&service, &busy) {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!("outbox: {e}");
                now_ms() + 5_000
            }
        };
        let wait = std::time::Duration::from_millis(next.saturating_sub(now_ms()).min(IDLE_MS));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = service.outbox_wake().notified() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Start a worker for every contact with a due entry; return when to look again.
fn round(service: &Service, busy: &Arc<Mutex<HashSet<AccountKey>>>) -> Result<u64, Error> {
    let now = now_ms();
    let mut next = now + IDLE_MS;
    let mut due: BTreeMap<AccountKey, ()> = BTreeMap::new();
    // Per contact, entries not yet on any host go in order: only the first of them counts.
    let mut waiting: HashSet<AccountKey> = HashSet::new();
    for (_, e) in service
        .store()
        .scan::<store::OutboxEntry>(Tree::Outbox, "outbox entry")?
    {
        if e.hosts.is_empty() && !waiting.insert(e.to) {
            continue;
        }
        if e.next_attempt_at <= now {
            due.insert(e.to, ());
        } else {
            next = next.min(e.next_attempt_at);
        }
    }
    let mut busy_set = busy
        .lock()
        .map_err(|_| Error::Internal("outbox lock poisoned".into()))?;
    for key in due.into_keys() {
        if busy_set.len() >= MAX_PARALLEL_CONTACTS {
            next = now + 200;
            break;
        }
        if !busy_set.insert(key) {
            continue;
        }
        let service = service.clone();
        let guard = BusyGuard {
            busy: busy.clone(),
            key,
            service: service.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = drain_contact(&service, key).await {
                tracing::warn!("outbox: {e}");
                // Whatever failed (a full disk, say) will not be fixed at once: keep this
                // contact's queue out of the next rounds for a moment rather than spin.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            drop(guard);
        });
    }
    Ok(next)
}

/// Attempts to reach the remaining hosts once an envelope is on at least one.
const MAX_HOST_RETRIES: u32 = 4;

/// Frees a contact's queue for the next round when its worker ends, however it ends.
struct BusyGuard {
    busy: Arc<Mutex<HashSet<AccountKey>>>,
    key: AccountKey,
    service: Service,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&self.key);
        }
        self.service.outbox_wake().notify_one();
    }
}

/// Where a contact's node can be reached: from its last presence, else from its card.
fn route(service: &Service, key: &AccountKey) -> Result<Option<(PeerId, Vec<Multiaddr>)>, Error> {
    let Some(contact) = service
        .store()
        .get::<store::Contact>(Tree::Contacts, &key.0, "contact")?
    else {
        return Ok(None);
    };
    if let Some((peer, addrs)) = &contact.route {
        if let Ok(peer) = PeerId::from_bytes(peer) {
            return Ok(Some((
                peer,
                addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            )));
        }
    }
    let card = Card::from_bytes(&contact.card)?;
    let hints = &card.body().hints;
    let Some(peer) = hints
        .peer_id
        .as_deref()
        .and_then(|p| PeerId::from_bytes(p).ok())
    else {
        return Ok(None);
    };
    let addrs = hints.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    Ok(Some((peer, addrs)))
}

/// Send a contact's due entries in order, stopping at the first failure.
async fn drain_contact(service: &Service, key: AccountKey) -> Result<(), Error> {
    let entries: Vec<store::OutboxEntry> = service
        .store()
        .scan::<store::OutboxEntry>(Tree::Outbox, "outbox entry")?
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.to == key)
        .collect();
    let direct = if service.mailbox_config().mailbox_only {
        None
    } else {
        route(service, &key)?
    };
    let mut direct_failed = false;
    let mut hosts = mailbox::HostCache::new();
    let mut hold_until: Option<u64> = None;
    for mut entry in entries {
        if let Some(until) = hold_until {
            // An earlier message failed: later ones wait until it is tried again, so that
            // they cannot overtake it.
            if entry.hosts.is_empty() && entry.next_attempt_at < until {
                entry.next_attempt_at = until;
                let mut batch = Batch::new();
                batch.put(Tree::Outbox, entry.seq.to_be_bytes().to_vec(), &entry)?;
                service.store().apply(&batch)?;
            }
            continue;
        }
        if entry.next_attempt_at > now_ms() {
            if entry.hosts.is_empty() {
                // Not due yet, and nothing after it may go first.
                break;
            }
            continue;
        }
        // Direct first (also for an envelope already on some mailbox hosts: whichever copy
        // arrives second is a duplicate), unless the contact's node did not answer a moment
        // ago.
        let throttled = direct
            .as_ref()
            .is_some_and(|(p, _)| service.is_throttled(p));
        if let (Some((peer, addrs)), false, false) = (&direct, direct_failed, throttled) {
            let request = Frame::Bytes(entry.envelope.clone());
            match service.network().send(*peer, addrs.clone(), request).await {
                Ok(response) if response.is_delivered() => {
                    delivered(service, entry).await?;
                    continue;
                }
                Ok(response) => {
                    match response {
                        wire::Response::Refused(wire::Refusal::RateLimited) => {
                            service.throttle(peer, false)
                        }
                        wire::Response::Refused(wire::Refusal::Busy) => {
                            service.throttle(peer, true)
                        }
                        _ => {}
                    }
                    tracing::debug!("direct delivery refused: {response:?}")
                }
                Err(e) => tracing::debug!("direct delivery failed: {e}"),
            }
            direct_failed = true;
        }
        match mailbox::deposit_entry(service, service.host(), &entry, &mut hosts).await {
            Ok(hosts) if !hosts.is_empty() => on_hosts(service, entry, hosts).await?,
            Ok(_) => {
                hold_until = Some(reschedule(service, entry, "no mailbox host took it").await?)
            }
            Err(e) => hold_until = Some(reschedule(service, entry, &e.to_string()).await?),
        }
    }
    Ok(())
}

/// An envelope is on `hosts`: the message is `on_hosts`; the entry stays in the outbox
/// (to reach the remaining hosts) until enough hosts hold it or it was tried enough.
async fn on_hosts(
    service: &Service,
    mut entry: store::OutboxEntry,
    hosts: Vec<Vec<u8>>,
) -> Result<(), Error> {
    let _order = service.events().order().await;
    let seq_key = entry.seq.to_be_bytes().to_vec();
    let mut batch = Batch::new();
    let events = service.stage_message_state(&mut batch, &seq_key, State::OnHosts)?;
    if hosts.len() >= service.mailbox_config().replicas || entry.host_retries >= MAX_HOST_RETRIES {
        batch.remove(Tree::Outbox, seq_key);
    } else {
        entry.hosts = hosts;
        entry.host_retries = entry.host_retries.saturating_add(1);
        entry.next_attempt_at =
            outbox::next_attempt(entry.host_retries, now_ms(), rand::random::<f64>());
        batch.put(Tree::Outbox, seq_key, &entry)?;
    }
    service.store().commit(batch).await?;
    service.events().publish(events);
    Ok(())
}

async fn delivered(service: &Service, entry: store::OutboxEntry) -> Result<(), Error> {
    let _order = service.events().order().await;
    let seq_key = entry.seq.to_be_bytes().to_vec();
    let mut batch = Batch::new();
    batch.remove(Tree::Outbox, seq_key.clone());
    let events = service.stage_message_state(&mut batch, &seq_key, State::Delivered)?;
    service.store().commit(batch).await?;
    service.events().publish(events);
    tracing::debug!("delivered message {}", entry.message);
    Ok(())
}

async fn reschedule(
    service: &Service,
    mut entry: store::OutboxEntry,
    why: &str,
) -> Result<u64, Error> {
    entry.failures = entry.failures.saturating_add(1);
    entry.next_attempt_at = outbox::next_attempt(entry.failures, now_ms(), rand::random::<f64>());
    tracing::debug!(
        "message {} not delivered (attempt {}): {why}",
        entry.message,
        entry.failures
    );
    let mut batch = Batch::new();
    batch.put(Tree::Outbox, entry.seq.to_be_bytes().to_vec(), &entry)?;
    service.store().apply(&batch)?;
    Ok(entry.next_attempt_at)
}
