//! The node's persistent state, in sled, behind the few operations the node needs.
//!
//! Every change that belongs together — a message, its session state, its outbox entry and
//! its event — is written in one transaction across trees ([`Batch`]), and [`Store::commit`]
//! flushes to disk before it returns, so that whatever the daemon reports as stored survives
//! a crash. Records are encoded with the protocol's one codec.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sotto_protocol::codec;
use sotto_protocol::content::MessageId;
use sotto_protocol::identity::AccountKey;

/// The schema this code writes; a store written by a newer one is refused.
pub const SCHEMA_VERSION: u32 = 1;
/// The newest events kept for clients that reconnect.
pub const MAX_EVENTS: usize = 10_000;

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

/// Free bytes below which the store refuses new records, so that the store itself never
/// runs into a full disk half-way through a write (sled writes whole log segments).
pub const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// The trees of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// Schema version, transport key, pickle key, the account snapshot.
    Meta,
    /// Account key → [`Contact`].
    Contacts,
    /// Contact name → account key.
    Names,
    /// Seal key → account key.
    SealIndex,
    /// Account key → pickled sessions.
    Sessions,
    /// Sequence number → [`Message`].
    Messages,
    /// Message id → sequence number.
    MessageIds,
    /// Sequence number → [`OutboxEntry`].
    Outbox,
    /// Envelope digest → time first received.
    Seen,
    /// Cursor → event (JSON).
    Events,
    /// Dead-drop address ‖ sequence number → [`Hosted`]: envelopes this node hosts for
    /// others, in the order they were deposited.
    Hosted,
    /// Dead-drop address ‖ envelope id → sequence number.
    HostedIds,
    /// Depositor (PeerId bytes) → [`Usage`] of this node's hosting.
    HostUsage,
    /// Banned peer (PeerId bytes) → [`crate::limits::Ban`].
    Bans,
    /// Blocked contact (account key) → when it was blocked (ms, big-endian).
    Blocked,
}

const TREES: [(Tree, &str); 15] = [
    (Tree::Meta, "meta"),
    (Tree::Contacts, "contacts"),
    (Tree::Names, "names"),
    (Tree::SealIndex, "seal_index"),
    (Tree::Sessions, "sessions"),
    (Tree::Messages, "messages"),
    (Tree::MessageIds, "message_ids"),
    (Tree::Outbox, "outbox"),
    (Tree::Seen, "seen"),
    (Tree::Events, "events"),
    (Tree::Hosted, "hosted"),
    (Tree::HostedIds, "hosted_ids"),
    (Tree::HostUsage, "host_usage"),
    (Tree::Bans, "bans"),
    (Tree::Blocked, "blocked"),
];

pub const META_SCHEMA: &[u8] = b"schema";
pub const META_TRANSPORT_KEY: &[u8] = b"transport_key";
pub const META_PICKLE_KEY: &[u8] = b"pickle_key";
pub const META_ACCOUNT: &[u8] = b"account";
/// Total bytes of hosted envelopes, as a big-endian u64.
pub const META_HOST_BYTES: &[u8] = b"host_bytes";
/// Counters of hosting activity ([`HostStats`]).
pub const META_HOST_STATS: &[u8] = b"host_stats";
/// The epoch of the last complete fetch of this node's dead drops.
pub const META_LAST_FETCH_EPOCH: &[u8] = b"last_fetch_epoch";

/// The bans in `store` that have not run out at `now_ms`.
pub fn active_bans(store: &Store, now_ms: u64) -> Result<Vec<crate::limits::Ban>, StoreError> {
    let mut bans = Vec::new();
    store.for_each::<crate::limits::Ban>(Tree::Bans, "ban", |_, ban| {
        if ban.until_ms > now_ms {
            bans.push(ban);
        }
    })?;
    Ok(bans)
}

