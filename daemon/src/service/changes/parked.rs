//! Changes that arrive before the message they name wait for it (tree `parked`), and apply
//! when it is stored.

use super::*;

/// Changes kept waiting for the message they name, at most (then new ones are dropped).
pub const MAX_PARKED: usize = 1_000;
/// How long a change waits for its message: as long as a mailbox host keeps an envelope.
pub const PARK_MS: u64 = 14 * 24 * 3600 * 1000;

impl Service {
    /// A contact's or member's change that did not apply: one naming a message that has not
    /// arrived (it may come later from a mailbox) waits for it, the rest are dropped.
    pub(in crate::service) fn park_or_drop(
        &self,
        batch: &mut Batch,
        chat: Chat,
        author: &AccountKey,
        content: &Content,
        now: u64,
        error: MessageError,
    ) -> Result<(), StoreError> {
        let target = match (&error, &content.body) {
            (
                MessageError::UnknownMessage(_),
                Body::React { to, .. } | Body::Edit { to, .. } | Body::Delete { to },
            ) => *to,
            _ => {
                tracing::debug!("a change to a message refused: {error}");
                return Ok(());
            }
        };
        // A message id that exists names a message of another chat: never parked.
        if self.inner.store.message_seq(&target)?.is_some() {
            tracing::debug!("a change to a message of another chat refused");
            return Ok(());
        }
        let parked = self.inner.store.parked_ages()?;
        let stale: Vec<&Vec<u8>> = parked
            .iter()
            .filter(|(_, at)| now.saturating_sub(*at) > PARK_MS)
            .map(|(k, _)| k)
            .collect();
        if parked.len() - stale.len() >= MAX_PARKED {
            tracing::debug!(
                "a change to a message not yet here dropped: {MAX_PARKED} wait already"
            );
            return Ok(());
        }
        for k in stale {
            batch.unpark(k);
        }
        let Ok(bytes) = content.to_bytes() else {
            return Ok(());
        };
        batch.park(
            &target,
            &content.id,
            &store::Parked {
                chat: chat.key(),
                author: *author,
                content: bytes,
                parked_at: now,
            },
        )
    }

    /// Apply the changes that waited for the messages `ids`, now stored, one transaction
    /// each (a later one reads what the one before wrote). Call without the account lock.
    pub(in crate::service) async fn apply_parked(
        &self,
        ids: &[MessageId],
    ) -> Result<(), StoreError> {
        for id in ids {
            for (key, parked) in self.inner.store.parked_for(id)? {
                let guard = self.inner.account.lock().await;
                let Some(me) = guard.as_ref().map(|a| a.identity.public()) else {
                    return Ok(());
                };
                let mut batch = Batch::new();
                batch.unpark(&key);
                let content = Content::from_bytes(&parked.content).ok();
                let chat = Chat::from_key(&parked.chat);
                let views = match (content, chat) {
                    (Some(content), Some(chat)) => {
                        match self.stage_change(
                            &mut batch,
                            chat,
                            &parked.author,
                            &me,
                            &content,
                            unix_ms(),
                        ) {
                            Ok(views) => views,
                            Err(e) => {
                                tracing::debug!("a parked change refused: {e}");
                                Vec::new()
                            }
                        }
                    }
                    _ => Vec::new(),
                };
                self.commit_with_events(batch, &views).await?;
                drop(guard);
            }
        }
        Ok(())
    }
}
