//! The store's layout on disk: its trees, the layout of their keys and the keys of the meta
//! tree. Private to the store; a change here is a schema change
//! ([`super::SCHEMA_VERSION`]).

/// The trees of the store, in the order they are opened (their index into the store's
/// tree list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tree {
    /// Schema version, transport key, pickle key, the account snapshot, bookkeeping.
    Meta,
    /// Account key → [`super::Contact`].
    Contacts,
    /// Contact name → account key.
    Names,
    /// Seal key → account key.
    SealIndex,
    /// Account key → pickled sessions.
    Sessions,
    /// Sequence number → [`super::Message`].
    Messages,
    /// Message id → sequence number (0 for control messages, remembered only).
    MessageIds,
    /// Sequence number → [`super::OutboxEntry`].
    Outbox,
    /// Envelope digest → time first received.
    Seen,
    /// Cursor → event (JSON).
    Events,
    /// Dead-drop address ‖ sequence number → [`super::Hosted`]: envelopes this node hosts
    /// for others, in the order they were deposited.
    Hosted,
    /// Dead-drop address ‖ envelope id → sequence number.
    HostedIds,
    /// `d` ‖ dead-drop address, or `p` ‖ depositor PeerId → [`super::Usage`].
    HostUsage,
    /// Banned peer (PeerId bytes) → [`super::Ban`].
    Bans,
    /// Blocked contact (account key) → when it was blocked (ms, big-endian).
    Blocked,
    /// Account key of a contact that is a message request → nothing (kept with the
    /// contact, so that requests are counted without reading every contact). Schema 2.
    Requests,
    /// Expiry (ms, big-endian) ‖ dead-drop address ‖ sequence number → nothing: hosted
    /// envelopes in the order they expire, so that garbage collection reads only expired
    /// ones. Schema 2.
    HostedExpiry,
    /// Group id → [`super::GroupRecord`]. Schema 3.
    Groups,
    /// Local group name → group id. Schema 3.
    GroupNames,
    /// Group id ‖ member account key → the member's Megolm sessions
    /// ([`super::InboundSessions`]). Schema 3.
    GroupSessions,
    /// Sequence number → [`super::GroupMessage`]. Schema 3.
    GroupMessages,
    /// Sequence number → [`super::GroupOutboxEntry`]: group envelopes waiting to be left at
    /// the group's dead drop. Schema 3.
    GroupOutbox,
    /// Member account key → the pairwise Olm sessions with that member of a group, over
    /// which sender keys travel (pickles, most recently used first). Schema 3.
    MemberSessions,
    /// Sequence number → [`super::Extras`]: what happened to a message (1:1 or group)
    /// after it was written — reply, reactions, edit, delete, read, expiry. Schema 5.
    Extras,
    /// Expiry (ms, big-endian) ‖ sequence number → nothing: disappearing messages in the
    /// order they are erased. Schema 5.
    Expiring,
    /// Chat ([`super::Chat`] key) → disappearing timer (ms, big-endian). Schema 5.
    ChatTimers,
    /// Target message id ‖ change's message id → [`super::Parked`]: a change that arrived
    /// before the message it names, kept until that message comes. Schema 5.
    Parked,
    /// Sequence number → [`super::AttachmentRecord`]: the file of a message that carries
    /// one. Schema 6.
    Attachments,
}

/// Every tree and its name in sled, in [`Tree`] order.
pub(super) const TREES: [(Tree, &str); 28] = [
    (Tree::Meta, "meta"),
    (Tree::Contacts, "contacts"),
    (Tree::Names, "names"),
    (Tree::SealIndex, "seal_index"),
    (Tree::Sessions, "sessions"),
    (Tree::Messages, "messages"),
    (Tree::MessageIds, "message_ids"),
    (Tree::Outbox, "outbox"),
    (Tree::Seen, "seen"),
    (Tree::Events, "events"),
    (Tree::Hosted, "hosted"),
    (Tree::HostedIds, "hosted_ids"),
    (Tree::HostUsage, "host_usage"),
    (Tree::Bans, "bans"),
    (Tree::Blocked, "blocked"),
    (Tree::Requests, "requests"),
    (Tree::HostedExpiry, "hosted_expiry"),
    (Tree::Groups, "groups"),
    (Tree::GroupNames, "group_names"),
    (Tree::GroupSessions, "group_sessions"),
    (Tree::GroupMessages, "group_messages"),
    (Tree::GroupOutbox, "group_outbox"),
    (Tree::MemberSessions, "member_sessions"),
    (Tree::Extras, "extras"),
    (Tree::Expiring, "expiring"),
    (Tree::ChatTimers, "chat_timers"),
    (Tree::Parked, "parked"),
    (Tree::Attachments, "attachments"),
];

pub(super) const META_SCHEMA: &[u8] = b"schema";
pub(super) const META_TRANSPORT_KEY: &[u8] = b"transport_key";
pub(super) const META_PICKLE_KEY: &[u8] = b"pickle_key";
pub(super) const META_ACCOUNT: &[u8] = b"account";
/// Total bytes of hosted envelopes, as a big-endian u64.
pub(super) const META_HOST_BYTES: &[u8] = b"host_bytes";
/// Counters of hosting activity ([`super::HostStats`]).
pub(super) const META_HOST_STATS: &[u8] = b"host_stats";
/// The epoch of the last complete fetch of this node's dead drops.
pub(super) const META_LAST_FETCH_EPOCH: &[u8] = b"last_fetch_epoch";
/// When the fallback key was last replaced (ms, big-endian).
pub(super) const META_FALLBACK_ROTATED_AT: &[u8] = b"fallback_rotated_at";

/// The node's guard relays ([`super::GuardRecord`]s, in order).
pub(super) const META_GUARDS: &[u8] = b"guards";

/// `a ‖ b`.
pub(super) fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tree_sits_at_its_own_index() {
        for (i, (tree, _)) in TREES.iter().enumerate() {
            assert_eq!(*tree as usize, i, "{tree:?}");
        }
    }
}
