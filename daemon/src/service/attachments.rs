//! Attachments: sending a file (sealed into a blob this node offers, its reference in the
//! message), the record each message with a file gets, and downloading: straight from the
//! sender's node, chunk by chunk, each checked before it is written, resumable after a
//! restart, with progress events (`attachment.progress`).
//!
//! When the contact's node is not connected as the message is sent (or it goes to a
//! group), the sender also leaves the sealed chunks at mailbox hosts (`mailbox::chunks`),
//! so that the file can be fetched once the sender is gone too. A download asks the
//! sender's node first and falls back to those hosts; what neither has waits (state
//! `downloading`, `error` says for what) and is tried again every [`RETRY_EVERY`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use sotto_protocol::blob::{self, ChunkAnswer, ChunkRequest, Opener};
use sotto_protocol::content::{AttachmentKind, Body, Content, Media, MessageId, Post, Source};

use super::views::AttachmentView;
use super::{MessageError, MessageView, Service};
use crate::blobs;
use crate::store::{self, AttachmentRecord, AttachmentState, Batch, Direction, Seq, StoreError};

/// Chunk requests (each for up to 16 chunks, about 1 MiB) in flight for one download.
const IN_FLIGHT: usize = 4;
/// Chunks written between two progress records (about 4 MiB).
const PROGRESS_EVERY: u32 = 64;
/// Tries of one chunk before the download stops for this round.
const CHUNK_TRIES: usize = 3;
/// How often waiting downloads are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(30);
/// Downloads and uploads at once.
const DOWNLOADS_AT_ONCE: usize = 2;
/// Chunks being left at hosts at once, for one upload.
const UPLOADS_IN_FLIGHT: usize = 4;
/// After a wake-up, the download loop looks again this much later (the record that woke
/// it may not be committed yet at the first look).
const LATE_LOOK: Duration = Duration::from_millis(300);
/// Attachments looked at in one pass of the download loop, at most.
const SCAN_LIMIT: usize = 1_000;

/// Why a download stopped.
enum Stop {
    /// Worth trying again later (the sender's node is unreachable).
    Wait(String),
    /// Never completes.
    Fail(String),
}

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

/// Mailbox hosts as attachments use them (`mailbox::chunks` is the implementation): a
/// trait, so that the service does not depend on the mailbox client that depends on it.
pub trait ChunkHosts: Send + Sync + 'static {
    /// Leave sealed chunk `position` of `blob_ref` at the hosts of its drop; `Ok` once at
    /// least one host stored it.
    fn deposit_chunk<'a>(
        &'a self,
        blob_ref: &'a blob::BlobRef,
        position: u32,
        sealed: Vec<u8>,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;

    /// The sealed chunks the hosts of drop `index` of `blob_ref` hold (names not checked
    /// against the manifest yet), reading hosts until `want` are in.
    fn fetch_drop<'a>(
        &'a self,
        blob_ref: &'a blob::BlobRef,
        index: u32,
        want: usize,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Vec<u8>>, String>>;
}

impl Service {
    /// `message.send` with a file: seal it into a blob this node offers, and send its
    /// reference with `caption` (which may be empty).
    pub async fn send_file(
        &self,
        to: &str,
        path: &Path,
        caption: &str,
        kind: AttachmentKind,
        reply_to: Option<&str>,
    ) -> Result<MessageView, MessageError> {
        if caption.len() > sotto_protocol::content::MAX_TEXT_BYTES {
            return Err(MessageError::TooLong {
                limit: sotto_protocol::content::MAX_TEXT_BYTES,
                got: caption.len(),
            });
        }
        let (chat, _) = self.chat_named(to)?;
        let reply_to = reply_to
            .map(|r| self.pick(&chat, r).map(|f| f.id()))
            .transpose()?;
        let dir = self.inner.store.blobs_dir();
        let limit = self.inner.mailbox.max_attachment_bytes;
        let file = path.to_owned();
        let sealed = tokio::task::spawn_blocking(move || blobs::seal_file(&dir, &file, limit))
            .await
            .map_err(|e| MessageError::File(format!("sealing the file stopped: {e}")))?
            .map_err(|e| MessageError::File(e.to_string()))?;
        // Named only to a contact, and as presence names it: group members who are not
        // contacts never learn this node from the group (they fetch from hosts).
        let source = if self.inner.mailbox.mailbox_only || self.is_group(to)? {
            None
        } else {
            let hints = self.route_hints().await;
            hints.peer_id.map(|peer_id| Source {
                peer_id,
                addrs: hints.addrs,
            })
        };
        let attachment = sotto_protocol::content::Attachment {
            blob: sealed.blob,
            name: sealed.name,
            mime: sealed.mime,
            kind,
            source,
        };
        self.send_content(to, |_, timer| {
            Ok(Body::Media(Media {
                post: Post {
                    text: caption.to_owned(),
                    reply_to,
                    expires_in_ms: timer,
                },
                attachment,
            }))
        })
        .await
    }

