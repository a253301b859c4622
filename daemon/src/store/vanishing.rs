//! The text of disappearing messages, kept out of sled (schema 5).
//!
//! sled is log-structured: a record it removes stays in its files until the segment that
//! held it is reused, which may be never. A disappearing message's text is therefore never
//! written to sled: its record holds an empty text, and the text lives in a file of its own
//! (`vanishing/SEQ` in the store's directory), written before the batch that names it and
//! overwritten with zeros, synced, then removed when the message goes (expired, deleted, or
//! edited: the new text overwrites the old one in place). The event log stores such a
//! message's events without their text (`crate::events`). A file whose message is gone
//! (a crash between the two steps) is shredded when the store opens.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{Batch, Seq, Store, StoreError};

const DIR: &str = "vanishing";

fn io(what: &'static str, e: std::io::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn path(store_dir: &Path, seq: Seq) -> PathBuf {
    store_dir.join(DIR).join(format!("{:016x}", seq.0))
}

/// Overwrite the file with zeros, sync it, and remove it (a missing file is fine).
pub fn shred(path: &Path) -> std::io::Result<()> {
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    drop(file);
    fs::remove_file(path)
}

/// Write `text` over whatever the file held (zeros first, in place), and sync it.
fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old = file.metadata()?.len();
    let zeros = vec![0u8; usize::try_from(old).unwrap_or(0).min(64 * 1024)];
    file.seek(SeekFrom::Start(0))?;
    let mut left = old;
    while left > 0 {
        let n = left.min(zeros.len().max(1) as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    file.sync_all()
}

impl Store {
    /// The text of the disappearing message `seq` (empty once it is gone).
    pub fn vanishing_text(&self, seq: Seq) -> Result<String, StoreError> {
        match fs::read(path(&self.dir, seq)) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io("disappearing text", e)),
        }
    }

    /// Write the texts `batch` keeps (before its records, which name them).
    pub(super) fn write_vanishing(&self, batch: &Batch) -> Result<(), StoreError> {
        for (seq, text) in &batch.vanishing {
            if let Some(text) = text {
                write_in_place(&path(&self.dir, *seq), text)
                    .map_err(|e| io("disappearing text", e))?;
            }
        }
        Ok(())
    }

    /// Shred the texts `batch` lets go (after its records are gone).
    pub(super) fn shred_vanishing(&self, batch: &Batch) -> Result<(), StoreError> {
        for (seq, text) in &batch.vanishing {
            if text.is_none() {
                shred(&path(&self.dir, *seq)).map_err(|e| io("disappearing text", e))?;
            }
        }
        Ok(())
    }

    /// Shred the texts whose message no longer disappears or is gone (a crash between
    /// removing a record and shredding its text). Returns how many.
    pub(super) fn shred_orphan_texts(&self) -> Result<usize, StoreError> {
        let Ok(entries) = fs::read_dir(self.dir.join(DIR)) else {
            return Ok(0);
        };
        let mut shredded = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .map(Seq);
            let keep = match seq {
                Some(seq) => self.extras(seq)?.expires_at.is_some(),
                None => false,
            };
            if !keep {
                shred(&entry.path()).map_err(|e| io("disappearing text", e))?;
                shredded += 1;
            }
        }
        Ok(shredded)
    }
}

impl Batch {
    /// Keep `text` as the text of the disappearing message `seq` (its record holds none).
    pub fn put_vanishing(&mut self, seq: Seq, text: &str) {
        self.vanishing
            .push((seq, Some(Zeroizing::new(text.to_owned()))));
    }

    /// Shred the text of the disappearing message `seq` once the batch is applied.
    pub fn shred_vanishing(&mut self, seq: Seq) {
        self.vanishing.push((seq, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Extras;

    #[tokio::test]
    async fn texts_live_outside_sled_and_are_shredded_with_their_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (seq, other) = (Seq(7), Seq(8));
        let extras = Extras {
            expires_at: Some(1),
            ..Default::default()
        };
        let mut batch = Batch::new();
        batch.put_extras(seq, &Extras::default(), &extras).unwrap();
        batch.put_vanishing(seq, "a long first text");
        batch.put_vanishing(other, "an orphan");
        store.commit(batch).await.unwrap();
        assert_eq!(store.vanishing_text(seq).unwrap(), "a long first text");
        // An edit overwrites in place.
        let mut batch = Batch::new();
        batch.put_vanishing(seq, "short");
        store.commit(batch).await.unwrap();
        assert_eq!(store.vanishing_text(seq).unwrap(), "short");
        // A text whose message does not disappear (a crash before its record) goes when
        // the store opens again.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.vanishing_text(other).unwrap(), "");
        assert_eq!(store.vanishing_text(seq).unwrap(), "short");
        let mut batch = Batch::new();
        batch.remove_extras(seq, &extras);
        batch.shred_vanishing(seq);
        store.commit(batch).await.unwrap();
        assert_eq!(store.vanishing_text(seq).unwrap(), "");
        assert!(!path(dir.path(), seq).exists());
    }
}
