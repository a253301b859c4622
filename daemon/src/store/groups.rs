//! Groups: each group's record (its log of changes, the secrets this node holds, its own
//! Megolm session), the local names of groups, the members' Megolm sessions, the group
//! history, and the group outbox (group envelopes waiting for the group's dead drop).

use serde::{Deserialize, Serialize};
use sotto_protocol::content::MessageId;
use sotto_protocol::group::{Change, GroupId, MemberKeys, Sent};
use sotto_protocol::identity::AccountKey;

use super::schema::{concat, Tree};
use super::{Batch, Direction, Seq, State, Store, StoreError};

/// Where this node stands in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupStatus {
    /// A member: fetches the group's dead drops, sends and receives.
    Joined,
    /// Invited by `by`; waits for `group join` or `group decline`.
    Invited { by: AccountKey },
    /// Left by this node's choice.
    Left,
    /// Removed by an admin.
    Removed,
}

/// This node's own Megolm session in a group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outbound {
    /// The session, pickled under the store's pickle key.
    pub pickle: String,
    /// The hash of the change whose secret the session was announced under.
    pub key_change: [u8; 32],
    pub created_ms: u64,
    pub sent: u32,
}

/// A group as this node keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    /// The name this node shows for the group (the group's name, made unique here).
    pub local_name: String,
    pub status: GroupStatus,
    /// The group's changes; only the current secret's change keeps its rekey.
    pub changes: Vec<Change>,
    /// The secrets this node holds, oldest first, each with the hash of the change that
    /// made it (at most [`MAX_SECRETS`]).
    pub secrets: Vec<([u8; 32], [u8; 32])>,
    pub outbound: Option<Outbound>,
    /// Messages that came before their sender's key (at most [`MAX_PENDING`]).
    pub pending: Vec<Sent>,
    pub joined_ms: u64,
    /// An invitation being gathered, from one sender.
    pub assembling: Option<Assembling>,
    /// Group envelopes dropped: from non-members, undecryptable, malformed.
    pub dropped: u64,
}

/// The parts of an invitation received so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assembling {
    pub from: AccountKey,
    pub parts: u16,
    pub seen: Vec<u16>,
    pub changes: Vec<Change>,
    /// The current secret and the hash of its change, from the part that carried it.
    pub secret: Option<([u8; 32], [u8; 32])>,
}

/// Secrets a node keeps per group: the current one and a few before it (messages sent under
/// an older one while its change travelled).
pub const MAX_SECRETS: usize = 4;
/// Messages kept waiting for their sender's key, per group.
pub const MAX_PENDING: usize = 64;
/// Megolm sessions kept per member.
pub const MAX_SESSIONS_PER_MEMBER: usize = 4;

/// A member's Megolm sessions in a group (newest last): id, pickle, and the hash of the
/// change whose secret the session was announced under; and the newest Olm keys the member
/// announced in the group, if any (else those of its member record).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InboundSessions {
    pub sessions: Vec<(String, String, [u8; 32])>,
    pub keys: Option<MemberKeys>,
}

/// A group message as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupMessage {
    pub id: MessageId,
    pub group: GroupId,
    pub from: AccountKey,
    pub direction: Direction,
    pub text: String,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub state: State,
}

/// A group envelope waiting to be left at the group's dead drop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupOutboxEntry {
    pub seq: Seq,
    pub group: GroupId,
    /// The group message it carries (its history record has the same sequence number).
    pub message: Option<MessageId>,
    /// The dead-drop secret of the group secret it is sealed under.
    pub drop_secret: [u8; 32],
    pub envelope: Vec<u8>,
    /// Hosts (PeerId bytes) that hold it.
    pub hosts: Vec<Vec<u8>>,
    pub failures: u32,
    pub next_attempt_at: u64,
    pub created_ms: u64,
}

