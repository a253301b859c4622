//! What happens to a message after it is written — reactions, edits, deletes, read
//! receipts, the disappearing timer and the erasure it brings — for 1:1 and group chats
//! through one path. The user's own change is checked and applied by
//! [`Service::stage_change`], then sent like a message (pairwise to a contact, in the
//! sender-key session to a group: `send_content`); a contact's or member's change is applied
//! by the same function when it arrives; one naming a message not yet here waits for it
//! (`parked.rs`), others are dropped. The user's commands are in `commands.rs`, erasing in
//! `expiry.rs`.

mod commands;
mod expiry;
mod parked;

use sotto_protocol::content::{
    is_reaction, Body, Content, MessageId, DELETE_WINDOW_MS, EDIT_WINDOW_MS, MAX_RECEIPT_IDS,
    MAX_TIMER_MS, MIN_TIMER_MS,
};
use sotto_protocol::group::State as GroupState;
use sotto_protocol::identity::AccountKey;

use super::views::{ReactionView, ReadView, TimerView};
use super::{MessageError, MessageView, Service, Signal};
use crate::clock::unix_ms;
use crate::store::{self, Batch, Chat, Direction, Extras, GroupMessage, Seq, StoreError};

/// The shortest message-id prefix a command takes.
pub const MIN_ID_PREFIX: usize = 4;

/// A message found by id, in either history.
#[derive(Clone, Debug)]
pub(super) enum Found {
    Direct(Seq, store::Message),
    Group(Seq, GroupMessage),
}

impl Found {
    pub(super) fn id(&self) -> MessageId {
        match self {
            Found::Direct(_, m) => m.id,
            Found::Group(_, m) => m.id,
        }
    }

    fn seq(&self) -> Seq {
        match self {
            Found::Direct(s, _) | Found::Group(s, _) => *s,
        }
    }

    fn chat(&self) -> Chat {
        match self {
            Found::Direct(_, m) => Chat::Contact(m.contact),
            Found::Group(_, m) => Chat::Group(m.group),
        }
    }

    /// Who wrote it.
    fn author(&self, me: &AccountKey) -> AccountKey {
        match self {
            Found::Direct(_, m) if m.direction == Direction::Out => *me,
            Found::Direct(_, m) => m.contact,
            Found::Group(_, m) => m.from,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Found::Direct(_, m) => m.direction,
            Found::Group(_, m) => m.direction,
        }
    }

    fn sent_at(&self) -> u64 {
        match self {
            Found::Direct(_, m) => m.sent_at,
            Found::Group(_, m) => m.sent_at,
        }
    }

    fn set_text(&mut self, text: String) {
        match self {
            Found::Direct(_, m) => m.text = text,
            Found::Group(_, m) => m.text = text,
        }
    }

    /// Stage the record, with what happened to it: the text of a disappearing message
    /// goes to its own file, not to sled (see `store::vanishing`).
    pub(super) fn put(&self, batch: &mut Batch, extras: &Extras) -> Result<(), StoreError> {
        let mut record = self.clone();
        if extras.expires_at.is_some() && !extras.notice {
            let text = match &mut record {
                Found::Direct(_, m) => std::mem::take(&mut m.text),
                Found::Group(_, m) => std::mem::take(&mut m.text),
            };
            if extras.deleted {
                batch.shred_vanishing(self.seq());
            } else {
                batch.put_vanishing(self.seq(), &text);
            }
        }
        match &record {
            Found::Direct(s, m) => batch.put_message(*s, m),
            Found::Group(s, m) => batch.put_group_message(*s, m),
        }
    }
}

/// A message's text: 1 to [`MAX_TEXT_BYTES`](sotto_protocol::content::MAX_TEXT_BYTES)
/// bytes.
pub(super) fn check_text(text: &str) -> Result<(), MessageError> {
    if text.is_empty() {
        return Err(MessageError::Empty);
    }
    if text.len() > sotto_protocol::content::MAX_TEXT_BYTES {
        return Err(MessageError::TooLong {
            limit: sotto_protocol::content::MAX_TEXT_BYTES,
            got: text.len(),
        });
    }
    Ok(())
}

