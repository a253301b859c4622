//! The account: creating it, showing it, its card, and the node's status.

use libp2p::Multiaddr;
use rand::rngs::OsRng;
use sotto_protocol::card::{Card, Hints};
use sotto_protocol::chat::LocalAccount;

use super::{AccountError, AccountView, NodeStatus, Service};
use crate::clock::unix_ms;
use crate::store::{Batch, StoreError};

impl Service {
    /// The card's reachability hints: empty unless the node publishes its address.
    async fn hints(&self) -> Hints {
        let m = &self.inner.mailbox;
        if m.publish_address && !m.mailbox_only {
            self.route_hints().await
        } else {
            Hints::default()
        }
    }

    /// This node's PeerId and addresses.
    pub(super) async fn route_hints(&self) -> Hints {
        let addrs: Vec<Multiaddr> = if self.inner.announce.is_empty() {
            match self.inner.net.status().await {
                Ok(s) => s.listen_addrs,
                Err(_) => Vec::new(),
            }
        } else {
            self.inner.announce.clone()
        };
        Hints {
            peer_id: Some(self.inner.net.peer_id().to_bytes()),
            addrs: addrs
                .iter()
                .take(sotto_protocol::card::MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
        }
    }

    /// This account's card, signed now.
    pub(super) async fn own_card(
        &self,
        account: &LocalAccount,
    ) -> Result<Card, sotto_protocol::card::CardError> {
        account.card(self.hints().await, unix_ms())
    }

    /// Stage the account's current state (its Olm account changes with every new session).
    pub(super) fn stage_account(
        &self,
        batch: &mut Batch,
        account: &LocalAccount,
    ) -> Result<(), StoreError> {
        batch.put_account(&account.snapshot(&self.inner.pickle_key))
    }

    /// Put `account` back as it was last stored (dropping what a message that is not kept
    /// did to it).
    pub(super) fn reload_account(&self, account: &mut LocalAccount) -> Result<(), StoreError> {
        let Some(snapshot) = self.inner.store.account()? else {
            return Ok(());
        };
        *account = LocalAccount::restore(&snapshot, &self.inner.pickle_key).map_err(|e| {
            StoreError::Corrupt {
                what: "account",
                detail: e.to_string(),
            }
        })?;
        Ok(())
    }

    /// `account.create`
    pub async fn create_account(&self, name: &str) -> Result<AccountView, AccountError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AccountError::BadName);
        }
        let mut guard = self.inner.account.lock().await;
        if guard.is_some() {
            return Err(AccountError::AccountExists);
        }
        let account = match &self.inner.seeded {
            Some(rng) => {
                LocalAccount::generate(name, &mut *rng.lock().unwrap_or_else(|p| p.into_inner()))
            }
            None => LocalAccount::generate(name, &mut OsRng),
        };
        let mut batch = Batch::new();
        self.stage_account(&mut batch, &account)?;
        batch.put_fallback_rotated_at(unix_ms());
        self.inner.store.commit(batch).await?;
        tracing::info!("account created");
        let view = self.view_account(&account).await?;
        let _ = self.inner.own_account.set(account.identity.public());
        *guard = Some(account);
        Ok(view)
    }

    async fn view_account(&self, account: &LocalAccount) -> Result<AccountView, AccountError> {
        let key = account.public();
        Ok(AccountView {
            name: account.name.clone(),
            address: key.address(),
            fingerprint: key.fingerprint(),
            card: self.own_card(account).await?.to_uri(),
        })
    }

    /// Replace the fallback key printed in the card if the last replacement was at least
    /// the rotation period before `now_ms` (the replaced key keeps working until the next
    /// replacement). Returns whether it did.
    pub async fn rotate_keys_if_due(&self, now_ms: u64) -> Result<bool, AccountError> {
        let mut guard = self.inner.account.lock().await;
        let Some(account) = guard.as_mut() else {
            return Ok(false);
        };
        let store = &self.inner.store;
        let Some(last) = store.fallback_rotated_at()? else {
            // An account from before rotation was kept: count from now.
            let mut batch = Batch::new();
            batch.put_fallback_rotated_at(now_ms);
            store.commit(batch).await?;
            return Ok(false);
        };
        if now_ms.saturating_sub(last) < self.inner.keys.fallback_rotation_ms {
            return Ok(false);
        }
        account.device.rotate_fallback_key();
        let mut batch = Batch::new();
        self.stage_account(&mut batch, account)?;
        batch.put_fallback_rotated_at(now_ms);
        if let Err(e) = store.commit(batch).await {
            // Not stored: the card must keep the key that is stored.
            self.reload_account(account)?;
            return Err(e.into());
        }
        tracing::info!("replaced the fallback key printed in the card");
        Ok(true)
    }

    /// Replace the fallback key on schedule until `shutdown` turns true: look every
    /// hour, or every quarter of the rotation period if that is shorter.
    pub async fn run_key_rotation(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let every = std::time::Duration::from_millis(
            (self.inner.keys.fallback_rotation_ms / 4).clamp(1, 3_600_000),
        );
        loop {
            match self.rotate_keys_if_due(unix_ms()).await {
                Ok(true) => {
                    // Members who start a session with this node later need the new key.
                    if let Err(e) = self.announce_member_keys().await {
                        tracing::warn!("cannot announce the new fallback key to groups: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("fallback key rotation: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// `account.get`
    pub async fn account(&self) -> Result<AccountView, AccountError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(AccountError::NoAccount)?;
        self.view_account(account).await
    }

    /// `node.status`
    pub async fn status(&self) -> Result<NodeStatus, AccountError> {
        let status = self.inner.net.status().await?;
        let account = self
            .inner
            .account
            .lock()
            .await
            .as_ref()
            .map(|a| a.public().address());
        Ok(NodeStatus {
            peer_id: status.peer_id.to_string(),
            listen_addrs: status.listen_addrs.iter().map(|a| a.to_string()).collect(),
            connected_peers: status
                .connected_peers
                .iter()
                .map(|p| p.to_string())
                .collect(),
            outbox: self.inner.store.outbox_len(),
            group_outbox: self.inner.store.group_outbox_len(),
            traffic: self.inner.net.traffic().view(),
            account,
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}