/// Forget the bans that ran out by `now_ms` (while the node was down, say).
pub fn prune_bans(store: &Store, now_ms: u64) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    store.for_each::<crate::limits::Ban>(Tree::Bans, "ban", |key, ban| {
        if ban.until_ms <= now_ms {
            batch.remove(Tree::Bans, key.to_vec());
        }
    })?;
    store.apply(&batch)
}

/// A contact as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    /// The newest card seen, in its binary form.
    pub card: Vec<u8>,
    pub added_at: u64,
    /// Wrote first, not (yet) added by the user.
    pub request: bool,
    /// The secret of this node's dead drops for this contact (told to the contact in a
    /// presence message).
    pub inbox: [u8; 32],
    /// The secret of the contact's dead drops for this node, once the contact told it.
    pub their_inbox: Option<[u8; 32]>,
    /// The contact's node as its last presence gave it: PeerId bytes and addresses.
    pub route: Option<(Vec<u8>, Vec<String>)>,
    /// This node's presence has been queued for the contact.
    pub presence_sent: bool,
}

impl Contact {
    /// A new contact with the inbox secret `inbox` (fresh random bytes).
    pub fn new(name: String, card: Vec<u8>, request: bool, inbox: [u8; 32]) -> Self {
        Contact {
            name,
            card,
            added_at: crate::service::now_ms(),
            request,
            inbox,
            their_inbox: None,
            route: None,
            presence_sent: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Queued,
    /// Stored by at least one mailbox host.
    OnHosts,
    Delivered,
    Received,
}

/// A message as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub contact: AccountKey,
    pub direction: Direction,
    pub text: String,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub state: State,
}

/// A message waiting for delivery: the sealed envelope, sent as is on every attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub message: MessageId,
    pub to: AccountKey,
    pub envelope: Vec<u8>,
    pub failures: u32,
    pub next_attempt_at: u64,
    /// Attempts to reach the remaining hosts once the envelope is on at least one.
    pub host_retries: u32,
    /// Mailbox hosts (PeerId bytes) that confirmed storing the envelope.
    pub hosts: Vec<Vec<u8>>,
    /// A control message (presence, receipt), not shown to the user.
    pub control: bool,
}

/// An envelope this node hosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hosted {
    /// When this host drops it: the deposit's expiry, capped by the host's TTL.
    pub expires_at: u64,
    /// The expiry the depositor asked for and signed; sent on at handover.
    pub deposit_expires_at: u64,
    pub stored_at: u64,
    /// Who deposited it (PeerId bytes), for quotas.
    pub depositor: Vec<u8>,
    /// The deposit's authorisation, kept so that the envelope can be handed over.
    pub auth: sotto_protocol::mailbox::DepositAuth,
    pub envelope: Vec<u8>,
}

/// How much one depositor has stored at this host.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub count: u64,
    pub bytes: u64,
}

/// Counters of hosting since the store was created.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct HostStats {
    pub deposits: u64,
    pub rejections: u64,
    pub deleted: u64,
    pub expired: u64,
    pub handed_over: u64,
}