/// A timer as people say it: `24h`, `7d`, `90d`, `off`, or a number of seconds.
pub fn parse_timer(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text == "off" {
        return Some(None);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Some(secs.checked_mul(1000)?))
}

/// A timer as the notice in the chat says it.
fn timer_words(ms: Option<u64>) -> String {
    match ms {
        None => "off".into(),
        Some(ms) if ms % 86_400_000 == 0 => format!("{} d", ms / 86_400_000),
        Some(ms) if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        Some(ms) => format!("{} s", ms / 1000),
    }
}

impl Service {
    /// The chat `name` names: a group's name, or a contact's name or address.
    pub(super) fn chat_named(&self, name: &str) -> Result<(Chat, String), MessageError> {
        if self.is_group(name)? {
            let id = self
                .inner
                .store
                .group_named(name)?
                .ok_or_else(|| MessageError::UnknownMessage(name.into()))?;
            return Ok((Chat::Group(id), name.to_owned()));
        }
        let (key, contact) = self.resolve(name)?;
        Ok((Chat::Contact(key), contact.name))
    }

    /// The message `id` names, in either history.
    fn find(&self, id: &MessageId) -> Result<Option<Found>, StoreError> {
        let store = &self.inner.store;
        let Some(Some(seq)) = store.message_seq(id)? else {
            return Ok(None);
        };
        if let Some(m) = store.message(seq)? {
            return Ok(Some(Found::Direct(seq, m)));
        }
        Ok(store.group_message(seq)?.map(|m| Found::Group(seq, m)))
    }

    /// The message of `chat` whose id is, or starts with, `text` (at least
    /// [`MIN_ID_PREFIX`] hex digits).
    pub(super) fn pick(&self, chat: &Chat, text: &str) -> Result<Found, MessageError> {
        let unknown = || MessageError::UnknownMessage(text.to_owned());
        let text = text.trim().to_ascii_lowercase();
        if let Some(id) = MessageId::parse(&text) {
            return self
                .find(&id)?
                .filter(|f| f.chat() == *chat)
                .ok_or_else(unknown);
        }
        if text.len() < MIN_ID_PREFIX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let mut hits: Vec<Found> = match chat {
            Chat::Contact(key) => self
                .inner
                .store
                .messages_with(key)?
                .into_iter()
                .filter_map(|seq| {
                    self.inner
                        .store
                        .message(seq)
                        .ok()
                        .flatten()
                        .map(|m| Found::Direct(seq, m))
                })
                .filter(|f| f.id().to_string().starts_with(&text))
                .collect(),
            Chat::Group(g) => self
                .inner
                .store
                .group_messages(g)?
                .into_iter()
                .map(|(seq, m)| Found::Group(seq, m))
                .filter(|f| f.id().to_string().starts_with(&text))
                .collect(),
        };
        match hits.len() {
            0 => Err(unknown()),
            1 => Ok(hits.remove(0)),
            _ => Err(MessageError::AmbiguousMessage(text)),
        }
    }

