//! Private paths: this node's mailbox work — looking up a dead drop's hosts, depositing,
//! fetching, deleting — done by the exit of a three-relay path (`own guard → random middle
//! → random exit`), so that no host and no Kademlia peer sees this node's PeerId next to
//! its dead drops. Cells are [`sotto_protocol::onion`]'s; what travels inside them is
//! [`sotto_protocol::exit`]'s.
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | [`Paths`]: this node as a sender — choosing paths, sending cells, retrying |
//! | `guards.rs` | the guard set: long-lived first hops, persisted |
//! | `relay.rs` | [`Relay`]: this node as a relay and exit for others |
//!
//! Each request takes a path of its own: a new middle and exit at random from the relays
//! this node knows (peers that say in identify that they relay), behind its first working
//! guard. A path that fails is built again with another middle and exit (at most
//! [`ATTEMPTS`] times); a guard that fails rests while the next one carries the paths.
//! With fewer relays than a path needs the path is shorter, down to the guard alone (then
//! the guard, as exit, sees whose request it carries): `node.status` and `sotto paths`
//! count such short paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::{Multiaddr, PeerId};
use rand::seq::SliceRandom as _;
use rand::RngCore as _;
use serde::Serialize;
use sotto_protocol::deaddrop::Address;
use sotto_protocol::exit::{self, ExitAnswer, ExitRefusal, ExitRequest, FromExit, Gathered};
use sotto_protocol::mailbox;
use sotto_protocol::onion::{self, Hop, MAX_ADDR_BYTES, MAX_HOPS};

use crate::clock::unix_ms;
use crate::net::{Handle, PeerAddrs, Relay};
use crate::store::{Batch, Store};

pub mod guards;
pub mod relay;

pub use guards::{GuardView, Guards};
pub use relay::Relay as RelayNode;

/// Paths tried for one request before it fails.
pub const ATTEMPTS: usize = 3;
/// Cells one request may take (its parts and the parts of its answer), at most.
const MAX_CELLS: usize = 64;
/// How long after it starts a node waits for enough relays to be known (from identify, as
/// it connects) before it builds a path shorter than three relays: a node that just
/// started, or restarted, knows few relays for a moment, and a short path shows the node
/// to its exit. In a network that has fewer relays, paths are short after that.
pub const SHORT_PATH_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a middle or exit of a path that failed is passed over (doubling for each
/// failure in a row, up to [`MAX_SUSPECT`]): a relay that went away stays in the list of
/// relays heard of until it is heard from again or passed over.
const FIRST_SUSPECT: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_SUSPECT: std::time::Duration = std::time::Duration::from_secs(1_800);
/// Relays remembered as suspect, at most.
const MAX_SUSPECTS: usize = 1_024;
/// The longest a request waits for its guard's pause before trying again.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a node in its grace looks again for relays.
const RELAYS_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a request through a private path failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("no relay is known yet to build a private path through")]
    NoRelays,
    #[error("no private path worked ({ATTEMPTS} tried): {last}")]
    Failed { last: String },
    #[error("the exit could not do it: {0}")]
    Exit(ExitRefusal),
    #[error("the request cannot be sent: {0}")]
    Encode(String),
}

/// What this node counts of its private paths, as sender and as relay.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests sent through paths, and those that got their answer.
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    /// Paths that failed (a request may try several).
    pub path_failures: AtomicU64,
    /// Paths shorter than three relays, for want of relays.
    pub short_paths: AtomicU64,
    /// Cells this node sent as the first hop's sender.
    pub cells_sent: AtomicU64,
    /// Cells relayed on to a next hop, cells answered as exit, cells refused.
    pub relayed: AtomicU64,
    pub exited: AtomicU64,
    pub refused: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The figures `sotto paths` and `node.status` show.
#[derive(Clone, Debug, Serialize)]
pub struct PathsView {
    /// Whether this node's mailbox work goes through private paths.
    pub private: bool,
    /// Whether this node relays for others.
    pub relay: bool,
    pub relays_known: usize,
    pub guards: Vec<GuardView>,
    pub requests: u64,
    pub answered: u64,
    pub path_failures: u64,
    pub short_paths: u64,
    pub cells_sent: u64,
    pub relayed: u64,
    pub exited: u64,
    pub refused: u64,
}

