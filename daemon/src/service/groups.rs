//! Groups (`group.*`, and `message.send`/`message.list` for a group's name).
//!
//! A group lives in its log of signed changes (see `sotto_protocol::group`): every
//! operation here makes one change, signs it, and leaves it at the group's dead drop under
//! the secret current before it, so that every member (a removed one too) learns of it;
//! members added get the whole log in an invitation over their pairwise session. Group
//! messages are encrypted once in this node's Megolm session and left once at the group's
//! dead drop, whatever the group's size; the session key is announced there first, under
//! the group secret. Everything a group operation changes is written in one transaction
//! under the account lock, with the invitations it sends.

use rand::rngs::OsRng;
use serde::Serialize;
use serde_json::Value;
use sotto_protocol::chat::LocalAccount;
use sotto_protocol::content::{Body, Content, GroupInvite, MessageId, MAX_TEXT_BYTES};
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
}

fn status_name(s: GroupStatus) -> &'static str {
    match s {
        GroupStatus::Joined => "joined",
        GroupStatus::Invited { .. } => "invited",
        GroupStatus::Left => "left",
        GroupStatus::Removed => "removed",
    }
}

/// The log of a stored group (its changes were checked when they arrived).
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
    fn member_label(
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
                name: card.body().name.chars().take(32).collect(),
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
            name: account.name.chars().take(32).collect(),
        }
    }

    /// The secret the group's current state names (else the newest held).
    fn current_secret(record: &GroupRecord, state: &GroupState) -> Option<([u8; 32], GroupSecret)> {
        record
            .secrets
            .iter()
            .rev()
            .find(|(h, _)| Some(*h) == state.key_change)
            .or_else(|| record.secrets.last())
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

    /// Seal `payload` under `secret` and put it in the group outbox.
    fn stage_group_deposit(
        &self,
        batch: &mut Batch,
        staged: &mut Staged,
        group: GroupId,
        secret: &GroupSecret,
        payload: &Payload,
        message: Option<(Seq, MessageId)>,
    ) -> Result<(), GroupError> {
        if self.inner.store.group_outbox_len() + staged.deposits >= MAX_GROUP_OUTBOX {
            return Err(GroupError::OutboxFull {
                limit: MAX_GROUP_OUTBOX,
            });
        }
        let envelope = proto::seal_payload(secret, payload, &mut OsRng)?;
        let seq = match message {
            Some((seq, _)) => seq,
            None => self.inner.store.next_seq()?,
        };
        let now = unix_ms();
        batch.put_group_outbox(&GroupOutboxEntry {
            seq,
            group,
            message: message.map(|(_, id)| id),
            drop_secret: *secret.drop_secret().bytes(),
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

    /// `group.create`
    pub async fn group_create(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<GroupView, GroupError> {
        if !valid_group_name(name) {
            return Err(GroupError::BadName);
        }
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        if !self.name_free(name)? {
            return Err(GroupError::NameTaken(name.into()));
        }
        if self.inner.store.groups()?.len() >= MAX_GROUPS {
            return Err(GroupError::TooMany { limit: MAX_GROUPS });
        }
        let others = self.members_from_contacts(members)?;
        if others.len() + 1 > proto::MAX_ADDED {
            return Err(GroupError::Full {
                limit: proto::MAX_ADDED,
            });
        }
        let me = account.identity.public();
        let mut all = vec![Self::self_member(account)];
        all.extend(
            others
                .iter()
                .filter(|(k, _, _)| k != &me)
                .map(|(_, _, m)| m.clone()),
        );
        let nonce: [u8; 16] = rand::random();
        let id = GroupId::derive(&me, &nonce);
        let secret = GroupSecret::generate(&mut OsRng);
        let to: Vec<(AccountKey, [u8; 32])> = all.iter().map(|m| (m.account, m.seal_key)).collect();
        let rekey = secret.rekey(&to, &mut OsRng)?;
        let change = Change::new(
            &account.identity,
            id,
            0,
            unix_ms(),
            Op::Create {
                nonce,
                name: name.into(),
                description: String::new(),
                members: all,
            },
            Some(rekey),
        )?;
        let hash = change.hash();
        let mut log = Log::new(id);
        log.insert(change)?;
        let state = log.state().ok_or(proto::GroupError::Invalid(
            "the create change did not apply",
        ))?;
        let mut record = GroupRecord {
            id,
            local_name: name.into(),
            status: GroupStatus::Joined,
            changes: log.changes().cloned().collect(),
            secrets: Vec::new(),
            outbound: None,
            pending: Vec::new(),
            joined_ms: unix_ms(),
            assembling: None,
            dropped: 0,
        };
        Self::push_secret(&mut record, hash, &secret);
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        let invited: Vec<(AccountKey, store::Contact)> = others
            .into_iter()
            .filter(|(k, _, _)| k != &me)
            .map(|(k, c, _)| (k, c))
            .collect();
        self.stage_invites(
            account,
            &mut batch,
            &mut staged,
            &log,
            (*secret.bytes(), hash),
            &invited,
        )
        .await?;
        batch.put_group(&record)?;
        batch.put_group_name(name, &id);
        self.changed_event(&mut staged, &record, Some(&state), &me, "group.changed");
        let view = self.group_view(&record, Some(&state), &me);
        self.commit_group(batch, staged).await?;
        drop(guard);
        Ok(view)
    }

    /// Make a change to a joined group as this node: sign it, add it to the log, leave it
    /// at the group's dead drop under the secret current before it, and (for a change that
    /// rekeys) keep the new secret. `make` gets the state and returns the op and, for an op
    /// that rekeys, the members after it.
    async fn group_change(
        &self,
        group: &str,
        admin_only: bool,
        make: impl FnOnce(
            &GroupState,
            &AccountKey,
        ) -> Result<(Op, Vec<(AccountKey, [u8; 32])>), GroupError>,
        invite: &[(AccountKey, store::Contact)],
    ) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let mut record = self.group_by_name(group)?;
        if record.status != GroupStatus::Joined {
            return Err(GroupError::NotJoined(group.into()));
        }
        let mut log = log_of(&record);
        let state = log
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        if admin_only && !state.is_admin(&me) {
            return Err(GroupError::NotAdmin(group.into()));
        }
        if !state.is_member(&me) {
            return Err(GroupError::NotJoined(group.into()));
        }
        let (_, old_secret) = Self::current_secret(&record, &state)
            .ok_or_else(|| GroupError::NotJoined(group.into()))?;
        let (op, recipients) = make(&state, &me)?;
        let secret = op.rekeys().then(|| GroupSecret::generate(&mut OsRng));
        let rekey = match &secret {
            Some(s) => Some(s.rekey(&recipients, &mut OsRng)?),
            None => None,
        };
        let leaving = matches!(op, Op::Leave);
        let change = Change::new(
            &account.identity,
            record.id,
            log.next_lamport(),
            unix_ms(),
            op,
            rekey,
        )?;
        let hash = change.hash();
        log.insert(change.clone())?;
        let after = log
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        self.stage_group_deposit(
            &mut batch,
            &mut staged,
            record.id,
            &old_secret,
            &Payload::Change(change),
            None,
        )?;
        if let Some(s) = &secret {
            Self::push_secret(&mut record, hash, s);
            self.stage_invites(
                account,
                &mut batch,
                &mut staged,
                &log,
                (*s.bytes(), hash),
                invite,
            )
            .await?;
        }
        if leaving {
            record.status = GroupStatus::Left;
            record.secrets.clear();
            record.outbound = None;
            record.pending.clear();
        }
        log.strip_rekeys(after.key_change);
        record.changes = log.changes().cloned().collect();
        batch.put_group(&record)?;
        self.changed_event(&mut staged, &record, Some(&after), &me, "group.changed");
        let view = self.group_view(&record, Some(&after), &me);
        self.commit_group(batch, staged).await?;
        drop(guard);
        Ok(view)
    }

    /// The members of `state`, as rekey recipients, with `extra` added and `without` left
    /// out.
    fn recipients(
        state: &GroupState,
        extra: &[Member],
        without: Option<&AccountKey>,
    ) -> Vec<(AccountKey, [u8; 32])> {
        let mut out: Vec<(AccountKey, [u8; 32])> = state
            .members
            .iter()
            .filter(|(k, _)| Some(*k) != without)
            .map(|(k, m)| (*k, m.seal_key))
            .collect();
        for m in extra {
            if !out.iter().any(|(k, _)| k == &m.account) {
                out.push((m.account, m.seal_key));
            }
        }
        out
    }

    /// `group.add`
    pub async fn group_add(
        &self,
        group: &str,
        contacts: &[String],
    ) -> Result<GroupView, GroupError> {
        let added = self.members_from_contacts(contacts)?;
        let invite: Vec<(AccountKey, store::Contact)> =
            added.iter().map(|(k, c, _)| (*k, c.clone())).collect();
        let members: Vec<Member> = added.into_iter().map(|(_, _, m)| m).collect();
        self.group_change(
            group,
            true,
            |state, _| {
                let new: Vec<Member> = members
                    .iter()
                    .filter(|m| !state.is_member(&m.account))
                    .cloned()
                    .collect();
                if new.is_empty() {
                    return Err(GroupError::AlreadyMember(contacts.join(", ")));
                }
                if state.members.len() + new.len() > proto::MAX_MEMBERS {
                    return Err(GroupError::Full {
                        limit: proto::MAX_MEMBERS,
                    });
                }
                if new.len() > proto::MAX_ADDED {
                    return Err(GroupError::Full {
                        limit: proto::MAX_ADDED,
                    });
                }
                let recipients = Self::recipients(state, &new, None);
                Ok((Op::Add(new), recipients))
            },
            &invite,
        )
        .await
    }

    /// The member of `state` that `who` names: a contact's name, a label, or an address.
    fn member_named(
        &self,
        state: &GroupState,
        who: &str,
        me: &AccountKey,
    ) -> Result<Option<AccountKey>, StoreError> {
        if let Ok((key, _)) = self.resolve(who) {
            if state.is_member(&key) {
                return Ok(Some(key));
            }
        }
        for (key, m) in &state.members {
            let (label, _) = self.member_label(key, &m.name, me)?;
            if label == who || key.address() == who {
                return Ok(Some(*key));
            }
        }
        Ok(None)
    }

    /// `group.remove`
    pub async fn group_remove(&self, group: &str, who: &str) -> Result<GroupView, GroupError> {
        let mut target = None;
        {
            let record = self.group_by_name(group)?;
            let me = self.own_key().await?;
            if let Some(state) = log_of(&record).state() {
                target = self.member_named(&state, who, &me)?;
            }
        }
        let target = target.ok_or_else(|| GroupError::NotMember {
            group: group.into(),
            who: who.into(),
        })?;
        let view = self
            .group_change(
                group,
                true,
                |state, me| {
                    if &target == me {
                        return Err(GroupError::NotMember {
                            group: "yourself: use `sotto group leave`".into(),
                            who: who.into(),
                        });
                    }
                    Ok((
                        Op::Remove(target),
                        Self::recipients(state, &[], Some(&target)),
                    ))
                },
                &[],
            )
            .await?;
        if let Ok(record) = self.group_by_name(group) {
            let mut batch = Batch::new();
            batch.remove_group_sessions(&record.id, &target);
            self.inner.store.commit(batch).await?;
        }
        Ok(view)
    }

    /// `group.leave`
    pub async fn group_leave(&self, group: &str) -> Result<GroupView, GroupError> {
        self.group_change(group, false, |_, _| Ok((Op::Leave, Vec::new())), &[])
            .await
    }

    /// `group.rename`
    pub async fn group_rename(&self, group: &str, title: &str) -> Result<GroupView, GroupError> {
        if !valid_group_name(title) {
            return Err(GroupError::BadName);
        }
        let view = self
            .group_change(
                group,
                true,
                |_, _| Ok((Op::Rename(title.into()), Vec::new())),
                &[],
            )
            .await?;
        // The local name follows the title when it is free.
        self.rename_locally(group, title).await?;
        Ok(view)
    }

    async fn rename_locally(&self, old: &str, title: &str) -> Result<(), GroupError> {
        let _guard = self.inner.account.lock().await;
        let mut record = self.group_by_name(old)?;
        if record.local_name == title || !self.name_free(title)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.remove_group_name(&record.local_name);
        batch.put_group_name(title, &record.id);
        record.local_name = title.into();
        batch.put_group(&record)?;
        self.inner.store.commit(batch).await?;
        Ok(())
    }

    /// `group.describe`
    pub async fn group_describe(&self, group: &str, text: &str) -> Result<GroupView, GroupError> {
        if text.len() > proto::MAX_DESCRIPTION_BYTES {
            return Err(GroupError::TooLong {
                limit: proto::MAX_DESCRIPTION_BYTES,
                got: text.len(),
            });
        }
        self.group_change(
            group,
            true,
            |_, _| Ok((Op::Describe(text.into()), Vec::new())),
            &[],
        )
        .await
    }

    /// `group.admin`
    pub async fn group_make_admin(&self, group: &str, who: &str) -> Result<GroupView, GroupError> {
        let record = self.group_by_name(group)?;
        let me = self.own_key().await?;
        let state = log_of(&record)
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        let target = self
            .member_named(&state, who, &me)?
            .ok_or_else(|| GroupError::NotMember {
                group: group.into(),
                who: who.into(),
            })?;
        self.group_change(
            group,
            true,
            |_, _| Ok((Op::MakeAdmin(target), Vec::new())),
            &[],
        )
        .await
    }

    async fn own_key(&self) -> Result<AccountKey, GroupError> {
        self.own_account().ok_or(GroupError::NoAccount)
    }

    /// `group.list`
    pub async fn group_list(&self) -> Result<Vec<GroupView>, GroupError> {
        let me = self.own_key().await?;
        let mut out = Vec::new();
        for record in self.inner.store.groups()? {
            let state = log_of(&record).state();
            out.push(self.group_view(&record, state.as_ref(), &me));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `group.info`
    pub async fn group_info(&self, group: &str) -> Result<GroupInfo, GroupError> {
        let me = self.own_key().await?;
        let record = self.group_by_name(group)?;
        let state = log_of(&record).state();
        let mut members = Vec::new();
        if let Some(s) = &state {
            for (key, m) in &s.members {
                let (name, contact) = self.member_label(key, &m.name, &me)?;
                members.push(MemberView {
                    name,
                    address: key.address(),
                    admin: m.admin,
                    contact,
                });
            }
        }
        members.sort_by(|a, b| b.admin.cmp(&a.admin).then(a.name.cmp(&b.name)));
        let admins = members
            .iter()
            .filter(|m| m.admin)
            .map(|m| m.name.clone())
            .collect();
        Ok(GroupInfo {
            group: self.group_view(&record, state.as_ref(), &me),
            members,
            admins,
            dropped: record.dropped,
        })
    }

    /// `group.join`: accept an invitation.
    pub async fn group_join(&self, group: &str) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let mut record = self.group_by_name(group)?;
        if !matches!(record.status, GroupStatus::Invited { .. }) {
            return Err(GroupError::NotInvited(group.into()));
        }
        record.status = GroupStatus::Joined;
        record.joined_ms = unix_ms();
        let state = log_of(&record).state();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        batch.put_group(&record)?;
        self.changed_event(&mut staged, &record, state.as_ref(), &me, "group.changed");
        let view = self.group_view(&record, state.as_ref(), &me);
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.inner.fetch_wake.notify_one();
        Ok(view)
    }

    /// `group.decline`: forget an invitation.
    pub async fn group_decline(&self, group: &str) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let record = self.group_by_name(group)?;
        if !matches!(record.status, GroupStatus::Invited { .. }) {
            return Err(GroupError::NotInvited(group.into()));
        }
        let view = self.group_view(&record, log_of(&record).state().as_ref(), &me);
        let mut batch = Batch::new();
        batch.remove_group(&record.id);
        batch.remove_group_name(&record.local_name);
        self.inner.store.commit(batch).await?;
        drop(guard);
        Ok(view)
    }

    /// Is `name` a group's?
    pub(super) fn is_group(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.store.group_named(name)?.is_some())
    }

    fn view_group_message(&self, m: &GroupMessage, group: &str, from: &str) -> MessageView {
        MessageView {
            id: m.id.to_string(),
            contact: group.to_owned(),
            group: Some(group.to_owned()),
            direction: match m.direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
            from: from.to_owned(),
            text: m.text.clone(),
            sent_at: m.sent_at,
            received_at: m.received_at,
            state: match m.state {
                State::Queued => "queued",
                State::OnHosts => "on_hosts",
                State::Delivered => "delivered",
                State::Received => "received",
            },
        }
    }

    /// `message.send` to a group: encrypted once in this node's Megolm session (a new one,
    /// announced first, when the secret changed or the session is old), left once at the
    /// group's dead drop.
    pub(super) async fn send_group(
        &self,
        group: &str,
        text: &str,
    ) -> Result<MessageView, GroupError> {
        if text.is_empty() {
            return Err(GroupError::Empty);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(GroupError::TooLong {
                limit: MAX_TEXT_BYTES,
                got: text.len(),
            });
        }
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let mut record = self.group_by_name(group)?;
        if record.status != GroupStatus::Joined {
            return Err(GroupError::NotJoined(group.into()));
        }
        let state = log_of(&record)
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        if !state.is_member(&me) {
            return Err(GroupError::NotJoined(group.into()));
        }
        let (hash, secret) = Self::current_secret(&record, &state)
            .ok_or_else(|| GroupError::NotJoined(group.into()))?;
        let now = unix_ms();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        let key = self.inner.pickle_key;
        let reusable = record.outbound.as_ref().filter(|o| {
            o.key_change == hash
                && o.sent < proto::SESSION_MESSAGES
                && now.saturating_sub(o.created_ms) < proto::SESSION_AGE_MS
        });
        let (mut session, created, sent) = match reusable.and_then(|o| {
            proto::unpickle_session(&o.pickle, &key)
                .ok()
                .map(|s| (s, o))
        }) {
            Some((session, o)) => (session, o.created_ms, o.sent),
            None => {
                let session = proto::new_session();
                let announce =
                    Payload::SenderKey(SenderKey::new(&account.identity, record.id, &session));
                self.stage_group_deposit(
                    &mut batch,
                    &mut staged,
                    record.id,
                    &secret,
                    &announce,
                    None,
                )?;
                (session, now, 0)
            }
        };
        let content = Content::text(MessageId::random(&mut OsRng), self.next_sent_at(), text)
            .map_err(|e| GroupError::Invite(Box::new(MessageError::Content(e))))?;
        let plaintext = content
            .to_bytes()
            .map_err(|e| GroupError::Invite(Box::new(MessageError::Content(e))))?;
        let sent_msg = Sent::encrypt(record.id, me, &mut session, &plaintext);
        record.outbound = Some(Outbound {
            pickle: proto::pickle_session(&session, &key),
            key_change: hash,
            created_ms: created,
            sent: sent.saturating_add(1),
        });
        let seq = self.inner.store.next_seq()?;
        self.stage_group_deposit(
            &mut batch,
            &mut staged,
            record.id,
            &secret,
            &Payload::Message(sent_msg),
            Some((seq, content.id)),
        )?;
        let message = GroupMessage {
            id: content.id,
            group: record.id,
            from: me,
            direction: Direction::Out,
            text: text.into(),
            sent_at: content.sent_at,
            received_at: None,
            state: State::Queued,
        };
        batch.put_group_message(seq, &message)?;
        batch.index_message(&content.id, Some(seq));
        batch.put_group(&record)?;
        let view = self.view_group_message(&message, &record.local_name, "me");
        let pushes = self.direct_pushes(&state, &me, &staged_envelopes(&batch))?;
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.push_directly(pushes);
        Ok(view)
    }

    /// Where to push a message's group envelopes directly, besides the dead drop: to at
    /// most [`MAX_DIRECT_PUSH`] members who are contacts whose node this node knows (none
    /// when this node is mailbox-only: pushing would show its node to them).
    fn direct_pushes(
        &self,
        state: &GroupState,
        me: &AccountKey,
        envelopes: &[Vec<u8>],
    ) -> Result<Vec<(libp2p::PeerId, Vec<libp2p::Multiaddr>, Vec<Vec<u8>>)>, StoreError> {
        if self.inner.mailbox.mailbox_only || envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for key in state.members.keys() {
            if key == me || out.len() >= MAX_DIRECT_PUSH {
                continue;
            }
            let Some(contact) = self.inner.store.contact(key)? else {
                continue;
            };
            if contact.request || contact.route.is_none() {
                continue;
            }
            if let Some((peer, addrs)) = contact.node() {
                out.push((peer, addrs, envelopes.to_vec()));
            }
        }
        Ok(out)
    }

    /// Push group envelopes straight to members' nodes, in the background: the dead drop
    /// is the path that counts; this one only makes it sooner for those online.
    fn push_directly(&self, pushes: Vec<(libp2p::PeerId, Vec<libp2p::Multiaddr>, Vec<Vec<u8>>)>) {
        for (peer, addrs, envelopes) in pushes {
            let net = self.inner.net.clone();
            tokio::spawn(async move {
                for envelope in envelopes {
                    if let Err(e) = net
                        .send(peer, addrs.clone(), crate::net::Frame::Bytes(envelope))
                        .await
                    {
                        tracing::debug!("a direct group push failed: {e}");
                        return;
                    }
                }
            });
        }
    }

    /// A group envelope that came straight from a member's node: it opens under one of the
    /// secrets of a joined group, or it is not a group envelope this node can read.
    pub(super) async fn receive_group_pushed(&self, bytes: &[u8]) -> Option<GroupTaken> {
        let groups = self.inner.store.groups().ok()?;
        for record in groups {
            if record.status != GroupStatus::Joined {
                continue;
            }
            for (hash, secret) in record.secrets.iter().rev().take(2) {
                if proto::open_payload(&GroupSecret::from_bytes(*secret), bytes).is_ok() {
                    return Some(self.receive_group(record.id, *hash, bytes).await);
                }
            }
        }
        None
    }

    /// `message.list` for a group.
    pub(super) fn group_messages(
        &self,
        group: &str,
        limit: Option<usize>,
    ) -> Result<Vec<MessageView>, GroupError> {
        let me = self.own_account().ok_or(GroupError::NoAccount)?;
        let record = self.group_by_name(group)?;
        let state = log_of(&record).state();
        let mut out = Vec::new();
        for (_, m) in self.inner.store.group_messages(&record.id)? {
            let from = match (m.direction, &state) {
                (Direction::Out, _) => "me".to_owned(),
                (Direction::In, s) => {
                    let name = s
                        .as_ref()
                        .and_then(|s| s.members.get(&m.from).map(|x| x.name.clone()))
                        .unwrap_or_default();
                    self.member_label(&m.from, &name, &me)?.0
                }
            };
            let when = m.received_at.map_or(m.sent_at, |r| m.sent_at.min(r));
            out.push((when, self.view_group_message(&m, &record.local_name, &from)));
        }
        out.sort_by_key(|(when, _)| *when);
        let mut out: Vec<MessageView> = out.into_iter().map(|(_, v)| v).collect();
        if let Some(limit) = limit {
            let skip = out.len().saturating_sub(limit);
            out.drain(..skip);
        }
        Ok(out)
    }

    /// The group envelope `seq` is on the group's hosts: its message (if any) moves on.
    pub async fn group_deposited(
        &self,
        seq: Seq,
        message: Option<MessageId>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.remove_group_outbox(seq);
        let mut events = Vec::new();
        if message.is_some() {
            if let Some(mut m) = self.inner.store.group_message(seq)? {
                if m.state == State::Queued {
                    m.state = State::OnHosts;
                    batch.put_group_message(seq, &m)?;
                    let name = self
                        .inner
                        .store
                        .group(&m.group)?
                        .map(|g| g.local_name)
                        .unwrap_or_default();
                    events.push(self.view_group_message(&m, &name, "me"));
                }
            }
        }
        let order = self.inner.events.order().await;
        let staged = events
            .iter()
            .map(|v| {
                self.inner
                    .events
                    .stage(&mut batch, "message.on_hosts", "message", v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(staged);
        drop(order);
        Ok(())
    }

    /// The group dead drops to fetch: for each joined group, the drop secret of each secret
    /// held, with the group and the hash of the change that made the secret.
    pub fn group_drops(
        &self,
    ) -> Result<Vec<(GroupId, [u8; 32], sotto_protocol::deaddrop::Secret)>, StoreError> {
        let mut out = Vec::new();
        for record in self.inner.store.groups()? {
            if record.status != GroupStatus::Joined {
                continue;
            }
            // The newest two: the current secret and the one before (messages sent under it
            // while its change travelled).
            for (hash, secret) in record.secrets.iter().rev().take(2) {
                out.push((
                    record.id,
                    *hash,
                    GroupSecret::from_bytes(*secret).drop_secret(),
                ));
            }
        }
        Ok(out)
    }

    /// A group envelope fetched from the dead drop of `group`'s secret `hash`.
    pub async fn receive_group(&self, group: GroupId, hash: [u8; 32], bytes: &[u8]) -> GroupTaken {
        match self.try_receive_group(group, hash, bytes).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("group envelope refused: {e}");
                GroupTaken::Dropped
            }
        }
    }

    async fn try_receive_group(
        &self,
        group: GroupId,
        hash: [u8; 32],
        bytes: &[u8],
    ) -> Result<GroupTaken, GroupError> {
        let store = &self.inner.store;
        let digest = envelope::digest(bytes);
        if store.is_seen(&digest)? {
            return Ok(GroupTaken::Taken);
        }
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        if store.is_seen(&digest)? {
            return Ok(GroupTaken::Taken);
        }
        let Some(mut record) = store.group(&group)? else {
            return Ok(GroupTaken::Dropped);
        };
        let Some(secret) = record
            .secrets
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, s)| GroupSecret::from_bytes(*s))
        else {
            return Ok(GroupTaken::Dropped);
        };
        let now = unix_ms();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        batch.mark_seen(&digest, now);
        let payload = match proto::open_payload(&secret, bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("a group envelope does not open: {e}");
                record.dropped += 1;
                batch.put_group(&record)?;
                self.inner.store.commit(batch).await?;
                return Ok(GroupTaken::Dropped);
            }
        };
        let mut log = log_of(&record);
        let taken = match payload {
            Payload::Change(change) => self.take_change(
                account,
                &mut record,
                &mut log,
                change,
                &mut batch,
                &mut staged,
            )?,
            Payload::SenderKey(key) => {
                self.take_sender_key(&mut record, &log, key, &mut batch, &mut staged)?
            }
            Payload::Message(sent) => {
                self.take_message(&mut record, &log, sent, now, &mut batch, &mut staged)?
            }
        };
        if !taken {
            record.dropped += 1;
        }
        batch.put_group(&record)?;
        self.commit_group(batch, staged).await?;
        drop(guard);
        Ok(if taken {
            GroupTaken::Taken
        } else {
            GroupTaken::Dropped
        })
    }

    /// A change from the group's dead drop: into the log; a secret sealed to this node is
    /// kept; a removal of this node ends its membership; the rekeying admin rekeys after a
    /// member left.
    fn take_change(
        &self,
        account: &LocalAccount,
        record: &mut GroupRecord,
        log: &mut Log,
        change: Change,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let me = account.identity.public();
        if change.group != record.id {
            return Ok(false);
        }
        let hash = change.hash();
        let rekey = change.rekey.clone();
        if let Err(e) = log.insert(change) {
            tracing::debug!("a group change refused: {e}");
            return Ok(false);
        }
        if let Some(rekey) = &rekey {
            if let Some(s) = GroupSecret::open_rekey(rekey, &me, &account.seal) {
                Self::push_secret(record, hash, &s);
            }
        }
        let Some(state) = log.state() else {
            return Ok(true);
        };
        if !state.is_member(&me) && record.status == GroupStatus::Joined {
            record.status = GroupStatus::Removed;
            record.secrets.clear();
            record.outbound = None;
            record.pending.clear();
        } else if state.stale_key(log) && state.rekeying_admin() == Some(me) {
            if let Some((_, current)) = Self::current_secret(record, &state) {
                let secret = GroupSecret::generate(&mut OsRng);
                let recipients = Self::recipients(&state, &[], None);
                let rekey = secret.rekey(&recipients, &mut OsRng)?;
                let c = Change::new(
                    &account.identity,
                    record.id,
                    log.next_lamport(),
                    unix_ms(),
                    Op::Rekey,
                    Some(rekey),
                )?;
                let h = c.hash();
                log.insert(c.clone())?;
                self.stage_group_deposit(
                    batch,
                    staged,
                    record.id,
                    &current,
                    &Payload::Change(c),
                    None,
                )?;
                Self::push_secret(record, h, &secret);
            }
        }
        let state = log.state();
        if let Some(s) = &state {
            log.strip_rekeys(s.key_change);
            // Sessions of members who are gone open nothing more.
            for (member, _) in self.inner.store.groups_sessions_of(&record.id)? {
                if !s.is_member(&member) {
                    batch.remove_group_sessions(&record.id, &member);
                }
            }
        }
        record.changes = log.changes().cloned().collect();
        // A local name follows a rename when it is free.
        if let Some(s) = &state {
            if s.name != record.local_name && self.name_free(&s.name)? {
                let previous_title = log
                    .changes()
                    .filter_map(|c| match &c.op {
                        Op::Rename(n) => Some(n.clone()),
                        Op::Create { name, .. } => Some(name.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if previous_title.iter().any(|t| t == &record.local_name) {
                    batch.remove_group_name(&record.local_name);
                    batch.put_group_name(&s.name, &record.id);
                    record.local_name = s.name.clone();
                }
            }
        }
        self.changed_event(staged, record, state.as_ref(), &me, "group.changed");
        Ok(true)
    }

    fn take_sender_key(
        &self,
        record: &mut GroupRecord,
        log: &Log,
        key: SenderKey,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let Some(state) = log.state() else {
            return Ok(false);
        };
        if key.group != record.id || !state.is_member(&key.member) {
            return Ok(false);
        }
        let inbound = match key.open() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("a sender key refused: {e}");
                return Ok(false);
            }
        };
        let pickle_key = self.inner.pickle_key;
        let mut sessions = self.inner.store.group_sessions(&record.id, &key.member)?;
        let id = inbound.session_id();
        if !sessions.sessions.iter().any(|(s, _)| s == &id) {
            sessions
                .sessions
                .push((id, proto::pickle_inbound(&inbound, &pickle_key)));
            let over = sessions
                .sessions
                .len()
                .saturating_sub(store::groups::MAX_SESSIONS_PER_MEMBER);
            sessions.sessions.drain(..over);
        }
        // Messages that waited for this key.
        let waiting: Vec<Sent> = record
            .pending
            .iter()
            .filter(|p| p.sender == key.member)
            .cloned()
            .collect();
        record.pending.retain(|p| p.sender != key.member);
        let now = unix_ms();
        for sent in waiting {
            if !self.open_and_store(
                record,
                &state,
                &mut sessions,
                sent.clone(),
                now,
                batch,
                staged,
            )? {
                record.pending.push(sent);
            }
        }
        batch.put_group_sessions(&record.id, &key.member, &sessions)?;
        Ok(true)
    }

    fn take_message(
        &self,
        record: &mut GroupRecord,
        log: &Log,
        sent: Sent,
        now: u64,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let Some(state) = log.state() else {
            return Ok(false);
        };
        if sent.group != record.id || !state.is_member(&sent.sender) {
            // A non-member's post, or a removed member's: refused.
            return Ok(false);
        }
        let mut sessions = self.inner.store.group_sessions(&record.id, &sent.sender)?;
        if self.open_and_store(
            record,
            &state,
            &mut sessions,
            sent.clone(),
            now,
            batch,
            staged,
        )? {
            batch.put_group_sessions(&record.id, &sent.sender, &sessions)?;
            return Ok(true);
        }
        if record.pending.len() >= store::groups::MAX_PENDING {
            record.pending.remove(0);
        }
        record.pending.push(sent);
        Ok(true)
    }

    /// Decrypt `sent` with one of `sessions` and store the message. False if no session
    /// fits (its key has not come yet).
    #[allow(clippy::too_many_arguments)]
    fn open_and_store(
        &self,
        record: &GroupRecord,
        state: &GroupState,
        sessions: &mut InboundSessions,
        sent: Sent,
        now: u64,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let pickle_key = self.inner.pickle_key;
        let Some(slot) = sessions
            .sessions
            .iter_mut()
            .find(|(id, _)| id == &sent.session_id)
        else {
            return Ok(false);
        };
        let Ok(mut session) = proto::unpickle_inbound(&slot.1, &pickle_key) else {
            return Ok(false);
        };
        let (plain, _) = match sent.decrypt(&mut session) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("a group message does not decrypt: {e}");
                return Ok(true);
            }
        };
        slot.1 = proto::pickle_inbound(&session, &pickle_key);
        let Ok(content) = Content::from_bytes(&plain) else {
            return Ok(true);
        };
        if self.inner.store.message_seq(&content.id)?.is_some() {
            return Ok(true);
        }
        let Some(text) = content.as_text() else {
            return Ok(true);
        };
        let seq = self.inner.store.next_seq()?;
        let message = GroupMessage {
            id: content.id,
            group: record.id,
            from: sent.sender,
            direction: Direction::In,
            text: text.to_owned(),
            sent_at: content.sent_at,
            received_at: Some(now),
            state: State::Received,
        };
        batch.put_group_message(seq, &message)?;
        batch.index_message(&content.id, Some(seq));
        let name = state
            .members
            .get(&sent.sender)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let from = match self.inner.store.contact(&sent.sender)? {
            Some(c) if !c.request => c.name,
            _ => format!("{name}~{}", &sent.sender.address()[..6]),
        };
        staged.events.push((
            "message.received",
            "message",
            serde_json::to_value(self.view_group_message(&message, &record.local_name, &from))
                .unwrap_or_default(),
        ));
        Ok(true)
    }

    /// An invitation part from `from` (pairwise): kept until every part came, then the
    /// group is joined at once or waits for `group join`, as `groups_from` says.
    pub(super) fn stage_invite(
        &self,
        account: &LocalAccount,
        from: &AccountKey,
        from_request: bool,
        invite: &GroupInvite,
        batch: &mut Batch,
        events: &mut Vec<(&'static str, &'static str, Value)>,
    ) -> Result<(), GroupError> {
        let me = account.identity.public();
        let store = &self.inner.store;
        let mut record = match store.group(&invite.group)? {
            Some(r) => r,
            None => {
                if store.groups()?.len() >= MAX_GROUPS {
                    return Err(GroupError::TooMany { limit: MAX_GROUPS });
                }
                GroupRecord {
                    id: invite.group,
                    local_name: String::new(),
                    status: GroupStatus::Invited { by: *from },
                    changes: Vec::new(),
                    secrets: Vec::new(),
                    outbound: None,
                    pending: Vec::new(),
                    joined_ms: 0,
                    assembling: None,
                    dropped: 0,
                }
            }
        };
        let (parts, mut seen, mut changes) = record
            .assembling
            .take()
            .filter(|(p, _, _)| *p == invite.parts)
            .unwrap_or((invite.parts, Vec::new(), Vec::new()));
        if !seen.contains(&invite.part) {
            seen.push(invite.part);
            changes.extend(invite.changes.iter().cloned());
        }
        let mut secret = None;
        if let Some((s, h)) = invite.secret {
            secret = Some((h, s));
        }
        if usize::from(parts) != seen.len() {
            if changes.len() > proto::MAX_CHANGES {
                return Ok(());
            }
            record.assembling = Some((parts, seen, changes));
            batch.put_group(&record)?;
            return Ok(());
        }
        // Every part is here: the log.
        let mut log = log_of(&record);
        for c in changes {
            log.insert(c)?;
        }
        let state = log.state().ok_or(proto::GroupError::Invalid(
            "an invitation without the group's creation",
        ))?;
        if !state.is_admin(from) || !state.is_member(&me) {
            return Err(GroupError::Protocol(proto::GroupError::Invalid(
                "an invitation from someone who is no admin, or that does not name this account",
            )));
        }
        if let Some((hash, s)) = secret {
            Self::push_secret(&mut record, hash, &GroupSecret::from_bytes(s));
        }
        let rejoin = matches!(record.status, GroupStatus::Left | GroupStatus::Removed);
        let join = match self.inner.mailbox.groups_from {
            GroupsFrom::Nobody => false,
            GroupsFrom::Contacts => !from_request,
            GroupsFrom::Everyone => true,
        };
        if record.local_name.is_empty() {
            record.local_name = self.unique_group_name(&state.name)?;
            batch.put_group_name(&record.local_name, &record.id);
        }
        if record.status != GroupStatus::Joined || rejoin {
            record.status = if join {
                GroupStatus::Joined
            } else {
                GroupStatus::Invited { by: *from }
            };
            record.joined_ms = unix_ms();
        }
        log.strip_rekeys(state.key_change);
        record.changes = log.changes().cloned().collect();
        batch.put_group(&record)?;
        let kind = if join {
            "group.changed"
        } else {
            "group.invited"
        };
        events.push((
            kind,
            "group",
            serde_json::to_value(self.group_view(&record, Some(&state), &me)).unwrap_or_default(),
        ));
        Ok(())
    }
}