/// Writes that must happen together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put_raw(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), Some(value.into())));
    }

    pub fn put<T: Serialize>(
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

    pub fn remove(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The store.
#[derive(Clone)]
pub struct Store {
    dir: std::path::PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

fn index(tree: Tree) -> usize {
    TREES.iter().position(|(t, _)| *t == tree).unwrap_or(0)
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let trees = TREES
            .iter()
            .map(|(_, name)| db.open_tree(name))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store {
            dir: dir.to_owned(),
            db,
            trees,
        };
        match store.tree(Tree::Meta).get(META_SCHEMA)? {
            None => {
                store
                    .tree(Tree::Meta)
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                store.db.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "schema version",
                        detail: format!("{} bytes", v.len()),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[index(tree)]
    }

    /// A fresh, strictly increasing number (message sequence, event cursor).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        // sled's ids start at 0; keep 0 free as "before everything".
        Ok(self.db.generate_id()? + 1)
    }

    pub fn get_raw(&self, tree: Tree, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree(tree).get(key)?)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        self.get_raw(tree, key)?
            .map(|v| decode(&v, what))
            .transpose()
    }

    /// Every record of a tree, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        tree: Tree,
        what: &'static str,
    ) -> Result<Vec<(sled::IVec, T)>, StoreError> {
        self.tree(tree)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k, decode(&v, what)?))
            })
            .collect()
    }

    /// Call `f` on every record of a tree, in key order, one at a time.
    pub fn for_each<T: DeserializeOwned>(
        &self,
        tree: Tree,
        what: &'static str,
        mut f: impl FnMut(&[u8], T),
    ) -> Result<(), StoreError> {
        for kv in self.tree(tree).iter() {
            let (k, v) = kv?;
            f(&k, decode(&v, what)?);
        }
        Ok(())
    }

    /// The keys of a tree that start with `prefix`, in order.
    pub fn keys_with_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<sled::IVec>, StoreError> {
        self.tree(tree)
            .scan_prefix(prefix)
            .keys()
            .map(|k| Ok(k?))
            .collect()
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(
        &self,
        tree: Tree,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<(sled::IVec, T)>, StoreError> {
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k, decode(&v, what)?))
            })
            .collect()
    }

    /// The records of a tree after `after` (exclusive), in key order, at most `limit`.
    pub fn range_after(
        &self,
        tree: Tree,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(tree).range(after.to_vec()..) {
            let (k, v) = kv?;
            if k.as_ref() == after {
                continue;
            }
            out.push((k, v));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn last_key(&self, tree: Tree) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree(tree).last()?.map(|(k, _)| k))
    }

    /// The number of records in `tree`. This walks the whole tree: keep it off hot paths.
    pub fn len(&self, tree: Tree) -> usize {
        self.tree(tree).len()
    }

    /// Apply `batch` atomically and flush it to disk.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply(&batch)?;
        self.db.flush_async().await?;
        Ok(())
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
        let result: Result<(), TransactionError<()>> = self.trees.as_slice().transaction(|trees| {
            for (tree, key, value) in &batch.ops {
                let t = &trees[index(*tree)];
                match value {
                    Some(v) => {
                        t.insert(key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        t.remove(key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
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

    /// Forget the digests of envelopes received before `before` (ms); returns how many.
    /// (A replay of one so old fails to decrypt, and its message id is still known.)
    pub fn prune_seen(&self, before: u64) -> Result<usize, StoreError> {
        let tree = self.tree(Tree::Seen);
        let mut old = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let at = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if at < before {
                old.push(k);
            }
        }
        for k in &old {
            tree.remove(k)?;
        }
        Ok(old.len())
    }

    /// Drop the `n` oldest events; returns how many there were to drop.
    pub fn drop_oldest_events(&self, n: usize) -> Result<usize, StoreError> {
        let tree = self.tree(Tree::Events);
        let mut dropped = 0;
        while dropped < n && tree.pop_min()?.is_some() {
            dropped += 1;
        }
        Ok(dropped)
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

use sled::Transactional as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put_raw(Tree::Names, b"bob".to_vec(), vec![1]);
            b.put_raw(Tree::Seen, vec![9], vec![2]);
            store.commit(b).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .get_raw(Tree::Names, b"bob")
                .unwrap()
                .unwrap()
                .as_ref(),
            &[1]
        );
        assert_eq!(store.len(Tree::Seen), 1);
        assert!(store.next_id().unwrap() > 0);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .tree(Tree::Meta)
                .insert(META_SCHEMA, &99u32.to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn corrupt_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .tree(Tree::Contacts)
            .insert(b"k", &[0xff, 0xff][..])
            .unwrap();
        assert!(store
            .get::<Contact>(Tree::Contacts, b"k", "contact")
            .is_err());
    }
}
