//! Depositing an outbox entry at its dead drop's hosts: at the contact's pairwise dead drop
//! for this epoch once the contact told its inbox secret, else at its intro dead drop with
//! a proof-of-work stamp.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use sotto_protocol::card::Card;
use sotto_protocol::deaddrop::Address;
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{Deposit, DepositAuth, Refusal, Request, Response};
use sotto_protocol::pow;

use super::{Client, Error, Target};
use crate::clock::unix_ms;
use crate::store;

/// How long the hosts found for a dead drop are used for deposits before they are looked
/// up again.
const HOST_CACHE_TTL: Duration = Duration::from_secs(30);
/// Dead drops whose hosts are kept, at most.
const HOST_CACHE_MAX: usize = 1_024;

/// The hosts of a dead drop, and when they were found.
type Found = (Instant, Vec<Target>);

/// The hosts found for dead-drop addresses, kept for a short while, so that a burst of
/// deposits to one dead drop (or the fetch rounds of a few minutes) shares one lookup.
/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct HostCache {
    inner: Arc<Mutex<HashMap<Address, Found>>>,
    ttl: Duration,
}

impl Default for HostCache {
    fn default() -> Self {
        HostCache::with_ttl(HOST_CACHE_TTL)
    }
}

impl HostCache {
    /// A cache whose entries are used for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        HostCache {
            inner: Arc::default(),
            ttl,
        }
    }

    pub(super) fn get(&self, address: &Address) -> Option<Vec<Target>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(address)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, t)| t.clone())
    }

    /// Forget the hosts of `address` (none of them answered): the next use looks again.
    pub(super) fn forget(&self, address: &Address) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(address);
    }

    pub(super) fn put(&self, address: Address, targets: Vec<Target>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= HOST_CACHE_MAX {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= HOST_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(address, (Instant::now(), targets));
    }
}

impl Client {
    /// Build the deposit of `envelope` for `contact`, with a stamp of `difficulty` if it
    /// goes to the intro dead drop.
    pub async fn build_deposit(
        &self,
        contact: &store::Contact,
        envelope: Vec<u8>,
        difficulty: u8,
    ) -> Result<Deposit, Error> {
        let now = unix_ms();
        let expires_at = now.saturating_add(self.service.mailbox_config().policy.ttl_ms);
        let digest = envelope::digest(&envelope);
        if let Some(secret) = &contact.their_inbox {
            let key = secret.secret().drop_key(self.service.epoch_at(now));
            let auth = DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at)));
            return Ok(Deposit {
                address: key.address(),
                envelope,
                expires_at,
                auth,
            });
        }
        let card = Card::from_bytes(&contact.card)?;
        let intro = card.body().intro;
        let address = Address::of_intro_key(&intro);
        let start: u64 = rand::thread_rng().gen();
        let tries = 1u64 << (u32::from(difficulty.min(pow::MAX_DIFFICULTY)) + 8).min(40);
        let nonce = tokio::task::spawn_blocking(move || {
            pow::mint(&address, &digest, difficulty, start, tries)
        })
        .await
        .map_err(|e| Error::StampTask(e.to_string()))?
        .ok_or(Error::NoStamp { difficulty })?;
        Ok(Deposit {
            address,
            envelope,
            expires_at,
            auth: DepositAuth::Stamp { intro, nonce },
        })
    }

    /// Deposit an outbox entry at the hosts that do not have it yet. Returns the hosts that
    /// now hold it (all of them, old and new).
    pub async fn deposit_entry(
        &self,
        entry: &store::OutboxEntry,
        cache: &HostCache,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let Some(contact) = self.service.store().contact(&entry.to)? else {
            return Ok(entry.hosts.clone());
        };
        let me = self.me();
        let mut difficulty = self.host.policy().stamp_difficulty;
        let mut deposit = self
            .build_deposit(&contact, entry.envelope.clone(), difficulty)
            .await?;
        let mut stored = entry.hosts.clone();
        // Even an empty set is kept: a burst of entries to an unreachable dead drop shares
        // one lookup.
        let targets = self.hosts_cached(cache, &deposit.address, |_| true).await;
        for target in targets {
            let id = target.id_bytes(&me);
            if stored.contains(&id) {
                continue;
            }
            let mut response = self.ask(&target, Request::Deposit(deposit.clone())).await;
            if let Ok(Response::Refused(Refusal::StampRequired(d))) = response {
                // The host asks for more work than this node's own setting: do it once.
                if d > difficulty && d <= pow::MAX_DIFFICULTY {
                    difficulty = d;
                    deposit = self
                        .build_deposit(&contact, entry.envelope.clone(), d)
                        .await?;
                    response = self.ask(&target, Request::Deposit(deposit.clone())).await;
                }
            }
            match response {
                Ok(Response::Stored | Response::AlreadyStored) => stored.push(id),
                Ok(other) => tracing::debug!("mailbox host refused a deposit: {other:?}"),
                Err(e) => tracing::debug!("mailbox deposit failed: {e}"),
            }
        }
        Ok(stored)
    }
}
