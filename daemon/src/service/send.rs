//! Sending: a message (or a control message: presence, receipts) is encoded, encrypted in
//! the pairwise ratchet, sealed, and put in the outbox together with the advanced session
//! and the message record, in one transaction; the outbox worker (`delivery.rs`) takes it
//! from there.

use rand::rngs::OsRng;
use sotto_protocol::card::Card;
use sotto_protocol::chat::{self, LocalAccount};
use sotto_protocol::content::{Body, Content, MessageId, Post, Presence};
use sotto_protocol::identity::AccountKey;
use sotto_protocol::session::Pairwise;

use super::{MessageError, MessageView, Service, Signal, MAX_OUTBOX};
use crate::clock::unix_ms;
use crate::store::{self, Batch, Direction, Seq, State, StoreError};

/// What staging an outgoing message put in the batch.
pub(super) struct Staged {
    /// The outbox entry's sequence number: signal it once the batch is committed.
    pub seq: Seq,
    /// The message record (none for control messages).
    pub message: Option<store::Message>,
}

impl Service {
    /// A text message to a contact or a group (`message.send` without a reply).
    pub async fn send(&self, to: &str, text: &str) -> Result<MessageView, MessageError> {
        self.send_post(to, text, None).await
    }

    /// `message.send`: a message to a contact or a group, answering `reply_to` (a message
    /// id, or a unique prefix of one, in the same chat) if given; it disappears after the
    /// chat's timer if it has one.
    pub async fn send_post(
        &self,
        to: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<MessageView, MessageError> {
        super::changes::check_text(text)?;
        let (chat, _) = self.chat_named(to)?;
        let reply_to = reply_to
            .map(|r| self.pick(&chat, r).map(|f| f.id()))
            .transpose()?;
        self.send_content(to, |_, timer| {
            Ok(Body::Post(Post {
                text: text.to_owned(),
                reply_to,
                expires_in_ms: timer,
            }))
        })
        .await
    }

    /// Send what `make` gives (from the time it is written and the chat's disappearing
    /// timer) to the contact or group `to`: a message is stored with what goes with it, a
    /// change (reaction, edit, delete, timer) is applied here first by the code that
    /// applies a contact's ([`Service::stage_change`]), and the message it changed is
    /// returned.
    pub(super) async fn send_content(
        &self,
        to: &str,
        make: impl FnOnce(u64, Option<u64>) -> Result<Body, MessageError>,
    ) -> Result<MessageView, MessageError> {
        if self.is_group(to)? {
            return self
                .send_group_content(to, |_, at, timer| make(at, timer))
                .await
                .map_err(|e| match e {
                    super::GroupError::Invite(m) => *m,
                    e => MessageError::Group(Box::new(e)),
                });
        }
        if self.inner.store.outbox_len() >= MAX_OUTBOX {
            return Err(MessageError::OutboxFull { limit: MAX_OUTBOX });
        }
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(MessageError::NoAccount)?;
        let me = account.identity.public();
        let (key, contact) = self.resolve(to)?;
        if self.inner.store.is_blocked(&key)? {
            return Err(MessageError::Blocked(contact.name));
        }
        let chat = store::Chat::Contact(key);
        let timer = self.inner.store.chat_timer(&chat)?;
        // Taken under the lock: the order of `sent_at` is the order of the outbox.
        let sent_at = self.next_sent_at();
        let mut content = Content {
            id: MessageId::random(&mut OsRng),
            sent_at,
            body: make(sent_at, timer)?,
        };
        // Plain text goes as the body every version reads.
        if let Body::Post(p) = &content.body {
            content = Content::message(
                content.id,
                sent_at,
                p.text.clone(),
                p.reply_to,
                p.expires_in_ms,
            )?;
        }
        content.to_bytes()?;
        let now = unix_ms();
        let mut batch = Batch::new();
        let changed = match content.post() {
            Some(_) => None,
            None => Some(self.stage_change(&mut batch, chat, &me, &me, &content, now)?),
        };
        let staged = self
            .stage_outgoing(account, &key, &contact, &content, &mut batch)
            .await?;
        let mut events = Vec::new();
        let view = match (changed, staged.message) {
            (Some(changed), _) => {
                let view = changed.first().map(|(_, v)| v.clone());
                events = changed;
                view.ok_or(MessageError::Empty)?
            }
            (None, Some(message)) => {
                let (_, reply_to, expires_in) = content.post().unwrap_or_default();
                let extras = store::Extras {
                    reply_to,
                    expires_at: expires_in.map(|t| sent_at.saturating_add(t)),
                    ..Default::default()
                };
                batch.put_extras(staged.seq, &store::Extras::default(), &extras)?;
                super::changes::Found::Direct(staged.seq, message.clone())
                    .put(&mut batch, &extras)?;
                let mut view = self.view_message(&message, &contact.name);
                self.dress(&mut view, staged.seq, &extras, None, &me)?;
                let upload = content.attachment().is_some()
                    && (self.inner.mailbox.mailbox_only || !self.node_connected(&contact).await);
                if let Some(a) =
                    self.stage_attachment(&mut batch, staged.seq, &content, Direction::Out, upload)?
                {
                    view.attachments = vec![a];
                }
                view
            }
            (None, None) => return Err(MessageError::Empty),
        };
        self.commit_with_events(batch, &events).await?;
        drop(guard);
        self.signal(Signal::Queued(staged.seq)).await;
        Ok(view)
    }

    /// The ratchet sessions with `key` (none yet: a fresh set).
    pub(super) fn load_pairwise(&self, key: &AccountKey) -> Result<Pairwise, StoreError> {
        match self.inner.store.sessions(key)? {
            Some(p) => {
                Pairwise::from_pickle(&p, &self.inner.pickle_key).map_err(|e| StoreError::Corrupt {
                    what: "sessions",
                    detail: e.to_string(),
                })
            }
            None => Ok(Pairwise::new()),
        }
    }

    /// Encrypt `content` for the contact `key` and add it to `batch`: the advanced session,
    /// the outbox entry and, for anything but a control message, the message record. Call
    /// with the account lock held, commit the batch before releasing it, then signal the
    /// staged entry.
    #[must_use = "signal the staged entry once the batch is committed"]
    pub(super) async fn stage_outgoing(
        &self,
        account: &LocalAccount,
        key: &AccountKey,
        contact: &store::Contact,
        content: &Content,
        batch: &mut Batch,
    ) -> Result<Staged, MessageError> {
        let card = Card::from_bytes(&contact.card)?;
        let mut pairwise = match batch.staged_sessions(key) {
            Some(p) => Pairwise::from_pickle(&p, &self.inner.pickle_key).map_err(|e| {
                StoreError::Corrupt {
                    what: "sessions",
                    detail: e.to_string(),
                }
            })?,
            None => self.load_pairwise(key)?,
        };
        // The card rides along only on pre-key messages: sign a fresh one only then.
        let own = if pairwise.next_is_pre_key() {
            Some(self.own_card(account).await?)
        } else {
            None
        };
        let envelope = chat::seal_message(account, own.as_ref(), &mut pairwise, &card, content)
            .map_err(MessageError::Encrypt)?;
        let seq = self.inner.store.next_seq()?;
        batch.put_sessions(key, &pairwise.pickle(&self.inner.pickle_key))?;
        let control = content.is_control();
        batch.put_outbox(&store::OutboxEntry {
            seq,
            message: content.id,
            to: *key,
            envelope,
            failures: 0,
            next_attempt_at: content.sent_at,
            hosts: Vec::new(),
            host_retries: 0,
            control,
        })?;
        if control {
            return Ok(Staged { seq, message: None });
        }
        let message = store::Message {
            id: content.id,
            contact: *key,
            direction: Direction::Out,
            text: content.as_text().unwrap_or_default().to_owned(),
            sent_at: content.sent_at,
            received_at: None,
            state: State::Queued,
        };
        batch.put_message(seq, &message)?;
        batch.index_message(&content.id, Some(seq));
        Ok(Staged {
            seq,
            message: Some(message),
        })
    }

    /// This node's presence for `contact`: the contact's inbox secret and, unless the node
    /// is mailbox-only, its PeerId and addresses.
    pub(super) async fn presence_for(&self, contact: &store::Contact) -> Presence {
        let (peer_id, addrs) = if self.inner.mailbox.mailbox_only {
            (None, Vec::new())
        } else {
            let hints = self.route_hints().await;
            (hints.peer_id, hints.addrs)
        };
        Presence {
            inbox: *contact.inbox.bytes(),
            peer_id,
            addrs,
        }
    }

    /// Queue this node's presence for `key` in `batch` and mark it sent in `contact`.
    #[must_use = "signal the staged entry once the batch is committed"]
    pub(super) async fn stage_presence(
        &self,
        account: &LocalAccount,
        key: &AccountKey,
        contact: &mut store::Contact,
        batch: &mut Batch,
    ) -> Result<Seq, MessageError> {
        let content = Content::presence(
            MessageId::random(&mut OsRng),
            unix_ms(),
            self.presence_for(contact).await,
        );
        let staged = self
            .stage_outgoing(account, key, contact, &content, batch)
            .await?;
        contact.presence_sent = true;
        Ok(staged.seq)
    }

    /// Tell the contact `key` that these messages arrived (they came from a mailbox, so
    /// nothing else tells the sender).
    pub async fn send_receipt(
        &self,
        key: &AccountKey,
        ids: Vec<MessageId>,
    ) -> Result<(), MessageError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(MessageError::NoAccount)?;
        let Some(contact) = self.inner.store.contact(key)? else {
            return Ok(());
        };
        if contact.request {
            // A stranger learns nothing until the user accepts.
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut queued = Vec::new();
        for chunk in ids.chunks(sotto_protocol::content::MAX_RECEIPT_IDS) {
            let content = Content {
                id: MessageId::random(&mut OsRng),
                sent_at: unix_ms(),
                body: Body::Receipt(chunk.to_vec()),
            };
            let staged = self
                .stage_outgoing(account, key, &contact, &content, &mut batch)
                .await?;
            queued.push(staged.seq);
        }
        self.inner.store.commit(batch).await?;
        drop(guard);
        for seq in queued {
            self.signal(Signal::Queued(seq)).await;
        }
        Ok(())
    }
}