impl Store {
    pub fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.get(Tree::Groups, &id.0, "group")
    }

    pub fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        Ok(self
            .collect::<GroupRecord>(Tree::Groups, &[], "group")?
            .into_iter()
            .map(|(_, g)| g)
            .collect())
    }

    pub fn group_named(&self, name: &str) -> Result<Option<GroupId>, StoreError> {
        Ok(self
            .get_raw(Tree::GroupNames, name.as_bytes())?
            .and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok().map(GroupId)))
    }

    pub fn group_sessions(
        &self,
        group: &GroupId,
        member: &AccountKey,
    ) -> Result<InboundSessions, StoreError> {
        Ok(self
            .get(
                Tree::GroupSessions,
                &concat(&group.0, &member.0),
                "group sessions",
            )?
            .unwrap_or_default())
    }

    /// Every member's sessions in `group`.
    pub fn groups_sessions_of(
        &self,
        group: &GroupId,
    ) -> Result<Vec<(AccountKey, InboundSessions)>, StoreError> {
        Ok(self
            .collect::<InboundSessions>(Tree::GroupSessions, &group.0, "group sessions")?
            .into_iter()
            .filter_map(|(k, s)| {
                let key: [u8; 32] = k.get(16..48)?.try_into().ok()?;
                Some((AccountKey(key), s))
            })
            .collect())
    }

    /// The pairwise Olm sessions with a member of a group (pickles, most recently used
    /// first), over which sender keys travel.
    pub fn member_sessions(&self, member: &AccountKey) -> Result<Vec<String>, StoreError> {
        Ok(self
            .get(Tree::MemberSessions, &member.0, "member sessions")?
            .unwrap_or_default())
    }

    pub fn group_message(&self, seq: Seq) -> Result<Option<GroupMessage>, StoreError> {
        self.get(Tree::GroupMessages, &seq.key(), "group message")
    }

    /// The messages of `group`, in sequence order.
    pub fn group_messages(&self, group: &GroupId) -> Result<Vec<(Seq, GroupMessage)>, StoreError> {
        let mut out = Vec::new();
        self.walk::<GroupMessage>(Tree::GroupMessages, &[], "group message", |k, m| {
            if &m.group == group {
                out.extend(Seq::from_key(k).map(|s| (s, m)));
            }
            true
        })?;
        Ok(out)
    }

    pub fn group_outbox(&self) -> Result<Vec<GroupOutboxEntry>, StoreError> {
        Ok(self
            .collect::<GroupOutboxEntry>(Tree::GroupOutbox, &[], "group outbox entry")?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    pub fn group_outbox_len(&self) -> usize {
        self.tree(Tree::GroupOutbox).len()
    }
}

impl Batch {
    pub fn put_group(&mut self, group: &GroupRecord) -> Result<(), StoreError> {
        self.put(Tree::Groups, group.id.0, group)
    }

    pub fn remove_group(&mut self, id: &GroupId) {
        self.remove(Tree::Groups, id.0);
    }

    pub fn put_group_name(&mut self, name: &str, id: &GroupId) {
        self.put_raw(Tree::GroupNames, name.as_bytes(), id.0);
    }

    pub fn remove_group_name(&mut self, name: &str) {
        self.remove(Tree::GroupNames, name.as_bytes());
    }

    pub fn put_group_sessions(
        &mut self,
        group: &GroupId,
        member: &AccountKey,
        sessions: &InboundSessions,
    ) -> Result<(), StoreError> {
        self.put(Tree::GroupSessions, concat(&group.0, &member.0), sessions)
    }

    pub fn remove_group_sessions(&mut self, group: &GroupId, member: &AccountKey) {
        self.remove(Tree::GroupSessions, concat(&group.0, &member.0));
    }

    pub fn put_member_sessions(
        &mut self,
        member: &AccountKey,
        pickles: &[String],
    ) -> Result<(), StoreError> {
        self.put(Tree::MemberSessions, member.0, pickles)
    }

    pub fn put_group_message(&mut self, seq: Seq, m: &GroupMessage) -> Result<(), StoreError> {
        self.put(Tree::GroupMessages, seq.key(), m)
    }

    pub fn remove_group_message(&mut self, seq: Seq) {
        self.remove(Tree::GroupMessages, seq.key());
    }

    pub fn put_group_outbox(&mut self, e: &GroupOutboxEntry) -> Result<(), StoreError> {
        self.put(Tree::GroupOutbox, e.seq.key(), e)
    }

    /// The envelopes of the group outbox entries this batch puts, in order.
    pub fn group_outbox_envelopes(&self) -> Vec<Vec<u8>> {
        self.ops
            .iter()
            .filter(|(tree, _, _)| *tree == Tree::GroupOutbox)
            .filter_map(|(_, _, v)| v.as_deref())
            .filter_map(|v| sotto_protocol::codec::decode::<GroupOutboxEntry>(v).ok())
            .map(|e| e.envelope)
            .collect()
    }

    pub fn remove_group_outbox(&mut self, seq: Seq) {
        self.remove(Tree::GroupOutbox, seq.key());
    }
}
