//! What the service returns to clients: typed views, serialised as the control API shows
//! them (docs/api.md).

use serde::Serialize;

use crate::net::TrafficView;

/// The account as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct AccountView {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub card: String,
}

/// `node.status`
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: Vec<String>,
    /// Entries waiting in the outbox (control messages included).
    pub outbox: usize,
    /// Group envelopes waiting to be left at their group's dead drop.
    pub group_outbox: usize,
    pub traffic: TrafficView,
    /// The account's address, if there is an account.
    pub account: Option<String>,
    pub version: &'static str,
}

/// A contact as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct ContactView {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub display_name: String,
    pub added_at: u64,
    pub request: bool,
}

/// `contact.verify`
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub contact: String,
    pub safety_number: String,
    pub fingerprint: String,
    pub own_fingerprint: String,
}

/// `contact.block` and `contact.unblock`
#[derive(Clone, Debug, Serialize)]
pub struct BlockState {
    pub contact: String,
    pub blocked: bool,
}

/// `requests.reject`
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub contact: String,
    pub messages_removed: u64,
}

/// A message as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    pub id: String,
    /// The contact, or the group, the message belongs to.
    pub contact: String,
    /// The group's name, for a group message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub direction: &'static str,
    pub from: String,
    pub text: String,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub state: &'static str,
}

/// A ban as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct BanView {
    pub peer: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
}

/// `peers.unban`
#[derive(Clone, Debug, Serialize)]
pub struct Unbanned {
    pub peer: String,
    pub unbanned: bool,
}
