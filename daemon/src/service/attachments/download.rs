//! Downloading an attachment: from the sender's node (16 chunks a request, 4 requests in
//! flight), else from mailbox hosts, one blob drop at a time; each chunk checked against the
//! manifest before it is appended to the partial file; the file moved to its final name
//! once complete.

use super::*;

/// The sealed chunks of one of a blob's drops, by name.
type DropChunks = HashMap<[u8; 32], Vec<u8>>;

/// Where a download gets its chunks.
enum Supply<'a> {
    /// The sender's node.
    Direct {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        hosts: &'a dyn ChunkHosts,
    },
    /// Mailbox hosts, one drop of the blob at a time (the last one read kept).
    Hosts {
        hosts: &'a dyn ChunkHosts,
        drop: Option<(u32, DropChunks)>,
    },
}

impl<'a> Supply<'a> {
    /// The sender's node if the message names one, else mailbox hosts.
    fn new(source: Option<&Source>, hosts: &'a dyn ChunkHosts) -> Self {
        let direct = source.and_then(|s| {
            let peer = PeerId::from_bytes(&s.peer_id).ok()?;
            let addrs = s.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            Some((peer, addrs))
        });
        match direct {
            Some((peer, addrs)) => Supply::Direct { peer, addrs, hosts },
            None => Supply::Hosts { hosts, drop: None },
        }
    }

    /// The sealed chunk at `position`, whose name is `address`; from mailbox hosts once the
    /// sender's node does not answer.
    async fn chunk(
        &mut self,
        service: &Service,
        blob_ref: &blob::BlobRef,
        position: u32,
        address: &[u8; 32],
    ) -> Result<Vec<u8>, Stop> {
        if let Supply::Direct { peer, addrs, hosts } = self {
            match service
                .chunk_from(*peer, addrs, blob_ref.root, position)
                .await
            {
                Ok(bytes) => return Ok(bytes),
                Err(Stop::Wait(why)) => {
                    tracing::debug!("the sender's node did not answer ({why}); asking hosts");
                    *self = Supply::Hosts {
                        hosts: *hosts,
                        drop: None,
                    };
                }
                Err(fail) => return Err(fail),
            }
        }
        let Supply::Hosts { hosts, drop } = self else {
            return Err(Stop::Wait("no supply".into()));
        };
        let index = position / blob::CHUNKS_PER_DROP;
        if drop.as_ref().is_none_or(|(i, _)| *i != index) {
            let chunks = blob_ref.chunks().unwrap_or(0);
            let first = index * blob::CHUNKS_PER_DROP;
            let last = ((index + 1) * blob::CHUNKS_PER_DROP).min(chunks + 1);
            let want = last.saturating_sub(first) as usize;
            let found = hosts.fetch_drop(blob_ref, index, want).await.map_err(|e| {
                Stop::Wait(format!(
                    "the sender's node is away and the mailbox hosts do not have the file: {e}"
                ))
            })?;
            *drop = Some((
                index,
                found.into_iter().map(|c| (blob::address(&c), c)).collect(),
            ));
        }
        drop.as_mut()
            .and_then(|(_, m)| m.remove(address))
            .ok_or_else(|| {
                Stop::Wait(format!(
                    "the sender's node is away and the mailbox hosts lack chunk {position}"
                ))
            })
    }
}

/// The partial file of a download, and the chunks checked but not written yet.
struct Writer {
    file: Option<std::fs::File>,
    record: AttachmentRecord,
    pending: Vec<zeroize::Zeroizing<Vec<u8>>>,
}

impl Writer {
    /// Append the pending chunks, make them durable, and record the progress.
    async fn write(&mut self, service: &Service, seq: Seq) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut f = self
            .file
            .take()
            .ok_or_else(|| Stop::Wait("lost the partial file".into()))?;
        let chunks = std::mem::take(&mut self.pending);
        let written = chunks.len() as u32;
        let f = tokio::task::spawn_blocking(move || blobs::append(&mut f, &chunks).map(|()| f))
            .await
            .map_err(|e| Stop::Wait(e.to_string()))?
            .map_err(|e| Stop::Wait(e.to_string()))?;
        self.file = Some(f);
        self.record.have += written;
        let _ = service.save_attachment(seq, &self.record).await;
        Ok(())
    }
}

