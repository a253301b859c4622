//! Attachments: sending a file (sealed into a blob this node offers, its reference in the
//! message), the record each message with a file gets, and downloading: straight from the
//! sender's node, chunk by chunk, each checked before it is written, resumable after a
//! restart, with progress events (`attachment.progress`).
//!
//! Transfer through mailbox hosts, for a sender that is offline or mailbox-only, is not
//! built: such a download waits (state `downloading`, `error` says for what) and is tried
//! again every [`RETRY_EVERY`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use sotto_protocol::blob::{self, ChunkAnswer, ChunkRequest, Opener};
use sotto_protocol::content::{AttachmentKind, Body, Content, Media, MessageId, Post, Source};

use super::views::AttachmentView;
use super::{MessageError, MessageView, Service};
use crate::blobs;
use crate::store::{self, AttachmentRecord, AttachmentState, Batch, Direction, Seq, StoreError};

/// Chunk requests in flight for one download.
const IN_FLIGHT: usize = 8;
/// Chunks written between two progress records (about 1 MiB).
const PROGRESS_EVERY: u32 = 16;
/// Tries of one chunk before the download stops for this round.
const CHUNK_TRIES: usize = 3;
/// How often waiting downloads are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(30);
/// Downloads at once.
const DOWNLOADS_AT_ONCE: usize = 2;
/// Attachments looked at in one pass of the download loop, at most.
const SCAN_LIMIT: usize = 1_000;

