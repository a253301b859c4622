//! The records the store keeps, as they are encoded on disk (with the protocol's codec; a
//! newtype is encoded as what it wraps, so these types name things without changing a byte).

use std::fmt;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sotto_protocol::content::MessageId;
use sotto_protocol::deaddrop::Secret;
use sotto_protocol::identity::AccountKey;
use zeroize::Zeroize;

/// The sequence number of a message or outbox entry: strictly increasing, so that a
/// contact's entries sort in the order they were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    pub(super) fn key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub(super) fn from_key(key: &[u8]) -> Option<Seq> {
        super::be_u64(key).map(Seq)
    }
}

/// The secret of a dead drop as the contact record keeps it. Not `Debug`; zeroed on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxSecret([u8; 32]);

impl InboxSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        InboxSecret(bytes)
    }

    /// The dead-drop secret, to derive drop keys from.
    pub fn secret(&self) -> Secret {
        Secret::from_bytes(self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for InboxSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A contact's node, as its last presence gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// PeerId bytes.
    pub peer: Vec<u8>,
    pub addrs: Vec<String>,
}

impl Route {
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer).ok()
    }

    /// The addresses that parse.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

/// A contact as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    /// The newest card seen, in its binary form.
    pub card: Vec<u8>,
    pub added_at: u64,
    /// Wrote first, not (yet) added by the user.
    pub request: bool,
    /// The secret of this node's dead drops for this contact (told to the contact in a
    /// presence message).
    pub inbox: InboxSecret,
    /// The secret of the contact's dead drops for this node, once the contact told it.
    pub their_inbox: Option<InboxSecret>,
    /// The contact's node as its last presence gave it.
    pub route: Option<Route>,
    /// This node's presence has been queued for the contact.
    pub presence_sent: bool,
}

impl Contact {
    /// A new contact, added at `now_ms`, with the inbox secret `inbox` (fresh random bytes).
    pub fn new(name: String, card: Vec<u8>, request: bool, inbox: [u8; 32], now_ms: u64) -> Self {
        Contact {
            name,
            card,
            added_at: now_ms,
            request,
            inbox: InboxSecret::new(inbox),
            their_inbox: None,
            route: None,
            presence_sent: false,
        }
    }
}

impl Contact {
    /// Where the contact's node can be reached: from its last presence, else from the
    /// hints in its card (if it publishes its address).
    pub fn node(&self) -> Option<(PeerId, Vec<Multiaddr>)> {
        if let Some(route) = &self.route {
            if let Some(peer) = route.peer_id() {
                return Some((peer, route.multiaddrs()));
            }
        }
        let card = sotto_protocol::card::Card::from_bytes(&self.card).ok()?;
        let hints = &card.body().hints;
        let peer = PeerId::from_bytes(hints.peer_id.as_deref()?).ok()?;
        Some((
            peer,
            hints.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
        ))
    }
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("name", &self.name)
            .field("added_at", &self.added_at)
            .field("request", &self.request)
            .field("inbox", &"<secret>")
            .field(
                "their_inbox",
                &self.their_inbox.as_ref().map(|_| "<secret>"),
            )
            .field("route", &self.route)
            .field("presence_sent", &self.presence_sent)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Queued,
    /// Stored by at least one mailbox host.
    OnHosts,
    Delivered,
    Received,
}

impl State {
    /// How far along a message is: a state never moves to a lower rank.
    pub fn rank(self) -> u8 {
        match self {
            State::Queued => 0,
            State::OnHosts => 1,
            State::Delivered | State::Received => 2,
        }
    }
}

/// A message as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub contact: AccountKey,
    pub direction: Direction,
    pub text: String,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub state: State,
}

/// What happened to a message, 1:1 or group, after it was written. Kept apart from the
/// message (schema 5), absent for one nothing happened to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
    /// One reaction per person: who, and the emoji.
    pub reactions: Vec<(AccountKey, String)>,
    /// When its sender last edited it (the edit's time, by the sender's clock).
    pub edited_at: Option<u64>,
    /// Deleted for everyone by its sender: the text is gone.
    pub deleted: bool,
    /// When it is erased (a disappearing chat).
    pub expires_at: Option<u64>,
    /// Incoming: when the user read it. Outgoing: when the contact said it read it.
    pub read_at: Option<u64>,
    /// A notice of the chat (the timer changed), not a message someone wrote.
    pub notice: bool,
}

/// A conversation: with a contact, or a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chat {
    Contact(AccountKey),
    Group(sotto_protocol::group::GroupId),
}

impl Chat {
    /// Its key in the store: `c` ‖ account key, or `g` ‖ group id.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Chat::Contact(k) => super::schema::concat(b"c", &k.0),
            Chat::Group(g) => super::schema::concat(b"g", &g.0),
        }
    }

    /// The chat a key names.
    pub fn from_key(key: &[u8]) -> Option<Chat> {
        match key.split_first()? {
            (b'c', k) => Some(Chat::Contact(AccountKey(k.try_into().ok()?))),
            (b'g', g) => Some(Chat::Group(sotto_protocol::group::GroupId(
                g.try_into().ok()?,
            ))),
            _ => None,
        }
    }
}

/// A change (reaction, edit, delete) that arrived before the message it names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Parked {
    /// The chat's key ([`Chat::key`]).
    pub chat: Vec<u8>,
    pub author: AccountKey,
    /// The change's content, encoded.
    pub content: Vec<u8>,
    pub parked_at: u64,
}

/// A message waiting for delivery: the sealed envelope, sent as is on every attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: Seq,
    pub message: MessageId,
    pub to: AccountKey,
    pub envelope: Vec<u8>,
    pub failures: u32,
    pub next_attempt_at: u64,
    /// Attempts to reach the remaining hosts once the envelope is on at least one.
    pub host_retries: u32,
    /// Mailbox hosts (PeerId bytes) that confirmed storing the envelope.
    pub hosts: Vec<Vec<u8>>,
    /// A control message (presence, receipt), not shown to the user.
    pub control: bool,
}

/// An envelope this node hosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hosted {
    /// When this host drops it: the deposit's expiry, capped by the host's TTL.
    pub expires_at: u64,
    /// The expiry the depositor asked for and signed; sent on at handover.
    pub deposit_expires_at: u64,
    pub stored_at: u64,
    /// Who deposited it (PeerId bytes), for quotas.
    pub depositor: Vec<u8>,
    /// The deposit's authorisation, kept so that the envelope can be handed over.
    pub auth: sotto_protocol::mailbox::DepositAuth,
    pub envelope: Vec<u8>,
}

/// How much one depositor, or one dead drop, holds at this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub count: u64,
    pub bytes: u64,
}

/// Counters of hosting since the store was created.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct HostStats {
    pub deposits: u64,
    pub rejections: u64,
    pub deleted: u64,
    pub expired: u64,
    pub handed_over: u64,
}

/// A ban as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// PeerId bytes.
    pub peer: Vec<u8>,
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
}

impl Ban {
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer).ok()
    }
}

/// One of the node's guard relays (the first hop of its private paths), as the store keeps
/// them, in the order the node prefers them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// PeerId bytes.
    pub peer: Vec<u8>,
    /// Binary multiaddrs it was last heard at (at most 4).
    pub addrs: Vec<Vec<u8>>,
    pub added_ms: u64,
    /// When the node stops using it, however well it does (its rotation).
    pub retire_ms: u64,
    /// Since when every attempt to use it failed, if the last one did.
    pub failing_since_ms: Option<u64>,
}