/// How a path failed, and whose fault it looks like.
enum Failure {
    /// The guard did not answer, or refused the cell itself.
    Guard(String),
    /// A later hop failed, or the reply did not open.
    Path(String),
    /// The exit answered, refusing.
    Exit(ExitRefusal),
    /// This node's network task stopped.
    Stopped,
    /// The guard asked for a pause this long: it works, and this node sends it too much.
    Busy(std::time::Duration),
}

struct Inner {
    net: Handle,
    store: Store,
    me: PeerId,
    guards: Mutex<Guards>,
    counters: Arc<Counters>,
    relay: bool,
    started: std::time::Instant,
    /// Middles and exits of failed paths: until when each is passed over, and its failures
    /// in a row.
    suspects: Mutex<std::collections::HashMap<PeerId, (std::time::Instant, u32)>>,
}

/// This node's private paths, as a sender. Cheap to clone.
#[derive(Clone)]
pub struct Paths {
    inner: Arc<Inner>,
}

/// A path: its hops, the guard first, and where to reach the guard.
struct Path {
    guard: PeerId,
    guard_addrs: Vec<Multiaddr>,
    /// The middle and the exit (or fewer, on a short path).
    rest: Vec<PeerId>,
    hops: Vec<Hop>,
}

/// The onion key of `peer`, from the Ed25519 key inside its PeerId.
pub fn onion_key(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    onion::onion_key_of(&ed25519.to_bytes())
}

/// The hop for `peer`: its onion key and its first address short enough for a layer.
fn hop(peer: &PeerId, addrs: &[Multiaddr]) -> Option<Hop> {
    Some(Hop {
        peer: peer.to_bytes(),
        addr: addrs
            .iter()
            .map(|a| a.to_vec())
            .find(|a| a.len() <= MAX_ADDR_BYTES)
            .unwrap_or_default(),
        key: onion_key(peer)?,
    })
}

