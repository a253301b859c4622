//! Attachments of messages ([`AttachmentRecord`], one per message that carries a file) and
//! where their files live on disk: sealed blobs this node offers (`blobs/sent/ROOT`),
//! downloads under way (`blobs/partial/ROOT`), and finished downloads (`attachments/`), all
//! in the data directory beside the store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sotto_protocol::content::{Attachment, MessageId};

use super::schema::Tree;
use super::{Batch, Direction, Seq, Store, StoreError};

/// Where an attachment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachmentState {
    /// Not downloaded (larger than the automatic limit, or not asked for yet).
    Pending,
    /// Asked for: being downloaded, or waiting for its sender's node to come back.
    Downloading,
    /// On disk at `path`, every chunk checked.
    Complete,
    /// Cannot be completed (`error` says why).
    Failed,
}

impl AttachmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentState::Pending => "pending",
            AttachmentState::Downloading => "downloading",
            AttachmentState::Complete => "complete",
            AttachmentState::Failed => "failed",
        }
    }
}

/// The file of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    pub message: MessageId,
    pub direction: Direction,
    pub attachment: Attachment,
    pub state: AttachmentState,
    /// Data chunks downloaded and written, in order (all of them once complete).
    pub have: u32,
    /// The file: the one sent (outgoing), or the finished download (incoming).
    pub path: Option<PathBuf>,
    /// Why the download failed, or why it waits.
    pub error: Option<String>,
    /// Outgoing: the chunks are to be left at mailbox hosts too (the contact's node was not
    /// connected when it was sent, or it went to a group).
    pub upload: bool,
    /// Outgoing: sealed chunks left at hosts so far, by position in order (the manifest
    /// first).
    pub uploaded: u32,
}

impl Store {
    /// The data directory's folder of blobs (beside the store's own).
    pub fn blobs_dir(&self) -> PathBuf {
        self.data_dir().join("blobs")
    }

    /// Where finished downloads go.
    pub fn downloads_dir(&self) -> PathBuf {
        self.data_dir().join("attachments")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| self.dir.clone())
    }

    pub fn attachment(&self, seq: Seq) -> Result<Option<AttachmentRecord>, StoreError> {
        self.get(Tree::Attachments, &seq.key(), "attachment")
    }

    /// Outgoing attachments whose chunks are still to be left at hosts, oldest first, at
    /// most `limit`.
    pub fn attachments_to_upload(
        &self,
        limit: usize,
    ) -> Result<Vec<(Seq, AttachmentRecord)>, StoreError> {
        self.attachments_where(limit, |r| {
            r.upload && r.uploaded < r.attachment.blob.chunks().unwrap_or(0).saturating_add(1)
        })
    }

    /// Attachments in `states`, oldest message first, at most `limit`.
    pub fn attachments_in(
        &self,
        states: &[AttachmentState],
        limit: usize,
    ) -> Result<Vec<(Seq, AttachmentRecord)>, StoreError> {
        self.attachments_where(limit, |r| states.contains(&r.state))
    }

    fn attachments_where(
        &self,
        limit: usize,
        wanted: impl Fn(&AttachmentRecord) -> bool,
    ) -> Result<Vec<(Seq, AttachmentRecord)>, StoreError> {
        let mut found = Vec::new();
        self.walk(
            Tree::Attachments,
            &[],
            "attachment",
            |k, r: AttachmentRecord| {
                if wanted(&r) {
                    if let Some(seq) = super::be_u64(k).map(Seq) {
                        found.push((seq, r));
                    }
                }
                found.len() < limit
            },
        )?;
        Ok(found)
    }
}

impl Batch {
    pub fn put_attachment(
        &mut self,
        seq: Seq,
        record: &AttachmentRecord,
    ) -> Result<(), StoreError> {
        self.put(Tree::Attachments, seq.key(), record)
    }

    pub fn remove_attachment(&mut self, seq: Seq) {
        self.remove(Tree::Attachments, seq.key());
    }

    /// Overwrite `path` with zeros, sync and remove it once the batch is applied (a missing
    /// file is fine).
    pub fn shred_after(&mut self, path: PathBuf) {
        self.shred.push(path);
    }
}
