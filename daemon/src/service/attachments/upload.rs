//! Uploading an attachment's sealed chunks to mailbox hosts, for a contact who fetches it
//! once this node is gone.

use super::*;

impl Service {
    /// Leave the sealed chunks of an attachment this node sent at mailbox hosts, from where
    /// the last try got to.
    ///
    /// Each deposit runs as a task of its own: a deposit at this node's own host takes the
    /// store's locks, and a future of it left unpolled while this loop awaits a store write
    /// would hold them for ever (as in `delivery.rs`).
    pub(super) async fn upload(
        &self,
        seq: Seq,
        record: AttachmentRecord,
        hosts: Arc<dyn ChunkHosts>,
    ) {
        let blob_ref = Arc::new(record.attachment.blob.clone());
        let positions = blob_ref.chunks().unwrap_or(0).saturating_add(1);
        let dir = self.inner.store.blobs_dir();
        let mut next = record.uploaded;
        let mut uploaded = record.uploaded;
        // Positions done beyond `uploaded` (tasks finish out of order).
        let mut done = std::collections::BTreeSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut stop = None;
        loop {
            while stop.is_none() && next < positions && tasks.len() < UPLOADS_IN_FLIGHT {
                let (dir, hosts, blob_ref, position) =
                    (dir.clone(), hosts.clone(), blob_ref.clone(), next);
                tasks.spawn(async move {
                    let request = ChunkRequest {
                        root: blob_ref.root,
                        position,
                        count: 1,
                    };
                    let sealed = match serve_chunk(dir, request).await {
                        ChunkAnswer::Chunks(mut c) if c.len() == 1 => c.remove(0).into_vec(),
                        _ => {
                            return Err(Stop::Fail(
                                "the sealed file is no longer here to upload".into(),
                            ))
                        }
                    };
                    hosts
                        .deposit_chunk(&blob_ref, position, sealed)
                        .await
                        .map(|()| position)
                        .map_err(|e| Stop::Wait(format!("uploading to mailbox hosts: {e}")))
                });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok(Ok(position)) => {
                    done.insert(position);
                    let before = uploaded;
                    while done.remove(&uploaded) {
                        uploaded += 1;
                    }
                    if uploaded / PROGRESS_EVERY != before / PROGRESS_EVERY || uploaded == positions
                    {
                        self.save_upload(seq, uploaded, None).await;
                    }
                }
                Ok(Err(s)) => {
                    stop.get_or_insert(s);
                }
                Err(e) => {
                    stop.get_or_insert(Stop::Wait(format!("an upload task stopped: {e}")));
                }
            }
        }
        match stop {
            None => tracing::debug!("attachment {} is at the mailbox hosts", record.message),
            Some(Stop::Wait(why) | Stop::Fail(why)) => {
                tracing::debug!("upload of attachment {} stopped: {why}", record.message);
                self.save_upload(seq, uploaded, Some(why)).await;
            }
        }
    }

    /// Record how far an upload got.
    async fn save_upload(&self, seq: Seq, uploaded: u32, error: Option<String>) {
        let _guard = self.inner.account.lock().await;
        let Ok(Some(mut now)) = self.inner.store.attachment(seq) else {
            return;
        };
        now.uploaded = now.uploaded.max(uploaded);
        now.error = error;
        let mut batch = Batch::new();
        if batch.put_attachment(seq, &now).is_ok() {
            if let Err(e) = self.inner.store.commit(batch).await {
                tracing::warn!("cannot record an upload's progress: {e}");
            }
        }
    }
}
