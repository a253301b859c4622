//! Receiving: an envelope that came directly or from a mailbox is opened, its sender
//! identified, decrypted, deduplicated, and stored together with the session state it
//! advanced — all in one transaction, before the sender or host is told it was taken.

use serde_json::Value;
use sotto_protocol::card::Card;
use sotto_protocol::chat::{self, ChatError, OpenedEnvelope};
use sotto_protocol::content::{Body, Content, MessageId};
use sotto_protocol::envelope::{self, EnvelopeError};
use sotto_protocol::identity::AccountKey;
use sotto_protocol::padding;
use sotto_protocol::wire::{Refusal, Response};

use super::{ReceiveError, Service, Signal, MAX_CONTACTS, MAX_REQUESTS};
use crate::clock::unix_ms;
use crate::store::{self, Batch, Direction, State};

/// What became of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The answer for whoever handed the envelope over.
    pub response: Response,
    /// The user message it carried, if one was stored: its sender and id.
    pub message: Option<(AccountKey, MessageId)>,
}

impl Received {
    fn answer(response: Response) -> Self {
        Received {
            response,
            message: None,
        }
    }
}

/// The sender of an opened envelope, as this node knows it now.
struct Sender {
    key: AccountKey,
    contact: store::Contact,
    card: Card,
}

/// An event to stage: its kind, the payload's key, the payload.
type Pending = (&'static str, &'static str, Value);

impl Service {
    /// Answer an envelope that arrived from `origin` (a peer, or a mailbox host).
    pub async fn receive(&self, origin: &str, bytes: &[u8]) -> Response {
        self.receive_detailed(origin, bytes).await.response
    }

    /// As [`Service::receive`], also naming the user message that was stored.
    pub async fn receive_detailed(&self, origin: &str, bytes: &[u8]) -> Received {
        match self.try_receive(bytes).await {
            Ok(received) => received,
            // Not sealed to this node: a group envelope a member pushed, perhaps.
            Err(ReceiveError::Open(_)) if self.receive_group_pushed(bytes).await.is_some() => {
                Received::answer(Response::Accepted)
            }
            Err(e @ ReceiveError::Store(_)) => {
                tracing::error!("cannot store a message from {origin}: {e}");
                Received::answer(Response::Refused(e.refusal()))
            }
            Err(e) => {
                tracing::debug!("refused an envelope from {origin}: {e}");
                Received::answer(Response::Refused(e.refusal()))
            }
        }
    }

