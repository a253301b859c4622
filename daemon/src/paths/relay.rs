//! This node as a relay of others' private paths: it peels its layer off each cell that
//! arrives, and either passes the rest on to the next hop and wraps the reply that comes
//! back, or — as the exit — has the work inside done and answers it.
//!
//! A relay refuses a layer that does not open, one made more than [`MAX_SKEW_SECS`] before
//! or after its clock, and one it peeled before (it keeps each layer's replay tag for that
//! long, at most [`MAX_REPLAY_TAGS`] of them); it carries at most [`MAX_IN_FLIGHT`] cells
//! at once. The exit's work is not the relay's business: it is handed to an [`ExitWork`]
//! (the node's mailbox client).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use sotto_protocol::exit::{Exit, ExitAnswer, ExitRefusal, ExitRequest, FromExit, Step};
use sotto_protocol::onion::{self, Answer, Cell, Peeled, Refusal, RelayKey};
use tokio::sync::Semaphore;

use super::{add, Counters};
use crate::clock::unix_ms;
use crate::link::{ExitSeen, MailboxKind, Observer, RelayEvent, RelayStep, Tamper};
use crate::net::{Handle, Inbound, Onion};

/// How far a layer's time may be from the relay's clock.
pub const MAX_SKEW_SECS: u32 = 600;
/// Replay tags kept at most; beyond, new cells are refused `Busy` until old tags expire.
pub const MAX_REPLAY_TAGS: usize = 200_000;
/// Cells carried at once, at most; beyond, `Busy`.
pub const MAX_IN_FLIGHT: usize = 256;

/// The exit's work: a request that came out of a path, from the hop before (its PeerId and
/// address), to its answer.
pub type ExitWork = Arc<
    dyn Fn(
            PeerId,
            Option<IpAddr>,
            ExitRequest,
        ) -> BoxFuture<'static, Result<ExitAnswer, ExitRefusal>>
        + Send
        + Sync,
>;

/// The replay tags of the layers peeled lately, each with the second it may be forgotten.
#[derive(Default)]
struct Replays {
    seen: HashMap<[u8; 32], u32>,
    order: VecDeque<([u8; 32], u32)>,
}

impl Replays {
    /// Note `tag`, kept until `until`; false if it was seen (or there is no room).
    fn note(&mut self, tag: [u8; 32], until: u32, now: u32) -> Result<(), Refusal> {
        while let Some((old, t)) = self.order.front().copied() {
            if t > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&t) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&tag) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= MAX_REPLAY_TAGS {
            return Err(Refusal::Busy);
        }
        self.seen.insert(tag, until);
        // Tags come in roughly in time order; one from the future sits behind later ones
        // and is forgotten no earlier than it should be.
        self.order.push_back((tag, until));
        Ok(())
    }
}

/// This node as a relay. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    key: RelayKey,
    me: PeerId,
    net: Handle,
    work: ExitWork,
    exit: Mutex<Exit>,
    replays: Mutex<Replays>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    observer: Option<Arc<dyn Observer>>,
    tamper: Option<Tamper>,
}

/// A cell being answered, as the observer is told of it.
struct Seen {
    at_ms: u64,
    from: PeerId,
    hop: Option<usize>,
}

impl Relay {
    /// A relay with the onion key `key` (the node's identity key in X25519 form).
    pub fn new(key: RelayKey, net: Handle, work: ExitWork, counters: Arc<Counters>) -> Self {
        Relay {
            inner: Arc::new(Inner {
                key,
                me: net.peer_id(),
                net,
                work,
                exit: Mutex::new(Exit::new()),
                replays: Mutex::new(Replays::default()),
                permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                counters,
                observer: None,
                tamper: None,
            }),
        }
    }

