//! What happened to messages after they were written ([`Extras`]), the index of the
//! disappearing ones by expiry, and each chat's disappearing timer (schema 5).

use super::schema::{concat, Tree};
use sotto_protocol::content::MessageId;

use super::{be_u64, Batch, Chat, Extras, Parked, Seq, Store, StoreError};

fn expiring_key(expires_at: u64, seq: Seq) -> Vec<u8> {
    concat(&expires_at.to_be_bytes(), &seq.key())
}

impl Store {
    /// What happened to the message `seq` (nothing: the default).
    pub fn extras(&self, seq: Seq) -> Result<Extras, StoreError> {
        Ok(self
            .get(Tree::Extras, &seq.key(), "message extras")?
            .unwrap_or_default())
    }

    /// The messages due to be erased by `now_ms` (at most `limit`), soonest first, read
    /// from the expiry index only.
    pub fn expired_messages(&self, now_ms: u64, limit: usize) -> Result<Vec<Seq>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .tree(Tree::Expiring)
            .range(..now_ms.saturating_add(1).to_be_bytes().to_vec())
            .keys()
        {
            let k = kv?;
            if let Some(seq) = k.get(8..).and_then(Seq::from_key) {
                out.push(seq);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The changes parked for the message `id`, with their keys.
    pub fn parked_for(&self, id: &MessageId) -> Result<Vec<(Vec<u8>, Parked)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Parked).scan_prefix(id.0) {
            let (k, v) = kv?;
            out.push((k.to_vec(), self.decode(&v, "parked change")?));
        }
        Ok(out)
    }

    /// Every parked change's key and when it was parked (at most a bounded few).
    pub fn parked_ages(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Parked).iter() {
            let (k, v) = kv?;
            let p: Parked = self.decode(&v, "parked change")?;
            out.push((k.to_vec(), p.parked_at));
        }
        Ok(out)
    }

    /// The disappearing timer of `chat` (ms), if it has one.
    pub fn chat_timer(&self, chat: &Chat) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get_raw(Tree::ChatTimers, &chat.key())?
            .and_then(|v| be_u64(&v)))
    }
}

impl Batch {
    /// Keep `extras` for the message `seq`, indexed by its expiry if it has one. `before`
    /// is what was kept until now (its expiry entry goes if the expiry changed).
    pub fn put_extras(
        &mut self,
        seq: Seq,
        before: &Extras,
        extras: &Extras,
    ) -> Result<(), StoreError> {
        if before.expires_at != extras.expires_at {
            if let Some(at) = before.expires_at {
                self.remove(Tree::Expiring, expiring_key(at, seq));
            }
        }
        if let Some(at) = extras.expires_at {
            self.put_raw(Tree::Expiring, expiring_key(at, seq), Vec::new());
        }
        if extras == &Extras::default() {
            self.remove(Tree::Extras, seq.key());
            return Ok(());
        }
        self.put(Tree::Extras, seq.key(), extras)
    }

    /// Forget what happened to the message `seq` (it is being erased).
    pub fn remove_extras(&mut self, seq: Seq, extras: &Extras) {
        if let Some(at) = extras.expires_at {
            self.remove(Tree::Expiring, expiring_key(at, seq));
        }
        self.remove(Tree::Extras, seq.key());
    }

    /// Park `change`, which names the message `target` that has not arrived.
    pub fn park(
        &mut self,
        target: &MessageId,
        change: &MessageId,
        parked: &Parked,
    ) -> Result<(), StoreError> {
        self.put(Tree::Parked, concat(&target.0, &change.0), parked)
    }

    /// Forget a parked change (by the key [`Store::parked_for`] gave).
    pub fn unpark(&mut self, key: &[u8]) {
        self.remove(Tree::Parked, key.to_vec());
    }

    /// Set (or, with `None`, clear) the disappearing timer of `chat`.
    pub fn put_chat_timer(&mut self, chat: &Chat, timer_ms: Option<u64>) {
        match timer_ms {
            Some(ms) => self.put_raw(Tree::ChatTimers, chat.key(), ms.to_be_bytes()),
            None => self.remove(Tree::ChatTimers, chat.key()),
        }
    }
}