/// Why a download stopped.
enum Stop {
    /// Worth trying again later (the sender's node is unreachable).
    Wait(String),
    /// Never completes.
    Fail(String),
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
        let source = if self.inner.mailbox.mailbox_only {
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
    /// this node sent; for one it received, to be downloaded at once if it is within
    /// `auto_download_bytes`, else pending. Returns its view.
    pub(super) fn stage_attachment(
        &self,
        batch: &mut Batch,
        seq: Seq,
        content: &Content,
        direction: Direction,
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
        };
        batch.put_attachment(seq, &record)?;
        if state == AttachmentState::Downloading {
            self.inner.blob_wake.notify_one();
        }
        Ok(Some(AttachmentView::of(&record)))
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
    /// those that wait; until shutdown.
    pub async fn run_downloads(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
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
        let mut busy: std::collections::HashSet<Seq> = std::collections::HashSet::new();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // What is asked for and not running, oldest first.
            if busy.len() < DOWNLOADS_AT_ONCE {
                match self
                    .inner
                    .store
                    .attachments_in(&[AttachmentState::Downloading], SCAN_LIMIT)
                {
                    Ok(wanted) => {
                        for (seq, record) in wanted {
                            if busy.len() >= DOWNLOADS_AT_ONCE {
                                break;
                            }
                            if busy.insert(seq) {
                                let s = self.clone();
                                running.push(Box::pin(async move {
                                    s.download(seq, record).await;
                                    seq
                                }));
                            }
                        }
                    }
                    Err(e) => tracing::warn!("cannot read attachments: {e}"),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(seq) = running.next(), if !running.is_empty() => {
                    busy.remove(&seq);
                    // The next one may start, but not this one again until the next retry.
                    if busy.len() < DOWNLOADS_AT_ONCE {
                        tokio::select! {
                            _ = self.inner.blob_wake.notified() => {}
                            _ = retry.tick() => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                _ = self.inner.blob_wake.notified() => {
                    // The record that woke this loop may be committed a moment later.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ = retry.tick() => {}
            }
        }
    }

    /// Download one attachment as far as it goes now, recording where it got.
    async fn download(&self, seq: Seq, record: AttachmentRecord) {
        let stop = self.fetch_blob(seq, &record).await;
        let Err(stop) = stop else {
            return;
        };
        let _guard = self.inner.account.lock().await;
        // The record may have gone (the message disappeared) or moved on.
        let Ok(Some(mut now)) = self.inner.store.attachment(seq) else {
            return;
        };
        if now.state != AttachmentState::Downloading {
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

    /// Fetch the chunks of `record`'s blob not downloaded yet from its source, check and
    /// write each, and finish the file.
    async fn fetch_blob(&self, seq: Seq, record: &AttachmentRecord) -> Result<(), Stop> {
        let attachment = &record.attachment;
        let source = attachment.source.as_ref().ok_or_else(|| {
            Stop::Wait(
                "the sender named no node to fetch from (fetching through mailbox hosts is \
                 not built yet)"
                    .into(),
            )
        })?;
        let peer = PeerId::from_bytes(&source.peer_id)
            .map_err(|_| Stop::Fail("the sender's node id is malformed".into()))?;
        let addrs: Vec<Multiaddr> = source.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let blob_ref = &attachment.blob;
        let chunks = blob_ref.chunks().map_err(|e| Stop::Fail(e.to_string()))?;
        let manifest = self.chunk_from(peer, &addrs, blob_ref.root, 0).await?;
        let opener = Opener::new(blob_ref, &manifest).map_err(|e| Stop::Fail(e.to_string()))?;
        let partial = blobs::partial_path(&self.inner.store.blobs_dir(), &blob_ref.root);
        let (p, size) = (partial.clone(), blob_ref.size);
        let (have, file) = tokio::task::spawn_blocking(move || blobs::resume(&p, size))
            .await
            .map_err(|e| Stop::Wait(e.to_string()))?
            .map_err(|e| Stop::Wait(e.to_string()))?;
        let mut file = Some(file);
        let mut record = record.clone();
        record.have = have;
        let opener = &opener;
        let addrs = &addrs;
        let mut fetched = futures::stream::iter(have..chunks)
            .map(|index| async move {
                let mut last = String::new();
                for _ in 0..CHUNK_TRIES {
                    let bytes = self
                        .chunk_from(peer, addrs, blob_ref.root, index + 1)
                        .await?;
                    match opener.open_chunk(index, &bytes) {
                        Ok(plain) => return Ok(plain),
                        // A chunk that does not match its name is asked for again.
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(Stop::Wait(format!(
                    "the sender's node sent a bad chunk: {last}"
                )))
            })
            .buffered(IN_FLIGHT);
        let mut pending = Vec::new();
        loop {
            let next = fetched.next().await;
            let done = next.is_none();
            let stopped = match next {
                Some(Ok(plain)) => {
                    pending.push(plain);
                    None
                }
                Some(Err(stop)) => Some(stop),
                None => None,
            };
            let flush = done || stopped.is_some() || pending.len() >= PROGRESS_EVERY as usize;
            if flush && !pending.is_empty() {
                let mut f = file
                    .take()
                    .ok_or_else(|| Stop::Wait("lost the file".into()))?;
                let chunks_now = std::mem::take(&mut pending);
                let written = chunks_now.len() as u32;
                let f = tokio::task::spawn_blocking(move || {
                    blobs::append(&mut f, &chunks_now).map(|()| f)
                })
                .await
                .map_err(|e| Stop::Wait(e.to_string()))?
                .map_err(|e| Stop::Wait(e.to_string()))?;
                file = Some(f);
                record.have += written;
                if !done && stopped.is_none() {
                    let _ = self.save_attachment(seq, &record).await;
                }
            }
            if let Some(stop) = stopped {
                let _ = self.save_attachment(seq, &record).await;
                return Err(stop);
            }
            if done {
                break;
            }
        }
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
            let _ = std::fs::remove_file(&final_path);
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
        let request = ChunkRequest { root, position };
        match self.inner.net.chunk(peer, addrs.to_vec(), &request).await {
            Ok(ChunkAnswer::Chunk(bytes)) => Ok(bytes),
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

    /// Remove the files of attachments whose records were just erased (`records`): the
    /// download, its partial file, and the sealed blob this node offered.
    pub(super) fn erase_attachment_files(&self, records: &[AttachmentRecord]) {
        let dir = self.inner.store.blobs_dir();
        for r in records {
            let root = &r.attachment.blob.root;
            let _ = store::shred_file(&blobs::partial_path(&dir, root));
            if r.direction == Direction::In {
                if let Some(p) = &r.path {
                    let _ = store::shred_file(p);
                }
            }
            let _ = std::fs::remove_file(blobs::offered_path(&dir, root));
        }
    }
}

/// The answer to a chunk request that arrived: read in a blocking task.
pub async fn serve_chunk(blobs_dir: PathBuf, request: ChunkRequest) -> ChunkAnswer {
    tokio::task::spawn_blocking(move || blobs::read_chunk(&blobs_dir, &request))
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