    async fn try_receive(&self, bytes: &[u8]) -> Result<Received, ReceiveError> {
        if !padding::is_bucket(bytes.len()) {
            return Ok(Received::answer(Response::Refused(Refusal::Malformed)));
        }
        let store = &self.inner.store;
        let digest = envelope::digest(bytes);
        if store.is_seen(&digest)? {
            return Ok(Received::answer(Response::Duplicate));
        }
        let mut guard = self.inner.account.lock().await;
        let account = guard.as_mut().ok_or(ReceiveError::NoAccount)?;
        // Checked again under the lock: the same envelope may arrive on two paths at once.
        if store.is_seen(&digest)? {
            return Ok(Received::answer(Response::Duplicate));
        }
        let opened = match chat::open_envelope(account, bytes) {
            Ok(o) => o,
            Err(ChatError::Envelope(EnvelopeError::UnsupportedVersion { .. })) => {
                return Ok(Received::answer(Response::Refused(Refusal::Malformed)))
            }
            Err(e) => return Err(ReceiveError::Open(e)),
        };
        let now = unix_ms();
        let mut batch = Batch::new();
        let mut events: Vec<Pending> = Vec::new();
        let mut sender = self.identify(&opened, &mut batch, &mut events)?;
        let mut pairwise = self.load_pairwise(&sender.key)?;
        let pairwise_was_empty = pairwise.is_empty();
        let pre_key = opened.letter.ciphertext.is_pre_key();
        let content =
            chat::open_message(account, &mut pairwise, &sender.card, &opened).map_err(|e| {
                ReceiveError::Decrypt {
                    error: e,
                    fresh: pre_key || pairwise_was_empty,
                }
            })?;
        // A message whose id is known is a copy of one taken before: a replay of an old
        // envelope whose digest was forgotten (§8). Nothing it did to the sessions is kept:
        // a replayed pre-key message would otherwise put a stale session first.
        if store.message_seq(&content.id)?.is_some() {
            if pre_key {
                self.reload_account(account)?;
            }
            let mut seen = Batch::new();
            seen.mark_seen(&digest, now);
            store.commit(seen).await?;
            return Ok(Received::answer(Response::Duplicate));
        }
        // Only a pre-key message can change the device (a new inbound session).
        if pre_key {
            self.stage_account(&mut batch, account)?;
        }
        batch.put_sessions(&sender.key, &pairwise.pickle(&self.inner.pickle_key))?;
        batch.mark_seen(&digest, now);
        // A blocked contact's message is taken and dropped: decrypted, so that the session
        // keeps step and works again after an unblock, but nothing of it is stored, shown
        // or answered. The sender (or the host) is told it arrived, so nothing retries it.
        if store.is_blocked(&sender.key)? {
            store.commit(batch).await?;
            return Ok(Received::answer(Response::Accepted));
        }
        let presence = matches!(content.body, Body::Presence(_));
        let stored =
            self.stage_content(account, &mut sender, &content, now, &mut batch, &mut events)?;
        let mut queued = Vec::new();
        // A contact (not a mere request) learns this node's presence once.
        if !sender.contact.request && !sender.contact.presence_sent {
            queued.push(
                self.stage_presence(account, &sender.key, &mut sender.contact, &mut batch)
                    .await?,
            );
        }
        batch.put_contact(&sender.key, &sender.contact, &sender.card.body().seal_key)?;
        let order = self.inner.events.order().await;
        let staged = events
            .into_iter()
            .map(|(kind, k, v)| self.inner.events.stage(&mut batch, kind, k, &v))
            .collect::<Result<Vec<_>, _>>()?;
        store.commit(batch).await?;
        drop(guard);
        self.inner.events.publish(staged);
        drop(order);
        for seq in queued {
            self.signal(Signal::Queued(seq)).await;
        }
        self.signal(Signal::Heard(sender.key)).await;
        if let Some((_, id)) = &stored {
            if let Err(e) = self.apply_parked(std::slice::from_ref(id)).await {
                tracing::warn!("cannot apply changes that waited for a message: {e}");
            }
        }
        if presence && !sender.contact.request {
            // The contact's node may have moved. (The message is stored: a failure here
            // must not make its sender or host try again.)
            if let Err(e) = self.share_contact_nodes().await {
                tracing::warn!("cannot tell the network about contacts' nodes: {e}");
            }
        }
        Ok(Received {
            response: Response::Accepted,
            message: stored,
        })
    }

    /// Who sent `opened`: a contact known by its seal key (its card replaced by a newer one
    /// that rode along), or someone whose card rode along — a contact whose card changed,
    /// or a stranger, who becomes a message request.
    fn identify(
        &self,
        opened: &OpenedEnvelope,
        batch: &mut Batch,
        events: &mut Vec<Pending>,
    ) -> Result<Sender, ReceiveError> {
        let store = &self.inner.store;
        let attached = opened.attached_card().map_err(ReceiveError::AttachedCard)?;
        if let Some(key) = store.contact_sealing_with(&opened.sender_seal_key)? {
            if key != opened.letter.sender {
                return Err(ReceiveError::SenderMismatch);
            }
            let mut contact = store.contact(&key)?.ok_or(ReceiveError::UnknownSender)?;
            let mut card = Card::from_bytes(&contact.card)?;
            if let Some(newer) = attached.filter(|a| a.body().issued_at > card.body().issued_at) {
                contact.card = newer.to_bytes();
                card = newer;
            }
            return Ok(Sender { key, contact, card });
        }
        let card = attached.ok_or(ReceiveError::UnknownSender)?;
        let key = card.account();
        let contact = match store.contact(&key)? {
            // A contact whose card (and seal key) changed; an older card never replaces a
            // newer one.
            Some(mut c) => {
                if let Ok(old) = Card::from_bytes(&c.card) {
                    if old.body().issued_at >= card.body().issued_at {
                        return Err(ReceiveError::OlderCard);
                    }
                    batch.remove_seal_key(&old.body().seal_key);
                }
                c.card = card.to_bytes();
                c
            }
            None => {
                if store.contact_count() >= MAX_CONTACTS {
                    return Err(ReceiveError::ContactsFull {
                        limit: MAX_CONTACTS,
                    });
                }
                if store.request_count() >= MAX_REQUESTS {
                    return Err(ReceiveError::RequestsFull {
                        limit: MAX_REQUESTS,
                    });
                }
                // A stranger's name is marked as a request, so that it can never be taken
                // for a contact's ("bob" stays free for the real Bob).
                let name = self.default_name(&format!("request {}", card.body().name))?;
                let c = store::Contact::new(
                    name,
                    card.to_bytes(),
                    true,
                    self.random_secret(),
                    unix_ms(),
                );
                events.push((
                    "contact.added",
                    "contact",
                    serde_json::to_value(Self::view_contact(&key, &c)).unwrap_or_default(),
                ));
                c
            }
        };
        Ok(Sender { key, contact, card })
    }

