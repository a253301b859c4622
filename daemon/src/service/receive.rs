//! Receiving: an envelope that came directly or from a mailbox is opened, its sender
//! checked, decrypted, deduplicated, and stored together with the session state it
//! advanced — all in one transaction, before the sender or host is told it was taken.

use super::*;

impl Service {
    /// Answer an envelope that arrived from `origin` (a peer, or a mailbox host).
    pub async fn receive(&self, origin: &str, bytes: &[u8]) -> Response {
        self.receive_detailed(origin, bytes).await.0
    }

    /// As [`Service::receive`], also naming the contact and message id of a user message
    /// that was stored.
    pub async fn receive_detailed(
        &self,
        origin: &str,
        bytes: &[u8],
    ) -> (Response, Option<(AccountKey, MessageId)>) {
        match self.try_receive(bytes).await {
            Ok(response) => response,
            Err(Error::Store(e)) => {
                tracing::error!("cannot store a message from {origin}: {e}");
                (Response::Refused(Refusal::Internal), None)
            }
            Err(e) => {
                tracing::debug!("refused an envelope from {origin}: {e}");
                (Response::Refused(Refusal::Unopenable), None)
            }
        }
    }

    async fn try_receive(
        &self,
        bytes: &[u8],
    ) -> Result<(Response, Option<(AccountKey, MessageId)>), Error> {
        if !padding::is_bucket(bytes.len()) {
            return Ok((Response::Refused(Refusal::Malformed), None));
        }
        let digest = envelope::digest(bytes);
        if self.inner.store.get_raw(Tree::Seen, &digest)?.is_some() {
            return Ok((Response::Duplicate, None));
        }
        let mut guard = self.inner.account.lock().await;
        let account = guard.as_mut().ok_or(Error::NoAccount)?;
        // Checked again under the lock: the same envelope may arrive on two paths at once.
        if self.inner.store.get_raw(Tree::Seen, &digest)?.is_some() {
            return Ok((Response::Duplicate, None));
        }
        let opened = match chat::open_envelope(account, bytes) {
            Ok(o) => o,
            Err(chat::ChatError::Envelope(envelope::EnvelopeError::UnsupportedVersion {
                ..
            })) => return Ok((Response::Refused(Refusal::Malformed), None)),
            Err(e) => return Err(Error::InvalidParams(e.to_string())),
        };
        let attached = opened
            .attached_card()
            .map_err(|e| Error::InvalidParams(e.to_string()))?;
        let known = self
            .inner
            .store
            .get_raw(Tree::SealIndex, &opened.sender_seal_key)?
            .and_then(|k| <[u8; 32]>::try_from(k.as_ref()).ok())
            .map(AccountKey);
        let now = now_ms();
        let mut batch = Batch::new();
        let mut events = Vec::new();
        let (key, mut contact, card) = match known {
            Some(key) => {
                if key != opened.letter.sender {
                    return Err(Error::InvalidParams(
                        "sender does not match the seal key".into(),
                    ));
                }
                let mut contact = self
                    .inner
                    .store
                    .get::<store::Contact>(Tree::Contacts, &key.0, "contact")?
                    .ok_or_else(|| Error::UnknownContact(key.address()))?;
                let mut card = Card::from_bytes(&contact.card)?;
                if let Some(newer) = attached.filter(|a| a.body().issued_at > card.body().issued_at)
                {
                    contact.card = newer.to_bytes();
                    card = newer;
                }
                (key, contact, card)
            }
            None => {
                let card = attached.ok_or_else(|| {
                    Error::InvalidParams("envelope from an unknown sender without a card".into())
                })?;
                let key = card.account();
                let contact = match self.inner.store.get::<store::Contact>(
                    Tree::Contacts,
                    &key.0,
                    "contact",
                )? {
                    // A contact whose card (and seal key) changed; an older card never
                    // replaces a newer one.
                    Some(mut c) => {
                        if let Ok(old) = Card::from_bytes(&c.card) {
                            if old.body().issued_at >= card.body().issued_at {
                                return Err(Error::InvalidParams(
                                    "a card older than the one known".into(),
                                ));
                            }
                            batch.remove(Tree::SealIndex, old.body().seal_key.to_vec());
                        }
                        c.card = card.to_bytes();
                        c
                    }
                    None => {
                        if self.inner.store.len(Tree::Contacts) >= MAX_CONTACTS {
                            return Err(Error::InvalidParams("contact list full".into()));
                        }
                        // A stranger's name is marked as a request, so that it can never be
                        // taken for a contact's ("bob" stays free for the real Bob).
                        if self.requests()?.len() >= MAX_REQUESTS {
                            return Err(Error::InvalidParams(
                                "too many message requests waiting".into(),
                            ));
                        }
                        let name = self.default_name(&format!("request {}", card.body().name))?;
                        let c =
                            store::Contact::new(name, card.to_bytes(), true, self.random_secret());
                        events.push((
                            "contact.added",
                            "contact",
                            json!(Self::view_contact(&key, &c)),
                        ));
                        c
                    }
                };
                (key, contact, card)
            }
        };
        let mut pairwise = self.load_pairwise(&key)?;
        let content = chat::open_message(account, &mut pairwise, &card, &opened)
            .map_err(|e| Error::InvalidParams(e.to_string()))?;
        // Only a pre-key message can change the device (a new inbound session).
        if opened.letter.ciphertext.is_pre_key() {
            self.account_batch(&mut batch, account)?;
        }
        batch.put(
            Tree::Sessions,
            key.0.to_vec(),
            &pairwise.pickle(&self.inner.pickle_key),
        )?;
        batch.put_raw(Tree::Seen, digest.to_vec(), now.to_be_bytes().to_vec());
        // A blocked contact's message is taken and dropped: decrypted, so that the session
        // keeps step and works again after an unblock, but nothing of it is stored, shown
        // or answered. The sender (or the host) is told it arrived, so nothing retries it.
        if self.is_blocked(&key)? {
            self.inner.store.commit(batch).await?;
            return Ok((Response::Accepted, None));
        }
        let duplicate = self
            .inner
            .store
            .get_raw(Tree::MessageIds, &content.id.0)?
            .is_some();
        let mut stored = None;
        let mut delivered = Vec::new();
        if !duplicate {
            match &content.body {
                Body::Receipt(ids) => {
                    batch.put_raw(
                        Tree::MessageIds,
                        content.id.0.to_vec(),
                        0u64.to_be_bytes().to_vec(),
                    );
                    for id in ids {
                        let Some(seq) = self.inner.store.get_raw(Tree::MessageIds, &id.0)? else {
                            continue;
                        };
                        let Some(mut m) = self.inner.store.get::<store::Message>(
                            Tree::Messages,
                            &seq,
                            "message",
                        )?
                        else {
                            continue;
                        };
                        // Only the recipient's own receipts count.
                        if m.contact != key
                            || m.direction != Direction::Out
                            || m.state == State::Delivered
                        {
                            continue;
                        }
                        m.state = State::Delivered;
                        batch.put(Tree::Messages, seq.to_vec(), &m)?;
                        delivered.push(json!(self.view_message(&m, &contact.name)));
                    }
                }
                Body::Presence(presence) => {
                    contact.their_inbox = Some(presence.inbox);
                    contact.route = presence
                        .peer_id
                        .clone()
                        .map(|id| (id, presence.addrs.clone()));
                    // Presence ids are remembered for deduplication only.
                    batch.put_raw(
                        Tree::MessageIds,
                        content.id.0.to_vec(),
                        0u64.to_be_bytes().to_vec(),
                    );
                }
                _ => {
                    let seq = self.inner.store.next_id()?;
                    let message = store::Message {
                        id: content.id,
                        contact: key,
                        direction: Direction::In,
                        text: content.as_text().unwrap_or_default().to_owned(),
                        sent_at: content.sent_at,
                        received_at: Some(now),
                        state: State::Received,
                    };
                    batch.put(Tree::Messages, seq.to_be_bytes().to_vec(), &message)?;
                    batch.put_raw(
                        Tree::MessageIds,
                        content.id.0.to_vec(),
                        seq.to_be_bytes().to_vec(),
                    );
                    events.push((
                        "message.received",
                        "message",
                        json!(self.view_message(&message, &contact.name)),
                    ));
                    stored = Some((key, content.id));
                }
            }
        }
        // A contact (not a mere request) learns this node's presence once.
        if !contact.request && !contact.presence_sent {
            self.stage_presence(account, &key, &mut contact, &mut batch)
                .await?;
        }
        self.stage_contact(&mut batch, &key, &contact, &card)?;
        events.extend(
            delivered
                .into_iter()
                .map(|v| ("message.delivered", "message", v)),
        );
        let order = self.inner.events.order().await;
        let staged = events
            .into_iter()
            .map(|(kind, k, v)| self.inner.events.stage(&mut batch, kind, k, v))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.store.commit(batch).await?;
        drop(guard);
        self.inner.events.publish(staged);
        drop(order);
        self.retry_contact(&key).await;
        let response = if duplicate {
            Response::Duplicate
        } else {
            Response::Accepted
        };
        Ok((response, stored))
    }
}
