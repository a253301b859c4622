//! Contacts, the names they go by, the seal keys that identify their envelopes, their
//! ratchet sessions, and which of them are blocked.

use sotto_protocol::identity::AccountKey;

use super::schema::Tree;
use super::{Batch, Contact, Store, StoreError};

impl Store {
    pub fn contact(&self, key: &AccountKey) -> Result<Option<Contact>, StoreError> {
        self.get(Tree::Contacts, &key.0, "contact")
    }

    /// The account key of the contact called `name`.
    pub fn contact_named(&self, name: &str) -> Result<Option<AccountKey>, StoreError> {
        Ok(self
            .get_raw(Tree::Names, name.as_bytes())?
            .and_then(|k| account_key(&k)))
    }

    /// Is `name` a contact's or a group's? (They share one namespace.)
    pub fn name_taken(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.get_raw(Tree::Names, name.as_bytes())?.is_some()
            || self.get_raw(Tree::GroupNames, name.as_bytes())?.is_some())
    }

    /// The account key of the contact whose card has the seal key `seal_key`.
    pub fn contact_sealing_with(
        &self,
        seal_key: &[u8; 32],
    ) -> Result<Option<AccountKey>, StoreError> {
        Ok(self
            .get_raw(Tree::SealIndex, seal_key)?
            .and_then(|k| account_key(&k)))
    }

    /// Every contact (requests included), in account-key order.
    pub fn contacts(&self) -> Result<Vec<(AccountKey, Contact)>, StoreError> {
        Ok(self
            .collect::<Contact>(Tree::Contacts, &[], "contact")?
            .into_iter()
            .filter_map(|(k, c)| account_key(&k).map(|k| (k, c)))
            .collect())
    }

    /// How many contacts (requests included) there are; kept, not counted.
    pub fn contact_count(&self) -> usize {
        self.counts
            .contacts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many of them are message requests; kept, not counted.
    pub fn request_count(&self) -> usize {
        self.counts
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pickled ratchet sessions with `key`.
    pub fn sessions(&self, key: &AccountKey) -> Result<Option<Vec<String>>, StoreError> {
        self.get(Tree::Sessions, &key.0, "sessions")
    }

    pub fn is_blocked(&self, key: &AccountKey) -> Result<bool, StoreError> {
        Ok(self.get_raw(Tree::Blocked, &key.0)?.is_some())
    }
}

fn account_key(bytes: &[u8]) -> Option<AccountKey> {
    <[u8; 32]>::try_from(bytes).ok().map(AccountKey)
}

impl Batch {
    /// Store `contact` under `key`, its name, and the seal key of its card.
    pub fn put_contact(
        &mut self,
        key: &AccountKey,
        contact: &Contact,
        seal_key: &[u8; 32],
    ) -> Result<(), StoreError> {
        self.put(Tree::Contacts, key.0, contact)?;
        if contact.request {
            self.put_raw(Tree::Requests, key.0, []);
        } else {
            self.remove(Tree::Requests, key.0);
        }
        self.put_raw(Tree::Names, contact.name.as_bytes(), key.0);
        self.put_raw(Tree::SealIndex, seal_key.as_slice(), key.0);
        Ok(())
    }

    /// Free the name `name` (the contact is renamed or forgotten).
    pub fn remove_name(&mut self, name: &str) {
        self.remove(Tree::Names, name.as_bytes());
    }

    /// Forget the seal key of a card that was replaced.
    pub fn remove_seal_key(&mut self, seal_key: &[u8; 32]) {
        self.remove(Tree::SealIndex, seal_key.as_slice());
    }

    /// Forget the contact `key`: its record, its sessions and its block. (Its name and
    /// seal key are removed with [`Batch::remove_name`] and [`Batch::remove_seal_key`].)
    pub fn remove_contact(&mut self, key: &AccountKey) {
        self.remove(Tree::Contacts, key.0);
        self.remove(Tree::Requests, key.0);
        self.remove(Tree::Sessions, key.0);
        self.remove(Tree::Blocked, key.0);
    }

    pub fn put_sessions(&mut self, key: &AccountKey, pickle: &[String]) -> Result<(), StoreError> {
        self.put(Tree::Sessions, key.0, &pickle)
    }

    /// The sessions with `key` this batch puts (the last put), if it does: a second
    /// message staged for the same contact in one batch must encrypt with them, not with
    /// the stored ones, or it reuses the first one's message key.
    pub fn staged_sessions(&self, key: &AccountKey) -> Option<Vec<String>> {
        self.ops
            .iter()
            .rev()
            .find(|(tree, k, _)| *tree == Tree::Sessions && k.as_slice() == key.0)
            .and_then(|(_, _, v)| v.as_deref())
            .and_then(|v| sotto_protocol::codec::decode(v).ok())
    }

    pub fn block(&mut self, key: &AccountKey, now_ms: u64) {
        self.put_raw(Tree::Blocked, key.0, now_ms.to_be_bytes());
    }

    pub fn unblock(&mut self, key: &AccountKey) {
        self.remove(Tree::Blocked, key.0);
    }
}
