//! Message requests: someone who has this user's card but is not a contact writes first.
//! Their messages are kept and listed, but this node tells them nothing about itself (no
//! presence: no inbox secret, no address) until the user accepts; rejecting forgets them.

use super::*;

impl Service {
    /// `requests.list`
    pub fn requests(&self) -> Result<Vec<ContactView>, Error> {
        Ok(self.contacts()?.into_iter().filter(|c| c.request).collect())
    }

    fn resolve_request(&self, who: &str) -> Result<(AccountKey, store::Contact), Error> {
        let (key, contact) = self.resolve(who)?;
        if !contact.request {
            return Err(Error::InvalidParams(format!(
                "{who:?} is a contact, not a message request"
            )));
        }
        Ok((key, contact))
    }

    /// `requests.accept`: the writer becomes a contact and learns this node's presence.
    pub async fn accept(&self, who: &str) -> Result<ContactView, Error> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        let (key, mut contact) = self.resolve_request(who)?;
        let card = Card::from_bytes(&contact.card)?;
        let mut batch = Batch::new();
        contact.request = false;
        if contact.name.starts_with("request-") {
            batch.remove(Tree::Names, contact.name.as_bytes().to_vec());
            contact.name = self.default_name(&card.body().name)?;
        }
        if !contact.presence_sent {
            self.stage_presence(account, &key, &mut contact, &mut batch)
                .await?;
        }
        self.stage_contact(&mut batch, &key, &contact, &card)?;
        self.inner.store.commit(batch).await?;
        drop(guard);
        self.inner.outbox_wake.notify_one();
        Ok(Self::view_contact(&key, &contact))
    }

    /// `requests.reject`: forget the writer, its messages and its session.
    pub async fn reject(&self, who: &str) -> Result<Value, Error> {
        let _guard = self.inner.account.lock().await;
        let (key, contact) = self.resolve_request(who)?;
        let store = &self.inner.store;
        let mut batch = Batch::new();
        batch.remove(Tree::Contacts, key.0.to_vec());
        batch.remove(Tree::Names, contact.name.as_bytes().to_vec());
        if let Ok(card) = Card::from_bytes(&contact.card) {
            batch.remove(Tree::SealIndex, card.body().seal_key.to_vec());
        }
        batch.remove(Tree::Sessions, key.0.to_vec());
        batch.remove(Tree::Blocked, key.0.to_vec());
        let mut removed = 0u64;
        for (k, m) in store.scan::<store::Message>(Tree::Messages, "message")? {
            if m.contact == key {
                batch.remove(Tree::Messages, k.to_vec());
                removed += 1;
            }
        }
        for (k, e) in store.scan::<store::OutboxEntry>(Tree::Outbox, "outbox entry")? {
            if e.to == key {
                batch.remove(Tree::Outbox, k.to_vec());
            }
        }
        store.commit(batch).await?;
        Ok(json!({ "contact": contact.name, "messages_removed": removed }))
    }
}