impl Service {
    /// Download one attachment as far as it goes now, recording where it got.
    pub(super) async fn download(
        &self,
        seq: Seq,
        record: AttachmentRecord,
        hosts: &dyn ChunkHosts,
    ) {
        let stop = self.fetch_blob(seq, &record, hosts).await;
        let Err(stop) = stop else {
            return;
        };
        self.record_stop(seq, &record, stop, AttachmentState::Downloading)
            .await;
    }

    /// Record why work on an attachment stopped, if its record is still in `state`.
    async fn record_stop(
        &self,
        seq: Seq,
        record: &AttachmentRecord,
        stop: Stop,
        state: AttachmentState,
    ) {
        let _guard = self.inner.account.lock().await;
        // The record may have gone (the message disappeared) or moved on.
        let Ok(Some(mut now)) = self.inner.store.attachment(seq) else {
            return;
        };
        if now.state != state {
            return;
        }
        match stop {
            Stop::Wait(why) => {
                tracing::debug!("attachment {} waits: {why}", record.message);
                now.error = Some(why);
            }
            Stop::Fail(why) => {
                tracing::info!("attachment {} failed: {why}", record.message);
                now.state = AttachmentState::Failed;
                now.error = Some(why);
            }
        }
        let _ = self.save_attachment(seq, &now).await;
    }

    /// Fetch the chunks of `record`'s blob not downloaded yet — from the sender's node,
    /// else from mailbox hosts — check and write each, and finish the file.
    async fn fetch_blob(
        &self,
        seq: Seq,
        record: &AttachmentRecord,
        hosts: &dyn ChunkHosts,
    ) -> Result<(), Stop> {
        let attachment = &record.attachment;
        let blob_ref = &attachment.blob;
        let chunks = blob_ref.chunks().map_err(|e| Stop::Fail(e.to_string()))?;
        let mut supply = Supply::new(attachment.source.as_ref(), hosts);
        let manifest = supply.chunk(self, blob_ref, 0, &blob_ref.root).await?;
        let opener = Opener::new(blob_ref, &manifest).map_err(|e| Stop::Fail(e.to_string()))?;
        let partial = blobs::partial_path(&self.inner.store.blobs_dir(), &blob_ref.root);
        let (p, size) = (partial.clone(), blob_ref.size);
        let (have, file) = tokio::task::spawn_blocking(move || blobs::resume(&p, size))
            .await
            .map_err(|e| Stop::Wait(e.to_string()))?
            .map_err(|e| Stop::Wait(e.to_string()))?;
        let mut writer = Writer {
            file: Some(file),
            record: record.clone(),
            pending: Vec::new(),
        };
        writer.record.have = have;
        let mut next = have;
        // From the sender's node, several chunks in flight.
        if let Supply::Direct { peer, addrs, .. } = &supply {
            let (peer, addrs, opener) = (*peer, addrs.clone(), &opener);
            let addrs = &addrs;
            let per = u32::from(blob::MAX_CHUNKS_PER_ANSWER);
            let mut fetched = futures::stream::iter((have..chunks).step_by(per as usize))
                .map(|first| async move {
                    let count = u8::try_from((chunks - first).min(per)).unwrap_or(1);
                    let mut last = String::new();
                    for _ in 0..CHUNK_TRIES {
                        let sealed = self
                            .chunks_from(peer, addrs, blob_ref.root, first + 1, count)
                            .await?;
                        let opened: Result<Vec<_>, _> = sealed
                            .iter()
                            .zip(first..)
                            .map(|(bytes, index)| opener.open_chunk(index, bytes))
                            .collect();
                        match opened {
                            Ok(plain) if plain.len() == usize::from(count) => return Ok(plain),
                            Ok(_) => last = "fewer chunks than the blob has".into(),
                            // A chunk that does not match its name is asked for again.
                            Err(e) => last = e.to_string(),
                        }
                    }
                    Err(Stop::Wait(format!(
                        "the sender's node sent a bad chunk: {last}"
                    )))
                })
                .buffered(IN_FLIGHT);
            let mut stopped = None;
            while let Some(result) = fetched.next().await {
                match result {
                    Ok(plain) => {
                        next += plain.len() as u32;
                        writer.pending.extend(plain);
                        if writer.pending.len() >= PROGRESS_EVERY as usize {
                            writer.write(self, seq).await?;
                        }
                    }
                    Err(stop) => {
                        stopped = Some(stop);
                        break;
                    }
                }
            }
            drop(fetched);
            writer.write(self, seq).await?;
            if let Some(stop) = stopped {
                match stop {
                    // The sender went away half-way: the hosts may have the rest.
                    Stop::Wait(why) => {
                        tracing::debug!("the sender's node stopped answering: {why}");
                        supply = Supply::new(None, hosts);
                    }
                    fail => return Err(fail),
                }
            }
        }
        // From mailbox hosts, one drop of chunks at a time.
        for index in next..chunks {
            let address = opener
                .addresses()
                .get(index as usize)
                .ok_or_else(|| Stop::Fail("the manifest names too few chunks".into()))?;
            let bytes = supply.chunk(self, blob_ref, index + 1, address).await?;
            let plain = opener
                .open_chunk(index, &bytes)
                .map_err(|e| Stop::Wait(format!("a host's chunk does not open: {e}")))?;
            writer.pending.push(plain);
            if writer.pending.len() >= PROGRESS_EVERY as usize {
                writer.write(self, seq).await?;
            }
        }
        writer.write(self, seq).await?;
        let Writer {
            file, mut record, ..
        } = writer;
        drop(file);
        // Every chunk is in and checked: the file goes to its final name.
        let name = attachment.name.clone();
        let dest_dir = self.inner.store.downloads_dir();
        let final_path: PathBuf =
            tokio::task::spawn_blocking(move || blobs::finish(&partial, &dest_dir, &name))
                .await
                .map_err(|e| Stop::Wait(e.to_string()))?
                .map_err(|e| Stop::Wait(e.to_string()))?;
        let _guard = self.inner.account.lock().await;
        if !matches!(self.inner.store.attachment(seq), Ok(Some(_))) {
            // The message went while the file came: so does the file.
            let _ = store::shred_file(&final_path);
            return Ok(());
        }
        record.state = AttachmentState::Complete;
        record.have = chunks;
        record.path = Some(final_path);
        record.error = None;
        self.save_attachment(seq, &record)
            .await
            .map_err(|e| Stop::Wait(e.to_string()))
    }