    /// Apply the change `content` (a reaction, edit, delete, read receipt or timer) that
    /// `author` made in `chat` to `batch`: checked here, for the user's own as for a
    /// contact's or member's. Returns the events to publish (the messages changed, or the
    /// chat's notice).
    pub(super) fn stage_change(
        &self,
        batch: &mut Batch,
        chat: Chat,
        author: &AccountKey,
        me: &AccountKey,
        content: &Content,
        now: u64,
    ) -> Result<Vec<(&'static str, MessageView)>, MessageError> {
        let target = |to: &MessageId| -> Result<(Found, Extras), MessageError> {
            let found = self
                .find(to)?
                .filter(|f| f.chat() == chat)
                .ok_or_else(|| MessageError::UnknownMessage(to.to_string()))?;
            let extras = self.inner.store.extras(found.seq())?;
            if extras.notice {
                return Err(MessageError::UnknownMessage(to.to_string()));
            }
            Ok((found, extras))
        };
        let mine = |found: &Found, what: &'static str| {
            if found.author(me) == *author {
                Ok(())
            } else {
                Err(MessageError::NotYours(what))
            }
        };
        let within = |found: &Found, what: &'static str, window: u64| {
            if content.sent_at <= found.sent_at().saturating_add(window) {
                Ok(())
            } else {
                Err(MessageError::TooLate {
                    what,
                    window_secs: window / 1000,
                })
            }
        };
        let mut changed = Vec::new();
        match &content.body {
            Body::React { to, emoji } => {
                if !is_reaction(emoji) {
                    return Err(MessageError::NotAnEmoji(emoji.clone()));
                }
                let (found, before) = target(to)?;
                if before.deleted {
                    return Err(MessageError::Deleted);
                }
                let mut extras = before.clone();
                extras.reactions.retain(|(k, _)| k != author);
                if !emoji.is_empty() {
                    extras.reactions.push((*author, emoji.clone()));
                }
                batch.put_extras(found.seq(), &before, &extras)?;
                changed.push(("message.updated", found, extras));
            }
            Body::Edit { to, text } => {
                let (mut found, before) = target(to)?;
                mine(&found, "edit")?;
                if before.deleted {
                    return Err(MessageError::Deleted);
                }
                within(&found, "edited", EDIT_WINDOW_MS)?;
                // Edits that arrive out of order: the latest stands.
                if before.edited_at.is_some_and(|at| at >= content.sent_at) {
                    return Ok(Vec::new());
                }
                let mut extras = before.clone();
                extras.edited_at = Some(content.sent_at);
                found.set_text(text.clone());
                found.put(batch, &extras)?;
                batch.put_extras(found.seq(), &before, &extras)?;
                changed.push(("message.updated", found, extras));
            }
            Body::Delete { to } => {
                let (mut found, before) = target(to)?;
                mine(&found, "delete")?;
                if before.deleted {
                    return Ok(Vec::new());
                }
                within(&found, "deleted for everyone", DELETE_WINDOW_MS)?;
                let extras = Extras {
                    deleted: true,
                    reply_to: before.reply_to,
                    expires_at: before.expires_at,
                    read_at: before.read_at,
                    ..Default::default()
                };
                found.set_text(String::new());
                found.put(batch, &extras)?;
                batch.put_extras(found.seq(), &before, &extras)?;
                // Its file goes with its text, on every side.
                self.stage_attachment_erasure(batch, found.seq())?;
                changed.push(("message.updated", found, extras));
            }
            Body::Read(ids) => {
                // Read receipts are 1:1 only, and a node that sends none takes none.
                if !matches!(chat, Chat::Contact(_)) || !self.inner.mailbox.read_receipts {
                    return Ok(Vec::new());
                }
                for id in ids {
                    let Ok((found, before)) = target(id) else {
                        continue;
                    };
                    if found.direction() != Direction::Out || before.read_at.is_some() {
                        continue;
                    }
                    let extras = Extras {
                        read_at: Some(now),
                        ..before.clone()
                    };
                    batch.put_extras(found.seq(), &before, &extras)?;
                    changed.push(("message.read", found, extras));
                }
            }
            Body::Timer(timer) => {
                if timer.is_some_and(|t| !(MIN_TIMER_MS..=MAX_TIMER_MS).contains(&t)) {
                    return Err(MessageError::BadTimer {
                        max: MAX_TIMER_MS / 1000,
                    });
                }
                batch.put_chat_timer(&chat, *timer);
                changed.push((
                    "message.received",
                    self.stage_notice(batch, chat, author, me, content, now, *timer)?,
                    Extras {
                        notice: true,
                        ..Default::default()
                    },
                ));
            }
            _ => return Err(MessageError::Empty),
        }
        changed
            .into_iter()
            .map(|(kind, found, extras)| Ok((kind, self.found_view(&found, &extras, me)?)))
            .collect()
    }

    /// Commit `batch` with the message events `views` (staged in it, published after it).
    /// Call with the account lock held.
    pub(super) async fn commit_with_events(
        &self,
        mut batch: Batch,
        views: &[(&'static str, MessageView)],
    ) -> Result<(), StoreError> {
        let order = self.inner.events.order().await;
        let events = views
            .iter()
            .map(|(kind, v)| self.inner.events.stage(&mut batch, kind, "message", v))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(events);
        drop(order);
        Ok(())
    }

    /// Store the notice a timer change leaves in the chat, as a message of its author's.
    #[allow(clippy::too_many_arguments)]
    fn stage_notice(
        &self,
        batch: &mut Batch,
        chat: Chat,
        author: &AccountKey,
        me: &AccountKey,
        content: &Content,
        now: u64,
        timer: Option<u64>,
    ) -> Result<Found, MessageError> {
        let seq = self.inner.store.next_seq()?;
        let direction = if author == me {
            Direction::Out
        } else {
            Direction::In
        };
        let received_at = (direction == Direction::In).then_some(now);
        // A notice is not delivered like a message: its state never moves.
        let state = store::State::Received;
        let text = format!("disappearing messages: {}", timer_words(timer));
        let found = match chat {
            Chat::Contact(contact) => Found::Direct(
                seq,
                store::Message {
                    id: content.id,
                    contact,
                    direction,
                    text,
                    sent_at: content.sent_at,
                    received_at,
                    state,
                },
            ),
            Chat::Group(group) => Found::Group(
                seq,
                GroupMessage {
                    id: content.id,
                    group,
                    from: *author,
                    direction,
                    text,
                    sent_at: content.sent_at,
                    received_at,
                    state,
                },
            ),
        };
        let extras = Extras {
            notice: true,
            ..Default::default()
        };
        found.put(batch, &extras)?;
        batch.index_message(&content.id, Some(seq));
        batch.put_extras(seq, &Extras::default(), &extras)?;
        Ok(found)
    }

    /// The view of a message found by id, with what happened to it.
    fn found_view(
        &self,
        found: &Found,
        extras: &Extras,
        me: &AccountKey,
    ) -> Result<MessageView, StoreError> {
        let (mut view, state) = match found {
            Found::Direct(_, m) => {
                let name = self
                    .inner
                    .store
                    .contact(&m.contact)?
                    .map_or_else(|| m.contact.address(), |c| c.name);
                (self.view_message(m, &name), None)
            }
            Found::Group(_, m) => {
                let record = self.inner.store.group(&m.group)?;
                let name = record.as_ref().map(|r| r.local_name.clone());
                let state = record.as_ref().and_then(super::groups::state_of);
                let from = self.person_label(&m.from, state.as_ref(), me)?;
                (
                    self.view_group_message(m, &name.unwrap_or_default(), &from),
                    state,
                )
            }
        };
        self.dress(&mut view, found.seq(), extras, state.as_ref(), me)?;
        Ok(view)
    }

    /// `me`, a contact's name, or (in a group) a member's label.
    fn person_label(
        &self,
        key: &AccountKey,
        group: Option<&GroupState>,
        me: &AccountKey,
    ) -> Result<String, StoreError> {
        let name = group
            .and_then(|s| s.members.get(key).map(|m| m.name.clone()))
            .unwrap_or_default();
        Ok(self.member_label(key, &name, me)?.0)
    }

    /// Fill in what happened to the message of `view`.
    pub(super) fn dress(
        &self,
        view: &mut MessageView,
        seq: Seq,
        extras: &Extras,
        group: Option<&GroupState>,
        me: &AccountKey,
    ) -> Result<(), StoreError> {
        // A disappearing message's text is in its own file (empty in the record).
        if extras.expires_at.is_some() && !extras.deleted && !extras.notice && view.text.is_empty()
        {
            view.text = self.inner.store.vanishing_text(seq)?;
        }
        view.reply_to = extras.reply_to.map(|id| id.to_string());
        view.reactions = extras
            .reactions
            .iter()
            .map(|(k, emoji)| {
                Ok(ReactionView {
                    from: self.person_label(k, group, me)?,
                    emoji: emoji.clone(),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        view.edited_at = extras.edited_at;
        view.deleted = extras.deleted;
        view.expires_at = extras.expires_at;
        view.read_at = extras.read_at;
        view.notice = extras.notice;
        // A message deleted for everyone lost its file with its text.
        if let Some(r) = self
            .inner
            .store
            .attachment(seq)?
            .filter(|_| !extras.deleted)
        {
            view.attachments = vec![super::views::AttachmentView::of(&r)];
        }
        if view.direction == "out" && extras.read_at.is_some() {
            view.state = "read";
        }
        Ok(())
    }
}
