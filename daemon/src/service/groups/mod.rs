//! Groups (`group.*`, and `message.send`/`message.list` for a group's name).
//!
//! A group lives in its log of signed changes (see `sotto_protocol::group`): every
//! operation here makes one change, signs it, and leaves it at the group's dead drop under
//! the secret current before it, so that every member (a removed one too) learns of it;
//! members added get the whole log in an invitation over their pairwise session. Group
//! messages are encrypted once in this node's Megolm session and left once at the group's
//! dead drop, whatever the group's size; the session key is shared first with every other
//! member over a pairwise Olm session (`keys`). Everything a group operation changes is written in one transaction
//! under the account lock, with the invitations it sends.

mod invite;
mod keys;
mod manage;
mod messages;
mod receive;
mod rekey;

use std::collections::HashMap;

use rand::rngs::OsRng;
use serde::Serialize;
use serde_json::Value;
use sotto_protocol::chat::LocalAccount;
use sotto_protocol::content::{Body, Content, GroupInvite, MessageId};
use sotto_protocol::envelope;
use sotto_protocol::group::{
    self as proto, Change, GroupId, GroupSecret, Log, Member, Op, Payload, SenderKey, Sent,
    State as GroupState,
};
use sotto_protocol::identity::AccountKey;

use super::{ContactError, MessageError, MessageView, Service, Signal, MAX_NAME_CHARS};
use crate::clock::unix_ms;
use crate::config::GroupsFrom;
use crate::store::{
    self, Batch, Direction, GroupMessage, GroupOutboxEntry, GroupRecord, GroupStatus,
    InboundSessions, Outbound, Seq, State, StoreError,
};

/// Groups a node keeps at most (invitations included).
pub const MAX_GROUPS: usize = 1_000;
/// Members a group message is also pushed to directly, at most: online contacts whose
/// node the sender knows. The rest fetch it from the group's dead drop.
pub const MAX_DIRECT_PUSH: usize = 32;
/// Invitations from strangers (message requests) kept waiting at most.
pub const MAX_STRANGER_INVITATIONS: usize = 16;
/// Members a member passes a group envelope it took on to, at most (its contacts among the
/// members, drawn at random): a message spreads along contacts.
pub const MAX_FORWARD: usize = 8;
/// Members expected to pass on an envelope they fetched from the dead drop (each does with
/// probability this over the group's size): every member fetches the same envelope, so
/// that passing each on from all of them would cost a group of N members N times
/// [`MAX_FORWARD`] pushes. Pushed envelopes are always passed on.
pub const FETCHED_PASS_ON: usize = 16;
/// Group envelopes waiting for the group dead drop at most; sending refuses beyond.
pub const MAX_GROUP_OUTBOX: usize = 10_000;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    #[error("no account yet: create one with `sotto init --name NAME`")]
    NoAccount,
    #[error("no group named {0:?}")]
    Unknown(String),
    #[error("{0:?} is taken by a contact or a group; choose another name")]
    NameTaken(String),
    #[error("a group name is 1 to 64 characters, without control characters")]
    BadName,
    #[error("only an admin of {0:?} can do that")]
    NotAdmin(String),
    #[error("{who:?} is not a member of {group:?}")]
    NotMember { group: String, who: String },
    #[error("{0:?} is a member already")]
    AlreadyMember(String),
    #[error("{0:?} is a message request, not a contact: accept it first")]
    Request(String),
    #[error("you are not in {0:?} (left, removed, or only invited: `sotto group join`)")]
    NotJoined(String),
    #[error("{0:?} is not an invitation")]
    NotInvited(String),
    #[error("this node does not hold {0:?}'s current key yet; it comes with an admin's rekey (try again later)")]
    NoCurrentKey(String),
    #[error("at most {limit} groups")]
    TooMany { limit: usize },
    #[error("at most {limit} members")]
    Full { limit: usize },
    #[error("the group outbox is full ({limit} envelopes waiting); try again later")]
    OutboxFull { limit: usize },
    #[error("the message is empty")]
    Empty,
    #[error("the message is too long: limit {limit} bytes, got {got}")]
    TooLong { limit: usize, got: usize },
    #[error(transparent)]
    Contact(Box<ContactError>),
    #[error("cannot invite: {0}")]
    Invite(Box<MessageError>),
    #[error("{0}")]
    Protocol(#[from] proto::GroupError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl From<ContactError> for GroupError {
    fn from(e: ContactError) -> Self {
        match e {
            ContactError::NoAccount => GroupError::NoAccount,
            ContactError::Store(e) => GroupError::Store(e),
            other => GroupError::Contact(Box::new(other)),
        }
    }
}