    /// Put the record of `content`'s file, if it has one, in `batch`: complete for one
    /// this node sent (and to be left at mailbox hosts if `upload`); for one it received,
    /// to be downloaded at once if it is within `auto_download_bytes`, else pending.
    /// Returns its view.
    pub(super) fn stage_attachment(
        &self,
        batch: &mut Batch,
        seq: Seq,
        content: &Content,
        direction: Direction,
        upload: bool,
    ) -> Result<Option<AttachmentView>, StoreError> {
        let Some(attachment) = content.attachment() else {
            return Ok(None);
        };
        let size = attachment.blob.size;
        let chunks = attachment.blob.chunks().unwrap_or(0);
        let (state, have, error) = match direction {
            Direction::Out => (AttachmentState::Complete, chunks, None),
            Direction::In if size > self.inner.mailbox.max_attachment_bytes => (
                AttachmentState::Failed,
                0,
                Some(format!(
                    "larger than max_attachment_bytes ({} bytes)",
                    self.inner.mailbox.max_attachment_bytes
                )),
            ),
            Direction::In if size <= self.inner.mailbox.auto_download_bytes => {
                (AttachmentState::Downloading, 0, None)
            }
            Direction::In => (AttachmentState::Pending, 0, None),
        };
        let record = AttachmentRecord {
            message: content.id,
            direction,
            attachment: attachment.clone(),
            state,
            have,
            path: None,
            error,
            upload: upload && direction == Direction::Out,
            uploaded: 0,
        };
        batch.put_attachment(seq, &record)?;
        if state == AttachmentState::Downloading || record.upload {
            self.inner.blob_wake.notify_one();
        }
        Ok(Some(AttachmentView::of(&record)))
    }

    /// Is the node of `contact` connected to this one now? (If not, a file sent to it is
    /// left at mailbox hosts too.)
    pub(super) async fn node_connected(&self, contact: &store::Contact) -> bool {
        let Some(peer) = contact
            .route
            .as_ref()
            .and_then(|r| PeerId::from_bytes(&r.peer).ok())
        else {
            return false;
        };
        self.inner
            .net
            .status()
            .await
            .is_ok_and(|s| s.connected_peers.contains(&peer))
    }

    /// The attachment of the message `id` (its id, or a unique prefix of 4 or more hex
    /// digits).
    fn find_attachment(&self, id: &str) -> Result<(Seq, AttachmentRecord), MessageError> {
        let wanted = id.trim().to_ascii_lowercase();
        let unknown = || MessageError::NoAttachment(id.to_owned());
        if let Some(full) = MessageId::parse(&wanted) {
            let seq = self
                .inner
                .store
                .message_seq(&full)?
                .flatten()
                .ok_or_else(unknown)?;
            let record = self.inner.store.attachment(seq)?.ok_or_else(unknown)?;
            return Ok((seq, record));
        }
        if wanted.len() < 4 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let all = [
            AttachmentState::Pending,
            AttachmentState::Downloading,
            AttachmentState::Complete,
            AttachmentState::Failed,
        ];
        let mut hits: Vec<(Seq, AttachmentRecord)> = self
            .inner
            .store
            .attachments_in(&all, usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.message.to_string().starts_with(&wanted))
            .collect();
        match hits.len() {
            0 => Err(unknown()),
            1 => Ok(hits.remove(0)),
            _ => Err(MessageError::AmbiguousMessage(id.to_owned())),
        }
    }

    /// `attachment.get`: the attachment of message `id`. One not downloaded yet (pending,
    /// or failed) is asked for; a complete one is copied to `out` if given (never over an
    /// existing file).
    pub async fn attachment_get(
        &self,
        id: &str,
        out: Option<&Path>,
    ) -> Result<AttachmentView, MessageError> {
        let _guard = self.inner.account.lock().await;
        let (seq, mut record) = self.find_attachment(id)?;
        match record.state {
            AttachmentState::Pending | AttachmentState::Failed
                if record.direction == Direction::In =>
            {
                if record.attachment.blob.size > self.inner.mailbox.max_attachment_bytes {
                    return Err(MessageError::File(format!(
                        "the file is larger than max_attachment_bytes ({} bytes)",
                        self.inner.mailbox.max_attachment_bytes
                    )));
                }
                record.state = AttachmentState::Downloading;
                record.error = None;
                let mut batch = Batch::new();
                batch.put_attachment(seq, &record)?;
                self.inner.store.commit(batch).await?;
                self.inner.blob_wake.notify_one();
            }
            AttachmentState::Complete => {
                if let (Some(out), Some(from)) = (out, &record.path) {
                    let (from, out) = (from.clone(), out.to_owned());
                    tokio::task::spawn_blocking(move || blobs::copy_out(&from, &out))
                        .await
                        .map_err(|e| MessageError::File(e.to_string()))?
                        .map_err(|e| MessageError::File(e.to_string()))?;
                }
            }
            _ => {}
        }
        Ok(AttachmentView::of(&record))
    }

