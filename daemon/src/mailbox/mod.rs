//! Store-and-forward mailboxes: this node as a mailbox host ([`host`]), and as a client of
//! other hosts — finding a dead drop's hosts, depositing envelopes there ([`deposit`]),
//! fetching (then deleting) what waits in this node's own dead drops ([`fetch`]), and
//! handing hosted envelopes over to closer hosts as the network changes ([`handover`]).
//!
//! A dead drop's hosts are the `replicas` nodes closest to its address in Kademlia's XOR
//! metric, this node included when it is among them (it then hosts the envelope itself).

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use sotto_protocol::deaddrop::Address;
use sotto_protocol::mailbox::{Request, Response};

use crate::net::{self, closer};
use crate::service::{MessageError, Service};
use crate::store::StoreError;

pub mod deposit;
pub mod fetch;
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
}

impl Client {
    pub fn new(service: Service, host: Arc<Host>) -> Self {
        Client { service, host }
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

    /// The hosts of `address`, closest first.
    pub async fn hosts_for(&self, address: &Address) -> Vec<Target> {
        let net = self.service.network();
        let me = net.peer_id();
        let peers = net.closest_peers(&address.0).await.unwrap_or_default();
        let mut out = Vec::new();
        let mut placed = false;
        for (peer, addrs) in peers {
            if !placed && closer(&address.0, &me, &peer) {
                out.push(Target::Local);
                placed = true;
            }
            out.push(Target::Remote(peer, addrs));
        }
        if !placed {
            out.push(Target::Local);
        }
        out.truncate(self.service.mailbox_config().replicas.max(1));
        out
    }

    /// Send `request` to `target`. (A remote host that asked this node to slow down gets
    /// nothing for a while: the network handle answers for it.)
    pub async fn ask(&self, target: &Target, request: Request) -> Result<Response, Error> {
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
