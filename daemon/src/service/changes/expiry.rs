//! Erasing messages: disappearing ones as they come due, and one deleted here only.

use super::*;

/// Disappearing messages erased in one transaction, at most.
const ERASE_CHUNK: usize = 256;
/// How often the node looks for messages due to disappear.
const ERASE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Service {
    /// Erase `found` from the store: the message, what happened to it, and the events that
    /// show it. Its id stays known (without a record) so that a copy is still a duplicate.
    pub(in crate::service) async fn erase(&self, found: &[Found]) -> Result<(), StoreError> {
        if found.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut needles = Vec::new();
        for f in found {
            self.stage_attachment_erasure(&mut batch, f.seq())?;
            match f {
                Found::Direct(seq, _) => batch.remove_message(*seq),
                Found::Group(seq, _) => batch.remove_group_message(*seq),
            }
            batch.remove_extras(f.seq(), &self.inner.store.extras(f.seq())?);
            batch.shred_vanishing(f.seq());
            batch.index_message(&f.id(), None);
            needles.push(format!("\"id\":\"{}\"", f.id()).into_bytes());
        }
        for cursor in self.inner.store.events_matching(|json| {
            needles
                .iter()
                .any(|n| json.windows(n.len()).any(|w| w == n.as_slice()))
        })? {
            batch.remove_event(cursor);
        }
        self.inner.store.commit(batch).await
    }

    /// Erase the disappearing messages due by `now`; returns how many went.
    pub async fn erase_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut erased = 0;
        loop {
            // Nothing due (nearly always): no lock taken, nothing written or flushed.
            if self.inner.store.expired_messages(now, 1)?.is_empty() {
                return Ok(erased);
            }
            let _guard = self.inner.account.lock().await;
            let due = self.inner.store.expired_messages(now, ERASE_CHUNK)?;
            let mut found = Vec::new();
            let mut orphans = Batch::new();
            for seq in &due {
                if let Some(m) = self.inner.store.message(*seq)? {
                    found.push(Found::Direct(*seq, m));
                } else if let Some(m) = self.inner.store.group_message(*seq)? {
                    found.push(Found::Group(*seq, m));
                } else {
                    orphans.remove_extras(*seq, &self.inner.store.extras(*seq)?);
                    orphans.shred_vanishing(*seq);
                }
            }
            if !orphans.is_empty() {
                self.inner.store.commit(orphans).await?;
            }
            self.erase(&found).await?;
            erased += found.len();
            if due.len() < ERASE_CHUNK {
                return Ok(erased);
            }
        }
    }

    /// Erase disappearing messages as they come due, until shutdown.
    pub async fn run_expiry(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.erase_expired(unix_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("{n} disappearing message(s) erased"),
                Err(e) => tracing::warn!("cannot erase disappearing messages: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(ERASE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
