//! The event log's storage: events (JSON) by cursor, the newest [`super::MAX_EVENTS`].

use super::schema::Tree;
use super::{be_u64, Batch, Store, StoreError};

impl Store {
    /// Stored events after the cursor `after`, oldest first, at most `limit`, as JSON bytes.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for kv in self.tree(Tree::Events).range(start..) {
            let (_, v) = kv?;
            out.push(v.to_vec());
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The newest event's cursor, or 0.
    pub fn last_event_cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .tree(Tree::Events)
            .last()?
            .and_then(|(k, _)| be_u64(&k))
            .unwrap_or(0))
    }

    /// How many events are stored; kept, not counted.
    pub fn event_count(&self) -> usize {
        self.counts
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop the oldest events until at most `keep` are left; returns how many went.
    pub fn trim_events(&self, keep: usize) -> Result<usize, StoreError> {
        let tree = self.tree(Tree::Events);
        let mut dropped = 0;
        while self.event_count() > keep {
            if tree.pop_min()?.is_none() {
                break;
            }
            self.counts
                .events
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            dropped += 1;
        }
        Ok(dropped)
    }
}

impl Store {
    /// The cursors of the stored events whose JSON `matches` picks. Reads every stored
    /// event: for erasing what a disappearing message left in the log, which is rare.
    pub fn events_matching(&self, matches: impl Fn(&[u8]) -> bool) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Events).iter() {
            let (k, v) = kv?;
            if matches(&v) {
                out.extend(be_u64(&k));
            }
        }
        Ok(out)
    }
}

impl Batch {
    pub fn remove_event(&mut self, cursor: u64) {
        self.remove(Tree::Events, cursor.to_be_bytes());
    }

    pub fn put_event(&mut self, cursor: u64, json: Vec<u8>) {
        self.put_raw(Tree::Events, cursor.to_be_bytes(), json);
    }
}
