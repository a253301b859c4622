//! Message requests: someone who has this user's card but is not a contact writes first.
//! Their messages are kept and listed, but this node tells them nothing about itself (no
//! presence: no inbox secret, no address) until the user accepts; rejecting forgets them.

use sotto_protocol::card::Card;
use sotto_protocol::identity::AccountKey;

use super::{ContactError, ContactView, Rejected, Service, Signal};
use crate::store::{self, Batch};

impl Service {
    /// `requests.list`
    pub fn requests(&self) -> Result<Vec<ContactView>, ContactError> {
        Ok(self.contacts()?.into_iter().filter(|c| c.request).collect())
    }

    fn resolve_request(&self, who: &str) -> Result<(AccountKey, store::Contact), ContactError> {
        let (key, contact) = self.resolve(who)?;
        if !contact.request {
            return Err(ContactError::NotARequest(who.to_owned()));
        }
        Ok((key, contact))
    }

    /// `requests.accept`: the writer becomes a contact and learns this node's presence.
    pub async fn accept(&self, who: &str) -> Result<ContactView, ContactError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(ContactError::NoAccount)?;
        let (key, mut contact) = self.resolve_request(who)?;
        let card = Card::from_bytes(&contact.card)?;
        let mut batch = Batch::new();
        contact.request = false;
        if contact.name.starts_with("request-") {
            batch.remove_name(&contact.name);
            contact.name = self.default_name(&card.body().name)?;
        }
        let mut queued = None;
        if !contact.presence_sent {
            queued = Some(
                self.stage_presence(account, &key, &mut contact, &mut batch)
                    .await?,
            );
        }
        batch.put_contact(&key, &contact, &card.body().seal_key)?;
        self.inner.store.commit(batch).await?;
        drop(guard);
        if let Some(seq) = queued {
            self.signal(Signal::Queued(seq)).await;
        }
        self.share_contact_nodes().await?;
        Ok(Self::view_contact(&key, &contact))
    }

    /// `requests.reject`: forget the writer, its messages, its session and what waits in
    /// the outbox for it.
    pub async fn reject(&self, who: &str) -> Result<Rejected, ContactError> {
        let _guard = self.inner.account.lock().await;
        let (key, contact) = self.resolve_request(who)?;
        let store = &self.inner.store;
        let mut batch = Batch::new();
        batch.remove_contact(&key);
        batch.remove_name(&contact.name);
        if let Ok(card) = Card::from_bytes(&contact.card) {
            batch.remove_seal_key(&card.body().seal_key);
        }
        let messages = store.messages_with(&key)?;
        for seq in &messages {
            batch.remove_message(*seq);
            batch.remove_extras(*seq, &store.extras(*seq)?);
            batch.shred_vanishing(*seq);
        }
        batch.put_chat_timer(&crate::store::Chat::Contact(key), None);
        for e in store.outbox()? {
            if e.to == key {
                batch.remove_outbox(e.seq);
            }
        }
        store.commit(batch).await?;
        self.signal(Signal::Forgotten(key)).await;
        Ok(Rejected {
            contact: contact.name,
            messages_removed: messages.len() as u64,
        })
    }
}
