//! What the user decides about others: peers the network banned (listed, lifted) and
//! contacts the user blocked, whose messages are then dropped without a reply.

use super::*;
use crate::limits::Ban;
use crate::network::BanEvent;

/// A ban as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct BanView {
    pub peer: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
}

impl Service {
    /// Record a ban the network made, or forget one that ran out.
    pub async fn record_ban(&self, event: BanEvent) -> Result<(), Error> {
        let mut batch = Batch::new();
        match event {
            BanEvent::Banned(ban, announce) => {
                let view = Self::view_ban(&ban);
                batch.put(Tree::Bans, ban.peer.clone(), &ban)?;
                if !announce {
                    self.inner.store.commit(batch).await?;
                    return Ok(());
                }
                let order = self.inner.events.order().await;
                let staged =
                    self.inner
                        .events
                        .stage(&mut batch, "peer.banned", "ban", json!(view))?;
                self.inner.store.commit(batch).await?;
                drop(order);
                self.inner.events.publish(vec![staged]);
            }
            BanEvent::Lifted(peer) => {
                batch.remove(Tree::Bans, peer.to_bytes());
                self.inner.store.commit(batch).await?;
            }
        }
        Ok(())
    }

    fn view_ban(ban: &Ban) -> BanView {
        BanView {
            peer: PeerId::from_bytes(&ban.peer)
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "(unreadable peer id)".into()),
            since_ms: ban.since_ms,
            until_ms: ban.until_ms,
            reason: ban.reason.clone(),
        }
    }

    /// `peers.bans`: the bans in force, soonest to end first.
    pub fn bans(&self) -> Result<Vec<BanView>, Error> {
        let mut bans = store::active_bans(&self.inner.store, now_ms())?;
        bans.sort_by_key(|b| b.until_ms);
        Ok(bans.iter().map(Self::view_ban).collect())
    }

    /// `peers.unban`: lift the ban on a peer (its PeerId).
    pub async fn unban(&self, peer: &str) -> Result<Value, Error> {
        let id: PeerId = peer
            .parse()
            .map_err(|_| Error::InvalidParams(format!("{peer:?} is not a PeerId")))?;
        let stored = self
            .inner
            .store
            .get_raw(Tree::Bans, &id.to_bytes())?
            .is_some();
        let live = self
            .inner
            .net
            .unban(id)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !stored && !live {
            return Err(Error::InvalidParams(format!("peer {peer} is not banned")));
        }
        let mut batch = Batch::new();
        batch.remove(Tree::Bans, id.to_bytes());
        self.inner.store.commit(batch).await?;
        Ok(json!({ "peer": peer, "unbanned": true }))
    }

    /// Is the contact with account key `key` blocked?
    pub fn is_blocked(&self, key: &AccountKey) -> Result<bool, Error> {
        Ok(self.inner.store.get_raw(Tree::Blocked, &key.0)?.is_some())
    }

    /// `contact.block`: drop the contact's messages from now on, without a reply (no
    /// receipt, no presence). The contact and the history stay.
    pub async fn block(&self, who: &str) -> Result<Value, Error> {
        let (key, contact) = self.resolve(who)?;
        let mut batch = Batch::new();
        batch.put_raw(
            Tree::Blocked,
            key.0.to_vec(),
            now_ms().to_be_bytes().to_vec(),
        );
        self.inner.store.commit(batch).await?;
        Ok(json!({ "contact": contact.name, "blocked": true }))
    }

    /// `contact.unblock`
    pub async fn unblock(&self, who: &str) -> Result<Value, Error> {
        let (key, contact) = self.resolve(who)?;
        if !self.is_blocked(&key)? {
            return Err(Error::InvalidParams(format!(
                "{:?} is not blocked",
                contact.name
            )));
        }
        let mut batch = Batch::new();
        batch.remove(Tree::Blocked, key.0.to_vec());
        self.inner.store.commit(batch).await?;
        Ok(json!({ "contact": contact.name, "blocked": false }))
    }
}
