//! The user's changes: `message.react`, `message.edit`, `message.delete`, `chat.read`,
//! `chat.disappearing`.

use rand::rngs::OsRng;

use super::*;

impl Service {
    /// `message.react`: react to a message of `chat` with one emoji (empty: take it back).
    pub async fn react(
        &self,
        chat: &str,
        message: &str,
        emoji: &str,
    ) -> Result<MessageView, MessageError> {
        if !is_reaction(emoji) {
            return Err(MessageError::NotAnEmoji(emoji.to_owned()));
        }
        let to = self.pick(&self.chat_named(chat)?.0, message)?.id();
        let emoji = emoji.to_owned();
        self.send_content(chat, |_, _| Ok(Body::React { to, emoji }))
            .await
    }

    /// `message.edit`: new text for one of the user's own messages.
    pub async fn edit(
        &self,
        chat: &str,
        message: &str,
        text: &str,
    ) -> Result<MessageView, MessageError> {
        check_text(text)?;
        let to = self.pick(&self.chat_named(chat)?.0, message)?.id();
        let text = text.to_owned();
        self.send_content(chat, |_, _| Ok(Body::Edit { to, text }))
            .await
    }

    /// `message.delete`: for everyone (one of the user's own messages, told to the chat)
    /// or only here (any message, erased from this node's store).
    pub async fn delete(
        &self,
        chat: &str,
        message: &str,
        for_everyone: bool,
    ) -> Result<MessageView, MessageError> {
        let found = self.pick(&self.chat_named(chat)?.0, message)?;
        if for_everyone {
            let to = found.id();
            return self
                .send_content(chat, |_, _| Ok(Body::Delete { to }))
                .await;
        }
        let guard = self.inner.account.lock().await;
        let me = guard
            .as_ref()
            .ok_or(MessageError::NoAccount)?
            .identity
            .public();
        let extras = self.inner.store.extras(found.seq())?;
        let mut view = self.found_view(&found, &extras, &me)?;
        view.deleted = true;
        view.text.clear();
        self.erase(&[found]).await?;
        drop(guard);
        Ok(view)
    }

    /// `chat.read`: mark the chat's incoming messages read, and (read receipts on, a 1:1
    /// chat) tell the contact which.
    pub async fn mark_read(&self, chat: &str) -> Result<ReadView, MessageError> {
        let (chat_key, name) = self.chat_named(chat)?;
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(MessageError::NoAccount)?;
        let now = unix_ms();
        let unread: Vec<Seq> = match chat_key {
            Chat::Contact(key) => self
                .inner
                .store
                .messages_with(&key)?
                .into_iter()
                .filter(|seq| {
                    self.inner
                        .store
                        .message(*seq)
                        .ok()
                        .flatten()
                        .is_some_and(|m| m.direction == Direction::In)
                })
                .collect(),
            Chat::Group(g) => self
                .inner
                .store
                .group_messages(&g)?
                .into_iter()
                .filter(|(_, m)| m.direction == Direction::In)
                .map(|(seq, _)| seq)
                .collect(),
        };
        let mut batch = Batch::new();
        let mut ids = Vec::new();
        let mut marked = 0;
        for seq in unread {
            let before = self.inner.store.extras(seq)?;
            if before.read_at.is_some() || before.notice {
                continue;
            }
            let extras = Extras {
                read_at: Some(now),
                ..before.clone()
            };
            batch.put_extras(seq, &before, &extras)?;
            marked += 1;
            if let Some(m) = self.inner.store.message(seq)? {
                ids.push(m.id);
            }
        }
        let mut queued = Vec::new();
        let receipt = self.inner.mailbox.read_receipts && !ids.is_empty();
        if let (Chat::Contact(key), true) = (chat_key, receipt) {
            let contact = self
                .inner
                .store
                .contact(&key)?
                .filter(|c| !c.request && !self.inner.store.is_blocked(&key).unwrap_or(true));
            if let Some(contact) = contact {
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    let content = Content {
                        id: MessageId::random(&mut OsRng),
                        sent_at: unix_ms(),
                        body: Body::Read(chunk.to_vec()),
                    };
                    let staged = self
                        .stage_outgoing(account, &key, &contact, &content, &mut batch)
                        .await?;
                    queued.push(staged.seq);
                }
            }
        }
        let receipt_sent = !queued.is_empty();
        self.inner.store.commit(batch).await?;
        drop(guard);
        for seq in queued {
            self.signal(Signal::Queued(seq)).await;
        }
        Ok(ReadView {
            chat: name,
            marked,
            receipt_sent,
        })
    }

    /// `chat.disappearing`: set the chat's timer (ms; `None`: off) for both sides. A
    /// notice in the chat says so; messages written after it disappear that long after
    /// they were written.
    pub async fn set_disappearing(
        &self,
        chat: &str,
        timer_ms: Option<u64>,
    ) -> Result<TimerView, MessageError> {
        if timer_ms.is_some_and(|t| !(MIN_TIMER_MS..=MAX_TIMER_MS).contains(&t)) {
            return Err(MessageError::BadTimer {
                max: MAX_TIMER_MS / 1000,
            });
        }
        let (_, name) = self.chat_named(chat)?;
        self.send_content(chat, |_, _| Ok(Body::Timer(timer_ms)))
            .await?;
        Ok(TimerView {
            chat: name,
            seconds: timer_ms.map(|t| t / 1000),
        })
    }
}
