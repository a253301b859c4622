//! Store-and-forward mailboxes: this node as a mailbox host ([`host`]), and as a client of
//! other hosts — finding a dead drop's hosts, depositing envelopes there ([`deposit`]),
//! fetching (then deleting) what waits in this node's own dead drops ([`fetch`]), and
//! handing hosted envelopes over to closer hosts as the network changes ([`handover`]).
//!
//! A dead drop's hosts are the `replicas` nodes closest to its address in Kademlia's XOR
//! metric, this node included when it is among them (it then hosts the envelope itself).
//!
//! This node's own mailbox work — the lookups of its dead drops' and its contacts' dead
//! drops' hosts, its deposits, fetches and deletes — goes through private paths
//! ([`crate::paths`]) unless they are turned off: an exit does it, and no host sees this
//! node's PeerId. What a host does as a host (handover to closer hosts) goes directly, and
//! so does the work this node does as an exit for others ([`exit`]).

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use sotto_protocol::deaddrop::Address;
use sotto_protocol::mailbox::{Request, Response};

use crate::net::{self, closer, PeerAddrs};
use crate::paths::{PathError, Paths};
use crate::service::{MessageError, Service};
use crate::store::StoreError;

pub mod chunks;
pub mod deposit;
pub mod exit;
pub mod fetch;
pub mod group;
pub mod handover;
pub mod host;

pub use host::{Host, HostingStats};

/// Where a request goes: this node's own host, or a peer.
#[derive(Clone, Debug)]
pub enum Target {
    Local,
    Remote(PeerId, Vec<Multiaddr>),
}

impl Target {
    /// The host's PeerId bytes (`me`'s for [`Target::Local`]).
    pub fn id_bytes(&self, me: &PeerId) -> Vec<u8> {
        match self {
            Target::Local => me.to_bytes(),
            Target::Remote(p, _) => p.to_bytes(),
        }
    }
}

