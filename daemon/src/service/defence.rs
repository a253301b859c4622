//! What the user decides about others: peers the network banned (listed, lifted) and
//! contacts the user blocked, whose messages are then dropped without a reply.

use libp2p::PeerId;

use super::{BanView, BlockState, ContactError, PeerError, Service, Unbanned};
use crate::clock::unix_ms;
use crate::net::BanEvent;
use crate::store::{Ban, Batch, StoreError};

impl Service {
    /// Record a ban the network made, or forget one that ran out.
    pub async fn record_ban(&self, event: BanEvent) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        match event {
            BanEvent::Banned(ban, announce) => {
                batch.put_ban(&ban)?;
                if !announce {
                    return self.inner.store.commit(batch).await;
                }
                let order = self.inner.events.order().await;
                let staged = self.inner.events.stage(
                    &mut batch,
                    "peer.banned",
                    "ban",
                    &Self::view_ban(&ban),
                )?;
                self.inner.store.commit(batch).await?;
                self.inner.events.publish(vec![staged]);
                drop(order);
            }
            BanEvent::Lifted(peer) => {
                batch.remove_ban(&peer.to_bytes());
                self.inner.store.commit(batch).await?;
            }
        }
        Ok(())
    }

    fn view_ban(ban: &Ban) -> BanView {
        BanView {
            peer: ban
                .peer_id()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "(unreadable peer id)".into()),
            since_ms: ban.since_ms,
            until_ms: ban.until_ms,
            reason: ban.reason.clone(),
        }
    }

    /// `peers.bans`: the bans in force, soonest to end first.
    pub fn bans(&self) -> Result<Vec<BanView>, PeerError> {
        let mut bans = self.inner.store.active_bans(unix_ms())?;
        bans.sort_by_key(|b| b.until_ms);
        Ok(bans.iter().map(Self::view_ban).collect())
    }

    /// `peers.unban`: lift the ban on a peer (its PeerId).
    pub async fn unban(&self, peer: &str) -> Result<Unbanned, PeerError> {
        let id: PeerId = peer
            .parse()
            .map_err(|_| PeerError::NotAPeerId(peer.to_owned()))?;
        let stored = self.inner.store.is_banned(&id.to_bytes())?;
        let live = self.inner.net.unban(id).await?;
        if !stored && !live {
            return Err(PeerError::NotBanned(peer.to_owned()));
        }
        let mut batch = Batch::new();
        batch.remove_ban(&id.to_bytes());
        self.inner.store.commit(batch).await?;
        Ok(Unbanned {
            peer: peer.to_owned(),
            unbanned: true,
        })
    }

    /// `contact.block`: drop the contact's messages from now on, without a reply (no
    /// receipt, no presence). The contact and the history stay.
    pub async fn block(&self, who: &str) -> Result<BlockState, ContactError> {
        let (key, contact) = self.resolve(who)?;
        let mut batch = Batch::new();
        batch.block(&key, unix_ms());
        self.inner.store.commit(batch).await?;
        self.share_contact_nodes().await?;
        Ok(BlockState {
            contact: contact.name,
            blocked: true,
        })
    }

    /// `contact.unblock`
    pub async fn unblock(&self, who: &str) -> Result<BlockState, ContactError> {
        let (key, contact) = self.resolve(who)?;
        if !self.inner.store.is_blocked(&key)? {
            return Err(ContactError::NotBlocked(contact.name));
        }
        let mut batch = Batch::new();
        batch.unblock(&key);
        self.inner.store.commit(batch).await?;
        self.share_contact_nodes().await?;
        Ok(BlockState {
            contact: contact.name,
            blocked: false,
        })
    }
}