    /// Stage what `content` says: a receipt moves messages to `delivered`, a presence
    /// updates what this node knows of the sender's node and dead drops, and anything else
    /// is a message for the user. Returns the user message stored, if any.
    fn stage_content(
        &self,
        account: &sotto_protocol::chat::LocalAccount,
        sender: &mut Sender,
        content: &Content,
        now: u64,
        batch: &mut Batch,
        events: &mut Vec<Pending>,
    ) -> Result<Option<(AccountKey, MessageId)>, ReceiveError> {
        let store = &self.inner.store;
        match &content.body {
            Body::Receipt(ids) => {
                batch.index_message(&content.id, None);
                for id in ids {
                    let Some(Some(seq)) = store.message_seq(id)? else {
                        continue;
                    };
                    let Some(mut m) = store.message(seq)? else {
                        continue;
                    };
                    // Only the recipient's own receipts count.
                    if m.contact != sender.key
                        || m.direction != Direction::Out
                        || m.state == State::Delivered
                    {
                        continue;
                    }
                    m.state = State::Delivered;
                    batch.put_message(seq, &m)?;
                    let mut view = self.view_message(&m, &sender.contact.name);
                    let me = account.identity.public();
                    self.dress(&mut view, seq, &store.extras(seq)?, None, &me)?;
                    events.push((
                        "message.delivered",
                        "message",
                        serde_json::to_value(view).unwrap_or_default(),
                    ));
                }
                Ok(None)
            }
            Body::GroupInvite(invite) => {
                batch.index_message(&content.id, None);
                if let Err(e) = self.stage_invite(
                    account,
                    &sender.key,
                    sender.contact.request,
                    invite,
                    batch,
                    events,
                ) {
                    tracing::debug!("an invitation to a group refused: {e}");
                }
                Ok(None)
            }
            Body::Presence(presence) => {
                let contact = &mut sender.contact;
                contact.their_inbox = Some(store::InboxSecret::new(presence.inbox));
                contact.route = presence.peer_id.clone().map(|peer| store::Route {
                    peer,
                    addrs: presence.addrs.clone(),
                });
                // Presence ids are remembered for deduplication only.
                batch.index_message(&content.id, None);
                Ok(None)
            }
            Body::React { .. }
            | Body::Edit { .. }
            | Body::Delete { .. }
            | Body::Read(_)
            | Body::Timer(_) => {
                // A change to a message, applied by the code that applies the user's own;
                // one that does not apply is dropped.
                batch.index_message(&content.id, None);
                let me = account.identity.public();
                let chat = store::Chat::Contact(sender.key);
                match self.stage_change(batch, chat, &sender.key, &me, content, now) {
                    Ok(views) => events.extend(views.into_iter().map(|(kind, v)| {
                        (kind, "message", serde_json::to_value(v).unwrap_or_default())
                    })),
                    Err(e) => self.park_or_drop(batch, chat, &sender.key, content, now, e)?,
                }
                Ok(None)
            }
            _ => {
                let (text, reply_to, expires_in) = content.post().unwrap_or_default();
                let seq = store.next_seq()?;
                let message = store::Message {
                    id: content.id,
                    contact: sender.key,
                    direction: Direction::In,
                    text: text.to_owned(),
                    sent_at: content.sent_at,
                    received_at: Some(now),
                    state: State::Received,
                };
                batch.index_message(&content.id, Some(seq));
                let extras = store::Extras {
                    reply_to,
                    expires_at: expires_in.map(|t| {
                        super::history::written_at(content.sent_at, Some(now)).saturating_add(t)
                    }),
                    ..Default::default()
                };
                batch.put_extras(seq, &store::Extras::default(), &extras)?;
                super::changes::Found::Direct(seq, message.clone()).put(batch, &extras)?;
                let mut view = self.view_message(&message, &sender.contact.name);
                self.dress(&mut view, seq, &extras, None, &account.identity.public())?;
                if let Some(a) = self.stage_attachment(batch, seq, content, Direction::In, false)? {
                    view.attachments = vec![a];
                }
                events.push((
                    "message.received",
                    "message",
                    serde_json::to_value(view).unwrap_or_default(),
                ));
                Ok(Some((sender.key, content.id)))
            }
        }
    }
}