impl Paths {
    /// Paths for the node `me`, its guards kept in `store`. `relay`: whether it relays for
    /// others (only shown).
    pub fn new(
        net: Handle,
        store: Store,
        counters: Arc<Counters>,
        relay: bool,
    ) -> Result<Self, crate::store::StoreError> {
        let guards = Guards::from_records(store.guards()?);
        Ok(Paths {
            inner: Arc::new(Inner {
                me: net.peer_id(),
                net,
                store,
                guards: Mutex::new(guards),
                counters,
                relay,
                started: std::time::Instant::now(),
                suspects: Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    fn guards(&self) -> std::sync::MutexGuard<'_, Guards> {
        self.inner.guards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self) {
        let records = self.guards().records();
        let mut batch = Batch::new();
        let written = batch
            .put_guards(&records)
            .and_then(|()| self.inner.store.apply(&batch));
        if let Err(e) = written {
            tracing::warn!("cannot record the guard relays: {e}");
        }
    }

    /// The nodes of this user's contacts: never guards.
    fn contacts_nodes(&self) -> Vec<PeerId> {
        match self.inner.store.contacts() {
            Ok(contacts) => contacts
                .into_iter()
                .filter_map(|(_, c)| c.node().map(|(peer, _)| peer))
                .collect(),
            Err(e) => {
                tracing::warn!("cannot read contacts to choose a guard: {e}");
                Vec::new()
            }
        }
    }

    /// The relays known now, not this node; in the node's first [`SHORT_PATH_GRACE`],
    /// waiting until there are enough for a full path.
    async fn relays(&self) -> Result<Vec<Relay>, PathError> {
        loop {
            let relays: Vec<Relay> = self
                .inner
                .net
                .relays()
                .await
                .map_err(|e| PathError::Failed {
                    last: e.to_string(),
                })?
                .into_iter()
                .filter(|r| r.peer != self.inner.me)
                .collect();
            if relays.len() >= MAX_HOPS || self.inner.started.elapsed() >= SHORT_PATH_GRACE {
                return Ok(relays);
            }
            tokio::time::sleep(RELAYS_POLL).await;
        }
    }

    /// Choose a path: the first working guard, then a middle and an exit at random.
    async fn choose(&self) -> Result<Path, PathError> {
        let relays = self.relays().await?;
        let exclude = self.contacts_nodes();
        let known: Vec<PeerAddrs> = relays.iter().map(|r| (r.peer, r.addrs.clone())).collect();
        let picked = {
            let mut rng = rand::thread_rng();
            self.guards()
                .pick(unix_ms(), &self.inner.me, &known, &exclude, &mut rng)
        };
        let Some(picked) = picked else {
            return Err(PathError::NoRelays);
        };
        if picked.changed {
            tracing::info!("guard relays now: {:?}", self.guards().view(unix_ms()));
            self.persist();
        }
        let guard_hop = hop(&picked.peer, &picked.addrs).ok_or_else(|| PathError::Failed {
            last: format!("the guard {} has no Ed25519 key", picked.peer),
        })?;
        let mut rest: Vec<&Relay> = relays
            .iter()
            .filter(|r| r.peer != picked.peer && onion_key(&r.peer).is_some())
            .collect();
        rest.shuffle(&mut rand::thread_rng());
        // Relays this node has a connection to (they are there) that no path failed through
        // lately; a relay it is not connected to only when no connected one is left (a
        // shorter path beats one through a relay that went away); a suspect one last.
        let rest: Vec<&Relay> = {
            let now = std::time::Instant::now();
            let suspects = self.suspects();
            let suspect = |r: &Relay| suspects.get(&r.peer).is_some_and(|(until, _)| *until > now);
            let mut chosen: Vec<&Relay> = rest
                .iter()
                .filter(|r| r.connected && !suspect(r))
                .take(MAX_HOPS - 1)
                .copied()
                .collect();
            for fallback in [
                |r: &Relay, suspect: bool| !r.connected && !suspect,
                |_: &Relay, suspect: bool| suspect,
            ] {
                if chosen.is_empty() {
                    chosen = rest
                        .iter()
                        .filter(|r| fallback(r, suspect(r)))
                        .take(MAX_HOPS - 1)
                        .copied()
                        .collect();
                }
            }
            chosen
        };
        let mut hops = vec![guard_hop];
        hops.extend(rest.iter().filter_map(|r| hop(&r.peer, &r.addrs)));
        if hops.len() < MAX_HOPS {
            add(&self.inner.counters.short_paths);
            tracing::debug!(
                "a private path of {} relays only: too few relays known",
                hops.len()
            );
        }
        Ok(Path {
            guard: picked.peer,
            guard_addrs: picked.addrs,
            rest: rest.iter().map(|r| r.peer).collect(),
            hops,
        })
    }

    fn suspects(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PeerId, (std::time::Instant, u32)>>
    {
        self.inner
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A path failed after its guard: pass its middle and exit over for a while (which of
    /// them failed, the guard does not say).
    fn suspect(&self, path: &Path) {
        let now = std::time::Instant::now();
        let mut suspects = self.suspects();
        if suspects.len() >= MAX_SUSPECTS {
            suspects.retain(|_, (until, _)| *until > now);
            if suspects.len() >= MAX_SUSPECTS {
                suspects.clear();
            }
        }
        for peer in &path.rest {
            let entry = suspects.entry(*peer).or_insert((now, 0));
            entry.1 = entry.1.saturating_add(1);
            let pause = FIRST_SUSPECT
                .saturating_mul(1u32 << (entry.1 - 1).min(10))
                .min(MAX_SUSPECT);
            entry.0 = now + pause;
        }
    }

    /// A path worked: its middle and exit are fine.
    fn cleared(&self, path: &Path) {
        let mut suspects = self.suspects();
        for peer in &path.rest {
            suspects.remove(peer);
        }
    }

    /// Send one cell's content along `path`; what the exit answered.
    async fn cell(&self, path: &Path, content: &[u8]) -> Result<FromExit, Failure> {
        let now = u32::try_from(unix_ms() / 1000).unwrap_or(u32::MAX);
        let (cell, pending) = onion::build(&path.hops, content, now, &mut rand::thread_rng())
            .map_err(|e| Failure::Path(e.to_string()))?;
        add(&self.inner.counters.cells_sent);
        let answer = match self
            .inner
            .net
            .onion(path.guard, path.guard_addrs.clone(), &cell)
            .await
        {
            Ok(answer) => answer,
            // This node is stopping: nobody's fault.
            Err(crate::net::SendError::Stopped) => return Err(Failure::Stopped),
            Err(e) => return Err(Failure::Guard(e.to_string())),
        };
        let reply = match answer {
            onion::Answer::Reply(reply) => reply,
            onion::Answer::Refused(onion::Refusal::NextHopFailed) => {
                return Err(Failure::Path("a relay after the guard failed".into()))
            }
            onion::Answer::Refused(onion::Refusal::SlowDown(ms)) => {
                return Err(Failure::Busy(std::time::Duration::from_millis(u64::from(
                    ms,
                ))))
            }
            onion::Answer::Refused(onion::Refusal::Busy) => {
                return Err(Failure::Busy(crate::net::codec::BUSY_FOR))
            }
            onion::Answer::Refused(r) => return Err(Failure::Guard(format!("the guard: {r}"))),
        };
        let bytes =
            onion::open_reply(&pending, &reply).map_err(|e| Failure::Path(e.to_string()))?;
        FromExit::from_bytes(&bytes).map_err(|e| Failure::Path(format!("the exit's answer: {e}")))
    }

    /// One request along one path: its parts, then the parts of its answer.
    async fn along(&self, path: &Path, request: &ExitRequest) -> Result<ExitAnswer, Failure> {
        let mut stream = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut stream);
        let parts = exit::parts(stream, request).map_err(|e| Failure::Exit(too_large(&e)))?;
        let last = parts.len() - 1;
        let mut cells = 0;
        let mut from = FromExit::Taken;
        for (i, part) in parts.iter().enumerate() {
            let bytes = part.to_bytes().map_err(|e| Failure::Exit(too_large(&e)))?;
            from = self.cell(path, &bytes).await?;
            cells += 1;
            if i < last && from != FromExit::Taken {
                return match from {
                    FromExit::Refused(r) => Err(Failure::Exit(r)),
                    other => Err(Failure::Path(format!(
                        "the exit answered a part with {other:?}"
                    ))),
                };
            }
        }
        let mut gather = exit::Gather::default();
        loop {
            match gather.take(from) {
                Ok(Gathered::Done(answer)) => return Ok(answer),
                Ok(Gathered::More(offset)) if cells < MAX_CELLS => {
                    let more = exit::ToExit::More { stream, offset }
                        .to_bytes()
                        .map_err(|e| Failure::Path(e.to_string()))?;
                    from = self.cell(path, &more).await?;
                    cells += 1;
                }
                Ok(Gathered::More(_)) => {
                    return Err(Failure::Path(
                        "the exit's answer takes too many cells".into(),
                    ))
                }
                Err(exit::GatherError::Refused(r)) => return Err(Failure::Exit(r)),
                Err(e) => return Err(Failure::Path(e.to_string())),
            }
        }
    }

    /// Have an exit do `request`, through up to [`ATTEMPTS`] paths.
    pub async fn ask(&self, request: &ExitRequest) -> Result<ExitAnswer, PathError> {
        let c = &self.inner.counters;
        add(&c.requests);
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let path = self.choose().await?;
            match self.along(&path, request).await {
                Ok(answer) => {
                    add(&c.answered);
                    self.cleared(&path);
                    if self.guards().succeeded(&path.guard) {
                        self.persist();
                    }
                    return Ok(answer);
                }
                Err(Failure::Guard(e)) => {
                    add(&c.path_failures);
                    tracing::debug!("private path failed at its guard {}: {e}", path.guard);
                    if self.guards().failed(&path.guard, unix_ms()) {
                        tracing::warn!("guard relay {} is failing: {e}", path.guard);
                        self.persist();
                    }
                    last = e;
                }
                Err(Failure::Path(e)) => {
                    add(&c.path_failures);
                    tracing::debug!("private path failed: {e}");
                    self.suspect(&path);
                    let blamed = self.guards().failed_after(&path.guard, unix_ms());
                    if let Some(changed) = blamed {
                        tracing::warn!(
                            "guard relay {} is failing: {} paths in a row failed after it",
                            path.guard,
                            guards::PATHS_FAILED_AFTER
                        );
                        if changed {
                            self.persist();
                        }
                    }
                    last = e;
                }
                // Another exit may reach the host.
                Err(Failure::Exit(ExitRefusal::Unreachable)) => {
                    add(&c.path_failures);
                    last = ExitRefusal::Unreachable.to_string();
                }
                Err(Failure::Exit(r)) => return Err(PathError::Exit(r)),
                Err(Failure::Busy(pause)) => {
                    tracing::debug!("the guard {} asks for a pause of {pause:?}", path.guard);
                    tokio::time::sleep(pause.min(MAX_PAUSE)).await;
                    last = format!("the guard asked for a pause of {pause:?}");
                }
                Err(Failure::Stopped) => {
                    return Err(PathError::Failed {
                        last: "this node is stopping".into(),
                    })
                }
            }
        }
        Err(PathError::Failed { last })
    }

    /// The hosts of `address`, closest first, as an exit found them.
    pub async fn hosts(&self, address: &Address) -> Result<Vec<PeerAddrs>, PathError> {
        match self.ask(&ExitRequest::Hosts { address: *address }).await? {
            ExitAnswer::Hosts(hosts) => Ok(hosts
                .into_iter()
                .filter_map(|h| {
                    let peer = PeerId::from_bytes(&h.peer).ok()?;
                    let addrs = h
                        .addrs
                        .into_iter()
                        .filter_map(|a| Multiaddr::try_from(a).ok())
                        .collect();
                    Some((peer, addrs))
                })
                .collect()),
            ExitAnswer::Mailbox(_) => Err(PathError::Failed {
                last: "the exit answered a lookup with a mailbox answer".into(),
            }),
        }
    }

    /// Have an exit give `request` to the host `peer` and bring back its answer.
    pub async fn mailbox(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        request: mailbox::Request,
    ) -> Result<mailbox::Response, PathError> {
        let request = ExitRequest::Mailbox {
            host: peer.to_bytes(),
            addrs: addrs
                .iter()
                .take(exit::MAX_ADDRS)
                .map(|a| a.to_vec())
                .filter(|a| a.len() <= exit::MAX_ADDR_BYTES)
                .collect(),
            request,
        };
        match self.ask(&request).await? {
            ExitAnswer::Mailbox(response) => Ok(response),
            ExitAnswer::Hosts(_) => Err(PathError::Failed {
                last: "the exit answered a mailbox request with hosts".into(),
            }),
        }
    }

    /// The figures for `sotto paths`.
    pub async fn view(&self, private: bool) -> PathsView {
        let relays_known = self.inner.net.relays().await.map_or(0, |r| r.len());
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PathsView {
            private,
            relay: self.inner.relay,
            relays_known,
            guards: self.guards().view(unix_ms()),
            requests: get(&c.requests),
            answered: get(&c.answered),
            path_failures: get(&c.path_failures),
            short_paths: get(&c.short_paths),
            cells_sent: get(&c.cells_sent),
            relayed: get(&c.relayed),
            exited: get(&c.exited),
            refused: get(&c.refused),
        }
    }
}

fn too_large(e: &sotto_protocol::codec::CodecError) -> ExitRefusal {
    tracing::debug!("an exit request does not fit: {e}");
    ExitRefusal::TooLarge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_onion_key_comes_from_its_peer_id() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let seed: [u8; 32] = key
            .clone()
            .try_into_ed25519()
            .unwrap()
            .secret()
            .as_ref()
            .try_into()
            .unwrap();
        let relay = onion::RelayKey::from_ed25519_seed(&seed);
        assert_eq!(onion_key(&peer), Some(relay.public()));
        // A PeerId that is a hash (not an inline key) names no onion key.
        let hashed = PeerId::from_multihash(
            libp2p::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap(),
        )
        .unwrap();
        assert_eq!(onion_key(&hashed), None);
    }
}
