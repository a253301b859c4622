//! The node's persistent state, in sled, behind the operations the node needs.
//!
//! The schema (trees, key layouts, meta keys) is private to this module: callers read and
//! write typed records through one method per operation, grouped by record family —
//! [`contacts`] (contacts, names, seal keys, sessions, blocks), [`messages`] (history,
//! message ids, seen envelopes), [`outbox`], [`events`], [`hosting`] (envelopes hosted for
//! others) and [`meta`] (keys, the account, bans, bookkeeping).
//!
//! Every change that belongs together — a message, its session state, its outbox entry and
//! its event — is staged in one [`Batch`] and written in one transaction across trees;
//! [`Store::commit`] flushes to disk before it returns, so that whatever the daemon reports
//! as stored survives a crash. Records are encoded with the protocol's one codec.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional as _;
use sotto_protocol::codec;

pub mod attachments;
pub mod contacts;
pub mod events;
pub mod extras;
pub mod groups;
pub mod hosting;
pub mod messages;
pub mod meta;
pub mod outbox;
mod records;
mod schema;
pub mod vanishing;

pub use attachments::{AttachmentRecord, AttachmentState};
pub use groups::{
    Assembling, GroupMessage, GroupOutboxEntry, GroupRecord, GroupStatus, InboundSessions, Outbound,
};
pub use records::{
    Ban, Chat, Contact, Direction, Extras, GuardRecord, HostStats, Hosted, InboxSecret, Message,
    OutboxEntry, Parked, Route, Seq, State, Usage,
};
use schema::{Tree, TREES};
pub use vanishing::shred as shred_file;

/// The schema this code writes; a store written by a newer one is refused.
pub const SCHEMA_VERSION: u32 = 6;
/// The newest events kept for clients that reconnect.
pub const MAX_EVENTS: usize = 10_000;
/// Free bytes below which the store refuses new records, so that the store itself never
/// runs into a full disk half-way through a write (sled writes whole log segments).
pub const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// How often, and how long apart, opening a store retries while sled's file lock is held
/// (see [`Store::open`]): 2 s in all.
const LOCK_TRIES: u32 = 80;
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(25);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("the data directory was written by a newer sotto (schema {found}, this one knows {known}); update sotto")]
    NewerSchema { found: u32, known: u32 },
    #[error("the disk holding {dir} is full ({free} bytes free; sotto stops writing below {MIN_FREE_BYTES}); free some space and it carries on")]
    DiskFull { dir: String, free: u64 },
}

/// Writes that must happen together. Staged with the typed methods of each record family,
/// applied with [`Store::commit`] or [`Store::apply`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>,
    /// Texts of disappearing messages to write (before the ops) or shred (after): see
    /// [`vanishing`].
    vanishing: Vec<(Seq, Option<zeroize::Zeroizing<String>>)>,
    /// Files to shred once the batch is applied (attachments of erased messages).
    shred: Vec<PathBuf>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.vanishing.is_empty() && self.shred.is_empty()
    }

    fn put_raw(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), Some(value.into())));
    }

    fn put<T: Serialize + ?Sized>(
        &mut self,
        tree: Tree,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = codec::encode(value).map_err(|e| StoreError::Corrupt {
            what: "record",
            detail: e.to_string(),
        })?;
        self.put_raw(tree, key, bytes);
        Ok(())
    }

    fn remove(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), None));
    }
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Records counted once at open and kept up to date by every commit (sled's own count
    /// walks a whole tree).
    counts: Arc<Counts>,
    /// Group commit: one flush at a time, shared by everyone waiting.
    flushes: Arc<Flushes>,
}

/// Flushes asked for, and the last one known to be on disk.
#[derive(Default)]
struct Flushes {
    /// Bumped by each caller of [`Store::flush`] after its writes were applied.
    asked: std::sync::atomic::AtomicU64,
    /// Under the lock: every ask up to this number is on disk.
    done: tokio::sync::Mutex<u64>,
}