impl From<MessageError> for GroupError {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::NoAccount => GroupError::NoAccount,
            MessageError::Store(e) => GroupError::Store(e),
            other => GroupError::Invite(Box::new(other)),
        }
    }
}

/// A group as `group list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    pub name: String,
    pub id: String,
    /// `joined`, `invited`, `left` or `removed`.
    pub status: &'static str,
    /// `admin`, `member` or `none`.
    pub role: &'static str,
    pub member_count: usize,
    pub title: String,
    pub description: String,
    pub created_ms: u64,
}

/// A member as `group info` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// The contact's name, "me", or a stable label (`NAME~ADDRESS6`) for one who is not a
    /// contact.
    pub name: String,
    pub address: String,
    pub admin: bool,
    pub contact: bool,
}

/// `group info`.
#[derive(Clone, Debug, Serialize)]
pub struct GroupInfo {
    #[serde(flatten)]
    pub group: GroupView,
    pub members: Vec<MemberView>,
    pub admins: Vec<String>,
    /// Group envelopes dropped (from non-members, undecryptable, malformed).
    pub dropped: u64,
    /// The current secret was sealed to someone who is no member now (a member who left
    /// can read on) or not to every member: an admin is to rekey.
    pub key_stale: bool,
}

/// What became of a group envelope fetched from the group's dead drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupTaken {
    /// Taken (or known already).
    Taken,
    /// Not for this node, or refused: counted and dropped.
    Dropped,
}

/// The staged parts of a group operation: outbox entries to signal, events to publish.
#[derive(Default)]
struct Staged {
    queued: Vec<Seq>,
    events: Vec<(&'static str, &'static str, Value)>,
    deposits: usize,
    /// The staged sender-key bundles (by envelope digest), with the tags of the members
    /// they hold a box for.
    bundles: HashMap<[u8; 32], Vec<[u8; 8]>>,
    /// Ids of the messages stored (changes parked for them apply after the commit).
    stored: Vec<MessageId>,
}

fn status_name(s: GroupStatus) -> &'static str {
    match s {
        GroupStatus::Joined => "joined",
        GroupStatus::Invited { .. } => "invited",
        GroupStatus::Left => "left",
        GroupStatus::Removed => "removed",
    }
}

/// A group this node is in, ready for a change or a message.
struct Joined {
    record: GroupRecord,
    log: Log,
    state: GroupState,
    /// The current secret and the hash of its change.
    secret: ([u8; 32], GroupSecret),
}

/// The log of a stored group (its changes were checked when they arrived).
/// The group's state, as its log gives it (none for a log that does not replay).
pub(in crate::service) fn state_of(record: &GroupRecord) -> Option<GroupState> {
    log_of(record).state()
}

fn log_of(record: &GroupRecord) -> Log {
    let mut log = Log::new(record.id);
    for c in &record.changes {
        log.insert_trusted(c.clone());
    }
    log
}

/// The group envelopes `batch` puts in the group outbox, in order.
fn staged_envelopes(batch: &Batch) -> Vec<Vec<u8>> {
    batch.group_outbox_envelopes()
}

/// A card's name as a member's: at most 64 bytes, cut on a character boundary.
fn member_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if out.len() + c.len_utf8() > proto::MAX_MEMBER_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.chars().any(char::is_control)
        && name.len() <= proto::MAX_NAME_BYTES
}

impl Service {
    fn group_view(
        &self,
        record: &GroupRecord,
        state: Option<&GroupState>,
        me: &AccountKey,
    ) -> GroupView {
        GroupView {
            name: record.local_name.clone(),
            id: record.id.to_string(),
            status: status_name(record.status),
            role: match state {
                Some(s) if s.is_admin(me) => "admin",
                Some(s) if s.is_member(me) => "member",
                _ => "none",
            },
            member_count: state.map_or(0, |s| s.members.len()),
            title: state.map(|s| s.name.clone()).unwrap_or_default(),
            description: state.map(|s| s.description.clone()).unwrap_or_default(),
            created_ms: state.map_or(0, |s| s.created_ms),
        }
    }

    /// The name this node shows for member `key`: a contact's name, "me", or a label.
    pub(in crate::service) fn member_label(
        &self,
        key: &AccountKey,
        name: &str,
        me: &AccountKey,
    ) -> Result<(String, bool), StoreError> {
        if key == me {
            return Ok(("me".into(), false));
        }
        if let Some(c) = self.inner.store.contact(key)? {
            if !c.request {
                return Ok((c.name, true));
            }
        }
        let address = key.address();
        Ok((format!("{name}~{}", &address[..6]), false))
    }