    /// One sealed chunk of the blob `root` from `peer`.
    async fn chunk_from(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        root: [u8; 32],
        position: u32,
    ) -> Result<Vec<u8>, Stop> {
        let mut chunks = self.chunks_from(peer, addrs, root, position, 1).await?;
        Ok(chunks.remove(0))
    }

    /// `count` sealed chunks (at least one; fewer where the blob ends) of the blob `root`
    /// from `peer`, from `position` on.
    async fn chunks_from(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        root: [u8; 32],
        position: u32,
        count: u8,
    ) -> Result<Vec<Vec<u8>>, Stop> {
        let request = ChunkRequest {
            root,
            position,
            count,
        };
        match self.inner.net.chunk(peer, addrs.to_vec(), &request).await {
            Ok(ChunkAnswer::Chunks(c)) if !c.is_empty() && c.len() <= usize::from(count) => {
                Ok(c.into_iter().map(blob::ByteBuf::into_vec).collect())
            }
            Ok(ChunkAnswer::Chunks(_)) => Err(Stop::Wait(
                "the sender's node sent another number of chunks than asked".into(),
            )),
            Ok(ChunkAnswer::Unknown) => Err(Stop::Fail(
                "the sender's node no longer offers this file".into(),
            )),
            Ok(ChunkAnswer::Refused(r)) => {
                Err(Stop::Wait(format!("the sender's node refused: {r:?}")))
            }
            Err(e) => Err(Stop::Wait(format!(
                "the sender's node is not reachable: {e}"
            ))),
        }
    }
}