#[derive(Default)]
struct Counts {
    contacts: AtomicUsize,
    outbox: AtomicUsize,
    events: AtomicUsize,
    requests: AtomicUsize,
    /// Records decoded since the store was opened (how much a piece of work read).
    decoded: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // sled's flusher thread lets go of the store's file lock up to its flush period
        // (500 ms) after the last handle is dropped: a store closed and opened again in
        // one process (a restarted node in the simulator or a test) waits that out.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .open()
            {
                Err(sled::Error::Io(e))
                    if tries < LOCK_TRIES && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(LOCK_WAIT);
                }
                other => break other?,
            }
        };
        let trees = TREES
            .iter()
            .map(|(_, name)| db.open_tree(name))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store {
            dir: dir.to_owned(),
            db,
            trees,
            counts: Arc::default(),
            flushes: Arc::default(),
        };
        store.check_schema()?;
        let shredded = store.shred_orphan_texts()?;
        if shredded > 0 {
            tracing::info!(
                "{shredded} text(s) of disappearing messages already gone were shredded"
            );
        }
        store
            .counts
            .contacts
            .store(store.tree(Tree::Contacts).len(), Ordering::Relaxed);
        store
            .counts
            .requests
            .store(store.tree(Tree::Requests).len(), Ordering::Relaxed);
        store
            .counts
            .outbox
            .store(store.tree(Tree::Outbox).len(), Ordering::Relaxed);
        store
            .counts
            .events
            .store(store.tree(Tree::Events).len(), Ordering::Relaxed);
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let meta = self.tree(Tree::Meta);
        let found = match meta.get(schema::META_SCHEMA)? {
            None => SCHEMA_VERSION,
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    what: "schema version",
                    detail: format!("{} bytes", v.len()),
                })?,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        if found < 2 {
            self.migrate_to_2()?;
        }
        if found < 4 {
            self.migrate_to_4()?;
        }
        meta.insert(schema::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Schema 1 → 2: index the message requests and the hosted envelopes' expiry.
    fn migrate_to_2(&self) -> Result<(), StoreError> {
        let requests = self.tree(Tree::Requests);
        for kv in self.tree(Tree::Contacts).iter() {
            let (k, v) = kv?;
            if decode::<Contact>(&v, "contact")?.request {
                requests.insert(k, &[])?;
            }
        }
        let expiry = self.tree(Tree::HostedExpiry);
        for kv in self.tree(Tree::Hosted).iter() {
            let (k, v) = kv?;
            let h: Hosted = decode(&v, "hosted envelope")?;
            expiry.insert(hosting::expiry_key_raw(h.expires_at, &k), &[])?;
        }
        Ok(())
    }

    /// Schema 3 → 4: group records in a format older than this code's (changes without
    /// parents, member records without Olm keys, sessions without announced keys) are
    /// removed, with their names, sessions and waiting envelopes: the group's other members
    /// no longer take changes in that format, and a record that does not decode would stop
    /// every fetch round. Their messages stay in the store. Returns how many groups went.
    fn migrate_to_4(&self) -> Result<usize, StoreError> {
        let groups = self.tree(Tree::Groups);
        let mut gone: Vec<sled::IVec> = Vec::new();
        for kv in groups.iter() {
            let (k, v) = kv?;
            if decode::<GroupRecord>(&v, "group").is_err() {
                gone.push(k);
            }
        }
        for k in &gone {
            groups.remove(k)?;
            for kv in self.tree(Tree::GroupSessions).scan_prefix(k) {
                self.tree(Tree::GroupSessions).remove(kv?.0)?;
            }
        }
        let names = self.tree(Tree::GroupNames);
        for kv in names.iter() {
            let (name, id) = kv?;
            if gone.iter().any(|g| g == &id) {
                names.remove(name)?;
            }
        }
        for kv in self.tree(Tree::GroupSessions).iter() {
            let (k, v) = kv?;
            if decode::<InboundSessions>(&v, "group sessions").is_err() {
                self.tree(Tree::GroupSessions).remove(k)?;
            }
        }
        for kv in self.tree(Tree::GroupOutbox).iter() {
            let (k, v) = kv?;
            let keep = decode::<GroupOutboxEntry>(&v, "group outbox entry")
                .is_ok_and(|e| !gone.iter().any(|g| g.as_ref() == e.group.0));
            if !keep {
                self.tree(Tree::GroupOutbox).remove(k)?;
            }
        }
        if !gone.is_empty() {
            tracing::warn!(
                "{} group(s) in an older format were removed from the store (their members no longer take it); their messages are kept",
                gone.len()
            );
        }
        Ok(gone.len())
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree as usize]
    }

    /// A fresh, strictly increasing number (message sequence, event cursor).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        // sled's ids start at 0; keep 0 free as "before everything".
        Ok(self.db.generate_id()? + 1)
    }

    /// A fresh sequence number for a message or an outbox entry.
    pub fn next_seq(&self) -> Result<Seq, StoreError> {
        self.next_id().map(Seq)
    }

    fn get_raw(&self, tree: Tree, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree(tree).get(key)?)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        self.get_raw(tree, key)?
            .map(|v| self.decode(&v, what))
            .transpose()
    }

    /// Decode a record, counting it.
    fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<T, StoreError> {
        self.counts.decoded.fetch_add(1, Ordering::Relaxed);
        decode(bytes, what)
    }

    /// How many records were decoded since the store was opened: what a piece of work read
    /// (tests use it to show that a cost does not grow with the data).
    pub fn records_read(&self) -> u64 {
        self.counts.decoded.load(Ordering::Relaxed)
    }

    /// Call `f` on every record of a tree whose key starts with `prefix`, in key order, one
    /// at a time; `f` returns false to stop.
    fn walk<T: DeserializeOwned>(
        &self,
        tree: Tree,
        prefix: &[u8],
        what: &'static str,
        mut f: impl FnMut(&[u8], T) -> bool,
    ) -> Result<(), StoreError> {
        for kv in self.tree(tree).scan_prefix(prefix) {
            let (k, v) = kv?;
            if !f(&k, self.decode(&v, what)?) {
                break;
            }
        }
        Ok(())
    }

    /// Every record of a tree whose key starts with `prefix`, in key order.
    fn collect<T: DeserializeOwned>(
        &self,
        tree: Tree,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<(sled::IVec, T)>, StoreError> {
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k, self.decode(&v, what)?))
            })
            .collect()
    }

    /// Apply `batch` atomically and flush it to disk.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply(&batch)?;
        self.flush().await
    }

    /// Apply `batch` atomically without waiting for the disk.
    pub fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Removals are let through: they are how space comes back.
        if batch.ops.iter().any(|(_, _, v)| v.is_some()) {
            self.ensure_space()?;
        }
        self.write_vanishing(batch)?;
        // What the batch changes in the counted trees, read inside the transaction so that
        // a put over an existing record or a removal of a missing one counts nothing.
        let result: Result<[isize; 4], TransactionError<()>> =
            self.trees.as_slice().transaction(|trees| {
                let mut delta = [0isize; 4];
                for (tree, key, value) in &batch.ops {
                    let t = &trees[*tree as usize];
                    let before = match value {
                        Some(v) => t.insert(key.as_slice(), v.as_slice())?,
                        None => t.remove(key.as_slice())?,
                    };
                    let change = match (value.is_some(), before.is_some()) {
                        (true, false) => 1,
                        (false, true) => -1,
                        _ => 0,
                    };
                    match tree {
                        Tree::Contacts => delta[0] += change,
                        Tree::Outbox => delta[1] += change,
                        Tree::Events => delta[2] += change,
                        Tree::Requests => delta[3] += change,
                        _ => {}
                    }
                }
                Ok::<_, ConflictableTransactionError<()>>(delta)
            });
        match result {
            Ok(delta) => {
                let counts = [
                    &self.counts.contacts,
                    &self.counts.outbox,
                    &self.counts.events,
                    &self.counts.requests,
                ];
                for (count, d) in counts.iter().zip(delta) {
                    if d >= 0 {
                        count.fetch_add(d as usize, Ordering::Relaxed);
                    } else {
                        count.fetch_sub(d.unsigned_abs(), Ordering::Relaxed);
                    }
                }
                for path in &batch.shred {
                    if let Err(e) = vanishing::shred(path) {
                        tracing::warn!("cannot shred {}: {e}", path.display());
                    }
                }
                self.shred_vanishing(batch)
            }
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                what: "transaction",
                detail: "aborted".into(),
            }),
        }
    }

    /// Refuse to write when the disk is (nearly) full: a write that sled cannot finish
    /// would be visible in memory but not on disk.
    fn ensure_space(&self) -> Result<(), StoreError> {
        // A file system that cannot say is taken to have room.
        let Ok(stat) = rustix::fs::statvfs(&self.dir) else {
            return Ok(());
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < MIN_FREE_BYTES {
            return Err(StoreError::DiskFull {
                dir: self.dir.display().to_string(),
                free,
            });
        }
        Ok(())
    }

    /// Wait until everything applied so far is on disk.
    ///
    /// One flush at a time per store (group commit): a caller that finds one under way
    /// waits for it, then for the next one unless someone else's already covered its
    /// writes; so a burst of commits costs a few flushes, not one each. The flush runs on a
    /// blocking thread of tokio's, not with sled's `flush_async`: that one blocks a thread
    /// of sled's own small pool until the log is stable, and with enough flushes at once
    /// (many nodes in one process, as in the simulator) every thread of that pool waited for
    /// a log write that needed one of them — a deadlock seen in a test run.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.flushes.asked.fetch_add(1, SeqCst) + 1;
        let started = std::time::Instant::now();
        let mut done = self.flushes.done.lock().await;
        if started.elapsed().as_secs() >= 2 {
            tracing::debug!("waited {:?} for the flush before", started.elapsed());
        }
        if *done >= mine {
            return Ok(());
        }
        // Everyone who asked by now applied their writes before asking: this flush covers
        // them all.
        let covers = self.flushes.asked.load(SeqCst);
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => {
                if started.elapsed().as_secs() >= 2 {
                    tracing::debug!("a flush took {:?}", started.elapsed());
                }
                flushed?;
                *done = covers;
                Ok(())
            }
            Err(e) => Err(StoreError::Sled(sled::Error::ReportableBug(format!(
                "the flush task failed: {e}"
            )))),
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// A big-endian u64 stored as 8 bytes, or `None` if the value has another length.
fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::content::MessageId;

    #[tokio::test]
    async fn batches_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = MessageId([7; 16]);
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.index_message(&id, Some(Seq(5)));
            b.mark_seen(&[9; 32], 1);
            store.commit(b).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.message_seq(&id).unwrap(), Some(Some(Seq(5))));
        assert!(store.is_seen(&[9; 32]).unwrap());
        assert!(store.next_id().unwrap() > 0);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .tree(Tree::Meta)
                .insert(schema::META_SCHEMA, &99u32.to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }

    /// A store of schema 3 holding a group in an older format (here, bytes that do not
    /// decode) opens with the group gone, its name, sessions and outbox entries too, and
    /// the rest kept: reading the groups works again (a fetch round reads them).
    #[test]
    fn an_older_group_format_is_removed_when_the_schema_moves_to_4() {
        let dir = tempfile::tempdir().unwrap();
        let old = [3u8; 16];
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .tree(Tree::Groups)
                .insert(old, &[0xff, 1][..])
                .unwrap();
            store
                .tree(Tree::GroupNames)
                .insert("trip", &old[..])
                .unwrap();
            store
                .tree(Tree::GroupSessions)
                .insert(schema::concat(&old, &[9; 32]), &[0xff][..])
                .unwrap();
            store
                .tree(Tree::GroupOutbox)
                .insert(Seq(4).key(), &[0xff][..])
                .unwrap();
            store.tree(Tree::Names).insert("bob", &[2; 32][..]).unwrap();
            store
                .tree(Tree::Meta)
                .insert(schema::META_SCHEMA, &3u32.to_be_bytes())
                .unwrap();
            assert!(store.groups().is_err(), "as an older store reads it today");
            store.db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.groups().unwrap().is_empty());
        assert_eq!(store.group_named("trip").unwrap(), None);
        assert!(store.tree(Tree::GroupSessions).is_empty());
        assert!(store.group_outbox().unwrap().is_empty());
        assert!(store.tree(Tree::Names).get("bob").unwrap().is_some());
        assert_eq!(
            store
                .tree(Tree::Meta)
                .get(schema::META_SCHEMA)
                .unwrap()
                .unwrap()
                .as_ref(),
            &SCHEMA_VERSION.to_be_bytes()
        );
    }

    #[test]
    fn corrupt_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sotto_protocol::identity::AccountKey([1; 32]);
        store
            .tree(Tree::Contacts)
            .insert(key.0, &[0xff, 0xff][..])
            .unwrap();
        assert!(store.contact(&key).is_err());
    }

    #[test]
    fn counts_follow_puts_over_existing_records_and_removals_of_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entry = |seq| OutboxEntry {
            seq: Seq(seq),
            message: MessageId([seq as u8; 16]),
            to: sotto_protocol::identity::AccountKey([2; 32]),
            envelope: vec![1],
            failures: 0,
            next_attempt_at: 0,
            host_retries: 0,
            hosts: Vec::new(),
            control: false,
        };
        let mut b = Batch::new();
        b.put_outbox(&entry(1)).unwrap();
        b.put_outbox(&entry(2)).unwrap();
        store.apply(&b).unwrap();
        let mut b = Batch::new();
        b.put_outbox(&entry(2)).unwrap();
        b.remove_outbox(Seq(3));
        store.apply(&b).unwrap();
        assert_eq!(store.outbox_len(), 2);
        let mut b = Batch::new();
        b.remove_outbox(Seq(1));
        store.apply(&b).unwrap();
        assert_eq!(store.outbox_len(), 1);
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().outbox_len(), 1);
    }
}