/// Why a mailbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the host did not answer: {0}")]
    Network(#[from] net::SendError),
    #[error("through a private path: {0}")]
    Path(#[from] PathError),
    #[error("no proof-of-work stamp found at difficulty {difficulty}")]
    NoStamp { difficulty: u8 },
    #[error("the stamp search stopped: {0}")]
    StampTask(String),
    #[error("the contact's stored card is unreadable: {0}")]
    Card(#[from] sotto_protocol::card::CardError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// The mailbox client: the node's service (its store, network and account) and its own
/// host, which answers for [`Target::Local`]. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    service: Service,
    host: Arc<Host>,
    /// Private paths for this node's own mailbox work; `None`: it goes directly.
    paths: Option<Paths>,
    /// Where this node last read each group dead drop at each host (see `fetch`).
    group_cursors: GroupCursors,
    /// The hosts of group dead drops this node deposits at (see `group`).
    group_hosts: deposit::HostCache,
    /// The hosts of this node's own dead drops, reused by fetch rounds for
    /// [`fetch::FETCH_HOSTS_TTL`] (see `fetch`).
    fetch_hosts: deposit::HostCache,
}

/// Group dead drop and host → the last envelope read there.
type GroupCursors = Arc<
    std::sync::Mutex<
        std::collections::HashMap<(Address, Vec<u8>), sotto_protocol::mailbox::EnvelopeId>,
    >,
>;

impl Client {
    pub fn new(service: Service, host: Arc<Host>) -> Self {
        Client {
            service,
            host,
            paths: None,
            group_cursors: Arc::default(),
            group_hosts: deposit::HostCache::default(),
            fetch_hosts: deposit::HostCache::with_ttl(fetch::FETCH_HOSTS_TTL),
        }
    }

    /// This node's own mailbox work goes through `paths`.
    pub fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = Some(paths);
        self
    }

    pub fn paths(&self) -> Option<&Paths> {
        self.paths.as_ref()
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    fn me(&self) -> PeerId {
        self.service.network().peer_id()
    }

    /// The hosts of `address` from `cache`, else looked up and kept there when `keep` says
    /// the set is worth reusing. Kept hosts that this node has banned since are not used:
    /// the address is looked up again (the lookup leaves banned hosts out).
    pub(crate) async fn hosts_cached(
        &self,
        cache: &deposit::HostCache,
        address: &Address,
        keep: impl Fn(&[Target]) -> bool,
    ) -> Vec<Target> {
        if let Some(targets) = cache.get(address) {
            let store = self.service.store();
            let banned = targets.iter().any(|t| match t {
                Target::Remote(peer, _) => store.is_banned(&peer.to_bytes()).unwrap_or(false),
                Target::Local => false,
            });
            if !banned {
                return targets;
            }
            cache.forget(address);
        }
        let targets = self.hosts_for(address).await;
        if keep(&targets) {
            cache.put(*address, targets.clone());
        }
        targets
    }

    /// The hosts of `address`, closest first, for this node's own mailbox work: found by an
    /// exit when private paths are on (none if no path worked: the caller tries again
    /// later), else by this node's own lookup.
    pub async fn hosts_for(&self, address: &Address) -> Vec<Target> {
        let Some(paths) = &self.paths else {
            return self.hosts_direct(address).await;
        };
        match paths.hosts(address).await {
            Ok(peers) => {
                // A host this node banned (it served junk, say) is asked nothing, not even
                // through an exit.
                let store = self.service.store();
                let peers = peers
                    .into_iter()
                    .filter(|(peer, _)| !store.is_banned(&peer.to_bytes()).unwrap_or(false))
                    .collect();
                self.placed(address, peers, true)
            }
            Err(PathError::NoRelays) => {
                // No peer relays (a network of this node alone, or not joined yet): none
                // can host either, but this node's own host.
                if self
                    .service
                    .network()
                    .relays()
                    .await
                    .is_ok_and(|r| r.is_empty())
                {
                    self.placed(address, Vec::new(), false)
                } else {
                    Vec::new()
                }
            }
            Err(e) => {
                tracing::debug!("cannot look up the hosts of {}: {e}", address_hex(address));
                Vec::new()
            }
        }
    }

    /// The hosts of `address`, closest first, by this node's own Kademlia lookup (for its
    /// work as a host and as an exit).
    pub async fn hosts_direct(&self, address: &Address) -> Vec<Target> {
        let peers = self
            .service
            .network()
            .closest_peers(&address.0)
            .await
            .unwrap_or_default();
        self.placed(address, peers, false)
    }

    /// `peers` (closest first) as targets, this node in its place among them, cut to the
    /// replica count. `named`: this node may be among `peers` itself (an exit named it).
    fn placed(&self, address: &Address, peers: Vec<PeerAddrs>, named: bool) -> Vec<Target> {
        let me = self.me();
        let mut out = Vec::new();
        let mut placed = false;
        for (peer, addrs) in peers {
            if peer == me {
                if named && !placed {
                    out.push(Target::Local);
                    placed = true;
                }
                continue;
            }
            if !placed && !named && closer(&address.0, &me, &peer) {
                out.push(Target::Local);
                placed = true;
            }
            out.push(Target::Remote(peer, addrs));
        }
        if !placed && !named {
            out.push(Target::Local);
        }
        out.truncate(self.service.mailbox_config().replicas.max(1));
        out
    }

    /// Send `request` to `target` for this node's own mailbox work: through a private path
    /// when they are on.
    pub async fn ask(&self, target: &Target, request: Request) -> Result<Response, Error> {
        match (target, &self.paths) {
            (Target::Remote(peer, addrs), Some(paths)) => {
                Ok(paths.mailbox(*peer, addrs, request).await?)
            }
            _ => self.ask_direct(target, request).await,
        }
    }

    /// Send `request` to `target` from this node's own PeerId. (A remote host that asked
    /// this node to slow down gets nothing for a while: the network handle answers for it.)
    pub async fn ask_direct(&self, target: &Target, request: Request) -> Result<Response, Error> {
        match target {
            Target::Local => Ok(self.host.handle(&self.me(), None, request).await),
            Target::Remote(peer, addrs) => Ok(self
                .service
                .network()
                .mailbox(*peer, addrs.clone(), &request)
                .await?),
        }
    }
}

/// The first bytes of an address in hex, for logs.
fn address_hex(address: &Address) -> String {
    address.0[..6].iter().map(|b| format!("{b:02x}")).collect()
}