    fn group_by_name(&self, name: &str) -> Result<GroupRecord, GroupError> {
        let id = match self.inner.store.group_named(name)? {
            Some(id) => id,
            None => GroupId::parse(name).ok_or_else(|| GroupError::Unknown(name.into()))?,
        };
        self.inner
            .store
            .group(&id)?
            .ok_or_else(|| GroupError::Unknown(name.into()))
    }

    /// Is `name` free among contacts and groups?
    pub(super) fn name_free(&self, name: &str) -> Result<bool, StoreError> {
        Ok(!self.inner.store.name_taken(name)?)
    }

    /// A local name for a group called `title`: the title, made unique.
    fn unique_group_name(&self, title: &str) -> Result<String, StoreError> {
        let base: String = title
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME_CHARS - 4)
            .collect();
        let base = if base.trim().is_empty() {
            "group".to_owned()
        } else {
            base
        };
        if self.name_free(&base)? {
            return Ok(base);
        }
        for i in 2..1_000 {
            let n = format!("{base} ({i})");
            if self.name_free(&n)? {
                return Ok(n);
            }
        }
        Ok(format!("{base} {}", rand::random::<u32>()))
    }

    /// Contacts named in `names`, as members of a group.
    fn members_from_contacts(
        &self,
        names: &[String],
    ) -> Result<Vec<(AccountKey, store::Contact, Member)>, GroupError> {
        let mut out = Vec::new();
        for name in names {
            let (key, contact) = self.resolve(name)?;
            if contact.request {
                return Err(GroupError::Request(name.clone()));
            }
            let card = sotto_protocol::card::Card::from_bytes(&contact.card)
                .map_err(|e| GroupError::Contact(Box::new(ContactError::BadCard(e))))?;
            let member = Member {
                account: key,
                seal_key: card.body().seal_key,
                olm: proto::OlmKeys {
                    identity: card.body().session_key,
                    fallback: card.body().fallback_key,
                },
                name: member_name(&card.body().name),
            };
            if !out.iter().any(|(k, _, _)| k == &key) {
                out.push((key, contact, member));
            }
        }
        Ok(out)
    }

    fn self_member(account: &LocalAccount) -> Member {
        Member {
            account: account.identity.public(),
            seal_key: account.seal.public(),
            olm: proto::OlmKeys {
                identity: account.device.session_key(),
                fallback: account.device.fallback_key(),
            },
            name: member_name(&account.name),
        }
    }

    /// The group `group` as a member about to change it or write to it: joined, still a
    /// member in its state, holding its current secret; else the error that says which.
    fn joined(&self, group: &str, me: &AccountKey) -> Result<Joined, GroupError> {
        let record = self.group_by_name(group)?;
        if record.status != GroupStatus::Joined {
            return Err(GroupError::NotJoined(group.into()));
        }
        let log = log_of(&record);
        let state = log
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        if !state.is_member(me) {
            return Err(GroupError::NotJoined(group.into()));
        }
        let secret = Self::current_secret(&record, &state)
            .ok_or_else(|| GroupError::NoCurrentKey(group.into()))?;
        Ok(Joined {
            record,
            log,
            state,
            secret,
        })
    }

    /// The secret the group's current state names, if this node holds it (a node never
    /// sends under another one).
    fn current_secret(record: &GroupRecord, state: &GroupState) -> Option<([u8; 32], GroupSecret)> {
        record
            .secrets
            .iter()
            .rev()
            .find(|(h, _)| Some(*h) == state.key_change)
            .map(|(h, s)| (*h, GroupSecret::from_bytes(*s)))
    }

    fn push_secret(record: &mut GroupRecord, hash: [u8; 32], secret: &GroupSecret) {
        if record.secrets.iter().any(|(h, _)| *h == hash) {
            return;
        }
        record.secrets.push((hash, *secret.bytes()));
        let over = record
            .secrets
            .len()
            .saturating_sub(store::groups::MAX_SECRETS);
        record.secrets.drain(..over);
    }

    /// Seal `payload` under `secret` and put it in the group outbox, for the group's dead
    /// drop.
    fn stage_group_deposit(
        &self,
        batch: &mut Batch,
        staged: &mut Staged,
        group: GroupId,
        secret: &GroupSecret,
        payload: &Payload,
        message: Option<(Seq, MessageId)>,
    ) -> Result<(), GroupError> {
        let drop = secret.drop_secret();
        self.stage_group_deposit_at(batch, staged, group, secret, &drop, payload, message)
    }

    /// Seal `payload` under `secret` and put it in the group outbox, for the dead drop of
    /// `drop` (the group's, or one of its key dead drops).
    #[allow(clippy::too_many_arguments)]
    fn stage_group_deposit_at(
        &self,
        batch: &mut Batch,
        staged: &mut Staged,
        group: GroupId,
        secret: &GroupSecret,
        drop: &sotto_protocol::deaddrop::Secret,
        payload: &Payload,
        message: Option<(Seq, MessageId)>,
    ) -> Result<(), GroupError> {
        if self.inner.store.group_outbox_len() + staged.deposits >= MAX_GROUP_OUTBOX {
            return Err(GroupError::OutboxFull {
                limit: MAX_GROUP_OUTBOX,
            });
        }
        let envelope = proto::seal_payload(secret, payload, &mut OsRng)?;
        if let Payload::SenderKeys(bundle) = payload {
            staged.bundles.insert(
                envelope::digest(&envelope),
                bundle.boxes.iter().map(|(t, _)| *t).collect(),
            );
        }
        let seq = match message {
            Some((seq, _)) => seq,
            None => self.inner.store.next_seq()?,
        };
        let now = unix_ms();
        batch.put_group_outbox(&GroupOutboxEntry {
            seq,
            group,
            message: message.map(|(_, id)| id),
            drop_secret: *drop.bytes(),
            envelope,
            hosts: Vec::new(),
            failures: 0,
            next_attempt_at: now,
            created_ms: now,
        })?;
        staged.deposits += 1;
        Ok(())
    }

    /// Invite `to` (a contact) with the whole log and the current secret.
    async fn stage_invites(
        &self,
        account: &LocalAccount,
        batch: &mut Batch,
        staged: &mut Staged,
        log: &Log,
        secret: ([u8; 32], [u8; 32]),
        to: &[(AccountKey, store::Contact)],
    ) -> Result<(), GroupError> {
        let changes: Vec<Change> = log.changes().cloned().collect();
        let parts = GroupInvite::split(log.id(), &changes, secret);
        for (key, contact) in to {
            for part in &parts {
                let content = Content {
                    id: MessageId::random(&mut OsRng),
                    sent_at: unix_ms(),
                    body: Body::GroupInvite(part.clone()),
                };
                let s = self
                    .stage_outgoing(account, key, contact, &content, batch)
                    .await?;
                staged.queued.push(s.seq);
            }
        }
        Ok(())
    }

    /// Commit `batch` (see [`Service::commit_group`]) and then push its group envelopes to
    /// at most [`MAX_DIRECT_PUSH`] of `state`'s members who are contacts. Releases `guard`
    /// (the account lock) before pushing.
    async fn commit_and_push<G>(
        &self,
        batch: Batch,
        staged: Staged,
        state: &GroupState,
        me: &AccountKey,
        guard: G,
    ) -> Result<(), GroupError> {
        // A sender-key bundle only to the members it holds a box for.
        let envelopes = staged_envelopes(&batch);
        let for_whom: Vec<Option<&Vec<[u8; 8]>>> = envelopes
            .iter()
            .map(|e| staged.bundles.get(&envelope::digest(e)))
            .collect();
        let pushes = self.direct_pushes(state, me, &envelopes, MAX_DIRECT_PUSH, |k, i| {
            for_whom[i].is_none_or(|tags| tags.contains(&proto::tag(k)))
        })?;
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.push_directly(pushes);
        Ok(())
    }

    /// Commit `batch` with the events of `staged`, then wake whoever has work from it.
    async fn commit_group(&self, mut batch: Batch, staged: Staged) -> Result<(), GroupError> {
        let order = self.inner.events.order().await;
        let events = staged
            .events
            .iter()
            .map(|(kind, key, v)| self.inner.events.stage(&mut batch, kind, key, v))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(events);
        drop(order);
        for seq in staged.queued {
            self.signal(Signal::Queued(seq)).await;
        }
        if staged.deposits > 0 {
            self.inner.group_wake.notify_one();
        }
        Ok(())
    }

    fn changed_event(
        &self,
        staged: &mut Staged,
        record: &GroupRecord,
        state: Option<&GroupState>,
        me: &AccountKey,
        kind: &'static str,
    ) {
        staged.events.push((
            kind,
            "group",
            serde_json::to_value(self.group_view(record, state, me)).unwrap_or_default(),
        ));
    }
}
