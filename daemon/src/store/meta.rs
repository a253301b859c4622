//! What the node keeps about itself: its transport key, the key its pickles are encrypted
//! with, the account snapshot, when it last fetched its dead drops completely, and the bans
//! it made, and its guard relays.

use sotto_protocol::chat::Snapshot;

use super::schema::{
    Tree, META_ACCOUNT, META_FALLBACK_ROTATED_AT, META_GUARDS, META_LAST_FETCH_EPOCH,
    META_PICKLE_KEY, META_TRANSPORT_KEY,
};
use super::{be_u64, Ban, Batch, GuardRecord, Store, StoreError};

impl Store {
    /// The libp2p key, in its protobuf encoding.
    pub fn transport_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_raw(Tree::Meta, META_TRANSPORT_KEY)?
            .map(|v| v.to_vec()))
    }

    /// The key the Olm pickles are encrypted with.
    pub fn pickle_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.get_raw(Tree::Meta, META_PICKLE_KEY)?
            .map(|k| {
                <[u8; 32]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt {
                    what: "pickle key",
                    detail: format!("{} bytes", k.len()),
                })
            })
            .transpose()
    }

    pub fn account(&self) -> Result<Option<Snapshot>, StoreError> {
        self.get(Tree::Meta, META_ACCOUNT, "account")
    }

    /// The epoch of the last fetch that reached every dead drop.
    pub fn last_fetch_epoch(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get_raw(Tree::Meta, META_LAST_FETCH_EPOCH)?
            .and_then(|v| be_u64(&v)))
    }

    /// When the fallback key was last replaced.
    pub fn fallback_rotated_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get_raw(Tree::Meta, META_FALLBACK_ROTATED_AT)?
            .and_then(|v| be_u64(&v)))
    }

    /// The node's guard relays, in the order it prefers them.
    pub fn guards(&self) -> Result<Vec<GuardRecord>, StoreError> {
        Ok(self
            .get::<Vec<GuardRecord>>(Tree::Meta, META_GUARDS, "guards")?
            .unwrap_or_default())
    }

    pub fn is_banned(&self, peer: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get_raw(Tree::Bans, peer)?.is_some())
    }

    /// The bans that have not run out at `now_ms`.
    pub fn active_bans(&self, now_ms: u64) -> Result<Vec<Ban>, StoreError> {
        let mut bans = Vec::new();
        self.walk::<Ban>(Tree::Bans, &[], "ban", |_, ban| {
            if ban.until_ms > now_ms {
                bans.push(ban);
            }
            true
        })?;
        Ok(bans)
    }

    /// Forget the bans that ran out by `now_ms` (while the node was down, say).
    pub fn prune_bans(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        self.walk::<Ban>(Tree::Bans, &[], "ban", |key, ban| {
            if ban.until_ms <= now_ms {
                batch.remove(Tree::Bans, key);
            }
            true
        })?;
        self.apply(&batch)
    }
}

impl Batch {
    pub fn put_transport_key(&mut self, protobuf: Vec<u8>) {
        self.put_raw(Tree::Meta, META_TRANSPORT_KEY, protobuf);
    }

    pub fn put_pickle_key(&mut self, key: &[u8; 32]) {
        self.put_raw(Tree::Meta, META_PICKLE_KEY, key.as_slice());
    }

    pub fn put_account(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.put(Tree::Meta, META_ACCOUNT, snapshot)
    }

    pub fn put_fallback_rotated_at(&mut self, at_ms: u64) {
        self.put_raw(Tree::Meta, META_FALLBACK_ROTATED_AT, at_ms.to_be_bytes());
    }

    pub fn put_last_fetch_epoch(&mut self, epoch: u64) {
        self.put_raw(Tree::Meta, META_LAST_FETCH_EPOCH, epoch.to_be_bytes());
    }

    pub fn put_guards(&mut self, guards: &[GuardRecord]) -> Result<(), StoreError> {
        self.put(Tree::Meta, META_GUARDS, &guards.to_vec())
    }

    pub fn put_ban(&mut self, ban: &Ban) -> Result<(), StoreError> {
        self.put(Tree::Bans, ban.peer.clone(), ban)
    }

    pub fn remove_ban(&mut self, peer: &[u8]) {
        self.remove(Tree::Bans, peer);
    }
}
