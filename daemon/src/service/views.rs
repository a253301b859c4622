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
    /// `queued`, `on_hosts`, `delivered`, `received`, or (outgoing, the contact said so)
    /// `read`.
    pub state: &'static str,
    /// The id of the message this one answers.
    pub reply_to: Option<String>,
    /// One per person, oldest first.
    pub reactions: Vec<ReactionView>,
    /// When its sender last edited it.
    pub edited_at: Option<u64>,
    /// Deleted for everyone by its sender (the text is empty).
    pub deleted: bool,
    /// When it will be erased (a disappearing chat).
    pub expires_at: Option<u64>,
    /// When it was read: by the user (incoming) or by the contact (outgoing).
    pub read_at: Option<u64>,
    /// A notice of the chat (the disappearing timer changed), not a message someone wrote.
    pub notice: bool,
    /// The message's file, if it carries one.
    pub attachments: Vec<AttachmentView>,
}

/// An attachment as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentView {
    /// The id of the message that carries it.
    pub id: String,
    pub name: String,
    pub mime: String,
    /// `file`, `voice`, `sticker` or `gif`.
    pub kind: &'static str,
    /// Bytes.
    pub size: u64,
    /// Bytes downloaded so far (all of them for one this node sent).
    pub received: u64,
    /// `pending`, `downloading`, `complete` or `failed`.
    pub state: &'static str,
    /// Where the finished download is (incoming, once complete).
    pub path: Option<String>,
    /// Why it failed, or what it waits for.
    pub error: Option<String>,
    /// Outgoing: every chunk is also at mailbox hosts, for a contact who fetches it once
    /// this node is gone (left there when the contact's node was not connected at send
    /// time, or for a group).
    pub on_hosts: bool,
}

impl AttachmentView {
    pub fn of(r: &crate::store::AttachmentRecord) -> Self {
        let size = r.attachment.blob.size;
        AttachmentView {
            id: r.message.to_string(),
            name: r.attachment.name.clone(),
            mime: r.attachment.mime.clone(),
            kind: r.attachment.kind.as_str(),
            size,
            received: (u64::from(r.have) * sotto_protocol::blob::CHUNK_BYTES as u64).min(size),
            state: r.state.as_str(),
            path: r.path.as_ref().map(|p| p.display().to_string()),
            error: r.error.clone(),
            on_hosts: r.upload
                && r.uploaded >= r.attachment.blob.chunks().unwrap_or(0).saturating_add(1),
        }
    }
}

/// A reaction as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct ReactionView {
    /// `me`, the contact's name, or a group member's label.
    pub from: String,
    pub emoji: String,
}

/// `chat.read`
#[derive(Clone, Debug, Serialize)]
pub struct ReadView {
    pub chat: String,
    /// Messages newly marked read.
    pub marked: usize,
    /// Whether the contact was told (read receipts on, a 1:1 chat).
    pub receipt_sent: bool,
}

/// `chat.disappearing`
#[derive(Clone, Debug, Serialize)]
pub struct TimerView {
    pub chat: String,
    /// The timer in seconds, or null when off.
    pub seconds: Option<u64>,
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
