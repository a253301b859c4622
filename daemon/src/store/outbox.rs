//! The outbox: sealed envelopes waiting to reach their recipients, by sequence number.

use super::schema::Tree;
use super::{Batch, OutboxEntry, Seq, Store, StoreError};

impl Store {
    pub fn outbox_entry(&self, seq: Seq) -> Result<Option<OutboxEntry>, StoreError> {
        self.get(Tree::Outbox, &seq.key(), "outbox entry")
    }

    /// Every entry, in sequence order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(self
            .collect::<OutboxEntry>(Tree::Outbox, &[], "outbox entry")?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// How many entries wait; kept, not counted.
    pub fn outbox_len(&self) -> usize {
        self.counts
            .outbox
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Batch {
    pub fn put_outbox(&mut self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.put(Tree::Outbox, entry.seq.key(), entry)
    }

    pub fn remove_outbox(&mut self, seq: Seq) {
        self.remove(Tree::Outbox, seq.key());
    }
}