    /// Download attachments that are asked for, as they are, and every [`RETRY_EVERY`]
    /// those that wait; leave the chunks of attachments sent to contacts who were away at
    /// mailbox hosts (`hosts`); until shutdown.
    pub async fn run_downloads(
        self,
        hosts: Arc<dyn ChunkHosts>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let dir = self.inner.store.blobs_dir();
        let pruned = tokio::task::spawn_blocking(move || blobs::prune_offered(&dir))
            .await
            .unwrap_or(0);
        if pruned > 0 {
            tracing::info!("{pruned} old sealed attachment(s) no longer offered");
        }
        let mut running: futures::stream::FuturesUnordered<
            futures::future::BoxFuture<'static, Seq>,
        > = futures::stream::FuturesUnordered::new();
        let mut busy: HashSet<Seq> = HashSet::new();
        // Work that stopped (the sender away, no hosts) waits for the next retry.
        let mut resting: HashSet<Seq> = HashSet::new();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut late: Option<tokio::time::Instant> = None;
        // A received message with a file is announced once it is committed: the moment to
        // look for a download.
        let mut events = self.inner.events.subscribe();
        loop {
            let wanted = self
                .inner
                .store
                .attachments_in(&[AttachmentState::Downloading], SCAN_LIMIT)
                .and_then(|mut w| {
                    w.extend(self.inner.store.attachments_to_upload(SCAN_LIMIT)?);
                    Ok(w)
                });
            match wanted {
                Ok(wanted) => {
                    for (seq, record) in wanted {
                        if busy.len() >= DOWNLOADS_AT_ONCE {
                            break;
                        }
                        if resting.contains(&seq) || !busy.insert(seq) {
                            continue;
                        }
                        let (s, h) = (self.clone(), hosts.clone());
                        running.push(Box::pin(async move {
                            match record.direction {
                                Direction::In => s.download(seq, record, h.as_ref()).await,
                                Direction::Out => s.upload(seq, record, h).await,
                            }
                            seq
                        }));
                    }
                }
                Err(e) => tracing::warn!("cannot read attachments: {e}"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(seq) = running.next(), if !running.is_empty() => {
                    busy.remove(&seq);
                    resting.insert(seq);
                }
                _ = self.inner.blob_wake.notified() => {
                    // The record that woke this loop is staged before it is committed:
                    // look now, and once more a moment later.
                    resting.clear();
                    late = Some(tokio::time::Instant::now() + LATE_LOOK);
                }
                _ = tokio::time::sleep_until(late.unwrap_or_else(tokio::time::Instant::now)),
                    if late.is_some() => {
                    late = None;
                }
                event = events.recv() => match event {
                    Ok(e) if e["message"]["attachments"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty()) => resting.clear(),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => resting.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = retry.tick() => resting.clear(),
            }
        }
    }

    /// Download one attachment as far as it goes now, recording where it got.
    async fn download(&self, seq: Seq, record: AttachmentRecord, hosts: &dyn ChunkHosts) {
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

    /// Leave the sealed chunks of an attachment this node sent at mailbox hosts, from where
    /// the last try got to.
    ///
    /// Each deposit runs as a task of its own: a deposit at this node's own host takes the
    /// store's locks, and a future of it left unpolled while this loop awaits a store write
    /// would hold them for ever (as in `delivery.rs`).
    async fn upload(&self, seq: Seq, record: AttachmentRecord, hosts: Arc<dyn ChunkHosts>) {
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

    /// Store `record` with an `attachment.progress` event.
    async fn save_attachment(&self, seq: Seq, record: &AttachmentRecord) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put_attachment(seq, record)?;
        let order = self.inner.events.order().await;
        let event = self.inner.events.stage(
            &mut batch,
            "attachment.progress",
            "attachment",
            &AttachmentView::of(record),
        )?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(vec![event]);
        drop(order);
        Ok(())
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

    /// Stage the erasure of message `seq`'s attachment, if it has one: the record, and,
    /// once the batch is applied, the download, its partial file and the sealed blob this
    /// node offered (shredded).
    pub(super) fn stage_attachment_erasure(
        &self,
        batch: &mut Batch,
        seq: Seq,
    ) -> Result<(), StoreError> {
        let Some(r) = self.inner.store.attachment(seq)? else {
            return Ok(());
        };
        batch.remove_attachment(seq);
        let dir = self.inner.store.blobs_dir();
        let root = &r.attachment.blob.root;
        batch.shred_after(blobs::partial_path(&dir, root));
        batch.shred_after(blobs::offered_path(&dir, root));
        if let (Direction::In, Some(p)) = (r.direction, &r.path) {
            batch.shred_after(p.clone());
        }
        Ok(())
    }
}

/// The answer to a chunk request that arrived: read in a blocking task.
pub async fn serve_chunk(blobs_dir: PathBuf, request: ChunkRequest) -> ChunkAnswer {
    tokio::task::spawn_blocking(move || blobs::read_chunks(&blobs_dir, &request))
        .await
        .unwrap_or(ChunkAnswer::Refused(blob::ChunkRefusal::Internal))
}

/// Parse `file`, `voice`, `sticker` or `gif`.
pub fn parse_kind(kind: &str) -> Option<AttachmentKind> {
    match kind {
        "file" => Some(AttachmentKind::File),
        "voice" => Some(AttachmentKind::Voice),
        "sticker" => Some(AttachmentKind::Sticker),
        "gif" => Some(AttachmentKind::Gif),
        _ => None,
    }
}
