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

mod download;
mod upload;

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
        // Whether something happened that calls for a look at the records (every other
        // event of the node wakes this loop too, and must not cost a walk of the tree).
        let mut look = true;
        loop {
            if std::mem::replace(&mut look, true) {
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
                    Ok(_) => look = false,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => resting.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = retry.tick() => resting.clear(),
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