    /// Tell `observer` of every cell this relay peels (the simulator's colluders pool
    /// what their relays saw; see [`crate::link`]). Call before the relay is cloned.
    pub fn with_observer(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.observer = observer;
        }
        self
    }

    /// Have `tamper` change every cell this relay passes on (a test's hostile relay).
    pub fn with_tamper(mut self, tamper: Option<Tamper>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tamper = tamper;
        }
        self
    }

    fn observe(&self, seen: &Seen, step: RelayStep) {
        if let Some(observer) = &self.inner.observer {
            observer.relay_event(RelayEvent {
                at_ms: seen.at_ms,
                relay: self.inner.me.to_bytes(),
                prev: seen.from.to_bytes(),
                hop: seen.hop,
                step,
            });
        }
    }

    /// Take a cell that arrived: answer it on a task of its own (a relay waits for the next
    /// hop), or `Busy` at once when too many are under way.
    pub fn serve(&self, inbound: Inbound<Onion>) {
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            add(&self.inner.counters.refused);
            let _ = inbound.reply.send(Answer::Refused(Refusal::Busy));
            return;
        };
        let relay = self.clone();
        tokio::spawn(async move {
            let answer = relay
                .answer(inbound.peer, inbound.source, &inbound.request)
                .await;
            if matches!(answer, Answer::Refused(_)) {
                add(&relay.inner.counters.refused);
            }
            let _ = inbound.reply.send(answer);
            drop(permit);
        });
    }

    /// The answer to `cell` from `from`.
    pub async fn answer(&self, from: PeerId, source: Option<IpAddr>, cell: &Cell) -> Answer {
        let inner = &self.inner;
        let layer = match onion::peel(&inner.key, cell, &mut rand::thread_rng()) {
            Ok(layer) => layer,
            Err(onion::OnionError::Unopenable) => return Answer::Refused(Refusal::Unopenable),
            Err(e) => {
                tracing::debug!("a cell from {from} does not peel: {e}");
                return Answer::Refused(Refusal::Malformed);
            }
        };
        let now = u32::try_from(unix_ms() / 1000).unwrap_or(u32::MAX);
        if layer.created_at.abs_diff(now) > MAX_SKEW_SECS {
            return Answer::Refused(Refusal::Stale);
        }
        let until = layer.created_at.saturating_add(2 * MAX_SKEW_SECS);
        let noted = inner
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(layer.replay_tag, until, now);
        if let Err(refusal) = noted {
            tracing::debug!("refused a cell from {from}: {refusal}");
            return Answer::Refused(refusal);
        }
        let seen = Seen {
            at_ms: unix_ms(),
            from,
            hop: cell.hop_index(),
        };
        match &layer.peeled {
            Peeled::Forward { next, addr, cell } => {
                let Ok(next) = PeerId::from_bytes(next) else {
                    return Answer::Refused(Refusal::Malformed);
                };
                if next == inner.me || next == from {
                    return Answer::Refused(Refusal::Malformed);
                }
                let addrs: Vec<Multiaddr> = Multiaddr::try_from(addr.clone()).into_iter().collect();
                add(&inner.counters.relayed);
                tracing::debug!(target: "sotto_daemon::requests", "onion cell from {from} to {next}");
                self.observe(
                    &seen,
                    RelayStep::Forward {
                        next: next.to_bytes(),
                    },
                );
                let tampered = inner.tamper.as_ref().and_then(|tamper| {
                    let mut bytes = cell.to_bytes();
                    tamper(&mut bytes);
                    Cell::from_bytes(&bytes).ok()
                });
                let cell = tampered.as_ref().unwrap_or(cell);
                match inner.net.onion(next, addrs, cell).await {
                    Ok(Answer::Reply(reply)) => match onion::wrap_reply(&layer, &reply) {
                        Ok(wrapped) => Answer::Reply(wrapped),
                        Err(_) => Answer::Refused(Refusal::Internal),
                    },
                    Ok(Answer::Refused(r)) => {
                        tracing::debug!("the next hop {next} refused a cell: {r}");
                        Answer::Refused(Refusal::NextHopFailed)
                    }
                    Err(e) => {
                        tracing::debug!("the next hop {next} failed: {e}");
                        Answer::Refused(Refusal::NextHopFailed)
                    }
                }
            }
            Peeled::Exit { request } => {
                add(&inner.counters.exited);
                tracing::debug!(target: "sotto_daemon::requests", "onion cell from {from} at its exit");
                let from_exit = self.exit(&seen, source, request).await;
                let bytes = match from_exit.to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("an exit answer does not fit a cell: {e}");
                        return Answer::Refused(Refusal::Internal);
                    }
                };
                match onion::exit_reply(&layer, &bytes) {
                    Ok(reply) => Answer::Reply(reply),
                    Err(_) => Answer::Refused(Refusal::Internal),
                }
            }
        }
    }

    /// The exit's side of a cell's content.
    async fn exit(&self, seen: &Seen, source: Option<IpAddr>, content: &[u8]) -> FromExit {
        let step = self
            .inner
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .receive(unix_ms(), content);
        match step {
            Step::Reply(from_exit) => {
                self.observe(seen, RelayStep::Exit { request: None });
                from_exit
            }
            Step::Run { stream, request } => {
                if self.inner.observer.is_some() {
                    let request = Some(exit_seen(&request));
                    self.observe(seen, RelayStep::Exit { request });
                }
                match (self.inner.work)(seen.from, source, request).await {
                    Ok(answer) => self
                        .inner
                        .exit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .answered(unix_ms(), stream, answer),
                    Err(refusal) => FromExit::Refused(refusal),
                }
            }
        }
    }
}

/// What an exit reads in `request`, for the observer.
fn exit_seen(request: &ExitRequest) -> ExitSeen {
    use sotto_protocol::mailbox::Request;
    match request {
        ExitRequest::Hosts { address } => ExitSeen::Hosts { address: address.0 },
        ExitRequest::Mailbox { host, request, .. } => {
            let (kind, address) = match request {
                Request::Deposit(d) => (MailboxKind::Deposit, d.address.0),
                Request::Fetch(f) => (MailboxKind::Fetch, f.address.0),
                Request::Delete(d) => (MailboxKind::Delete, d.address.0),
            };
            ExitSeen::Mailbox {
                host: host.clone(),
                kind,
                address,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_refused_the_second_time_until_it_expires_and_the_cache_is_bounded() {
        let mut r = Replays::default();
        assert_eq!(r.note([1; 32], 100, 0), Ok(()));
        assert_eq!(r.note([1; 32], 100, 50), Err(Refusal::Replayed));
        assert_eq!(r.note([1; 32], 200, 100), Ok(()), "forgotten once expired");
        for i in 0..MAX_REPLAY_TAGS - 1 {
            let mut tag = [0u8; 32];
            tag[..8].copy_from_slice(&(i as u64 + 10).to_be_bytes());
            assert_eq!(r.note(tag, 300, 100), Ok(()));
        }
        assert_eq!(r.note([2; 32], 300, 100), Err(Refusal::Busy));
        assert_eq!(
            r.note([2; 32], 400, 300),
            Ok(()),
            "room again once they expire"
        );
        assert_eq!(r.seen.len(), 1);
    }
}
