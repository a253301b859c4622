//! Mailbox hosting: this node keeps sealed envelopes for others at dead-drop addresses,
//! within quotas per depositor, per dead drop and in all, for at most the policy's TTL.
//!
//! Hosted envelopes live in the store (tree `hosted`, keyed by address ‖ envelope id) and
//! are flushed before a deposit is confirmed. What the host can see: the address, the
//! envelope's size (a padding bucket), the depositing peer, and when. What it cannot: who
//! wrote it, for whom, or what it says.

use serde_json::{json, Value};
use sotto_protocol::deaddrop::Address;
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{self, Delete, Deposit, Fetch, Policy, Refusal, Request, Response};
use tokio::sync::Mutex;

use crate::service::now_ms;
use crate::store::{self, Batch, HostStats, Hosted, Store, StoreError, Tree, Usage};

/// The host.
pub struct Host {
    store: Store,
    policy: Policy,
    /// Serialises changes, so that usage counters stay exact.
    lock: Mutex<()>,
}

fn id_key(address: &Address, id: &[u8; 32]) -> Vec<u8> {
    let mut k = address.0.to_vec();
    k.extend_from_slice(id);
    k
}

fn seq_key(address: &Address, seq: &[u8]) -> Vec<u8> {
    let mut k = address.0.to_vec();
    k.extend_from_slice(seq);
    k
}

fn drop_usage_key(address: &Address) -> Vec<u8> {
    let mut k = b"d".to_vec();
    k.extend_from_slice(&address.0);
    k
}

fn depositor_usage_key(depositor: &[u8]) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(depositor);
    k
}

impl Host {
    pub fn new(store: Store, policy: Policy) -> Self {
        Host {
            store,
            policy,
            lock: Mutex::new(()),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Answer a request from the peer `depositor` (PeerId bytes).
    pub async fn handle(&self, depositor: &[u8], bytes: &[u8]) -> Response {
        let request = match Request::from_bytes(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("malformed mailbox request: {e}");
                return Response::Refused(Refusal::Malformed);
            }
        };
        self.handle_request(depositor, request).await
    }

    pub async fn handle_request(&self, depositor: &[u8], request: Request) -> Response {
        let result = match request {
            Request::Deposit(d) => self.deposit(depositor, d).await,
            Request::Fetch(f) => self.fetch(&f),
            Request::Delete(d) => self.delete(&d).await,
        };
        result.unwrap_or_else(|e| {
            tracing::error!("mailbox host: {e}");
            Response::Refused(Refusal::Internal)
        })
    }

    fn usage(&self, key: &[u8]) -> Result<Usage, StoreError> {
        Ok(self
            .store
            .get::<Usage>(Tree::HostUsage, key, "host usage")?
            .unwrap_or_default())
    }

    fn host_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get_raw(Tree::Meta, store::META_HOST_BYTES)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Hosting counters.
    pub fn stats(&self) -> Result<HostStats, StoreError> {
        Ok(self
            .store
            .get::<HostStats>(Tree::Meta, store::META_HOST_STATS, "host stats")?
            .unwrap_or_default())
    }

    fn stage_stats(
        &self,
        batch: &mut Batch,
        f: impl FnOnce(&mut HostStats),
    ) -> Result<(), StoreError> {
        let mut stats = self.stats()?;
        f(&mut stats);
        batch.put(Tree::Meta, store::META_HOST_STATS.to_vec(), &stats)
    }

    /// Add `count` envelopes of `bytes` (negative to remove) to the usage records.
    fn stage_usage(
        &self,
        batch: &mut Batch,
        address: &Address,
        depositor: &[u8],
        count: i64,
        bytes: i64,
    ) -> Result<(), StoreError> {
        let adjust = |u: Usage| Usage {
            count: u.count.saturating_add_signed(count),
            bytes: u.bytes.saturating_add_signed(bytes),
        };
        for key in [drop_usage_key(address), depositor_usage_key(depositor)] {
            let u = adjust(self.usage(&key)?);
            if u.count == 0 {
                batch.remove(Tree::HostUsage, key);
            } else {
                batch.put(Tree::HostUsage, key, &u)?;
            }
        }
        let total = self.host_bytes()?.saturating_add_signed(bytes);
        batch.put_raw(
            Tree::Meta,
            store::META_HOST_BYTES.to_vec(),
            total.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    async fn deposit(&self, depositor: &[u8], d: Deposit) -> Result<Response, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let id = envelope::digest(&d.envelope);
        if self
            .store
            .get_raw(Tree::HostedIds, &id_key(&d.address, &id))?
            .is_some()
        {
            return Ok(Response::AlreadyStored);
        }
        let drop_usage = self.usage(&drop_usage_key(&d.address))?;
        let depositor_usage = self.usage(&depositor_usage_key(depositor))?;
        let usage = mailbox::Usage {
            drop_count: drop_usage.count,
            drop_bytes: drop_usage.bytes,
            depositor_count: depositor_usage.count,
            depositor_bytes: depositor_usage.bytes,
            host_bytes: self.host_bytes()?,
        };
        let expires_at = match self.policy.admit_deposit(&d, &usage, now) {
            Ok(t) => t,
            Err(refusal) => {
                let mut batch = Batch::new();
                self.stage_stats(&mut batch, |s| s.rejections += 1)?;
                self.store.apply(&batch)?;
                tracing::debug!("refused a deposit: {refusal:?}");
                return Ok(Response::Refused(refusal));
            }
        };
        let size = d.envelope.len() as i64;
        let seq = self.store.next_id()?.to_be_bytes();
        let mut batch = Batch::new();
        batch.put_raw(Tree::HostedIds, id_key(&d.address, &id), seq.to_vec());
        batch.put(
            Tree::Hosted,
            seq_key(&d.address, &seq),
            &Hosted {
                expires_at,
                stored_at: now,
                depositor: depositor.to_vec(),
                auth: d.auth,
                envelope: d.envelope,
            },
        )?;
        self.stage_usage(&mut batch, &d.address, depositor, 1, size)?;
        self.stage_stats(&mut batch, |s| s.deposits += 1)?;
        self.store.commit(batch).await?;
        Ok(Response::Stored)
    }

    fn fetch(&self, f: &Fetch) -> Result<Response, StoreError> {
        let now = now_ms();
        if let Err(refusal) = self.policy.admit_fetch(f, now) {
            return Ok(Response::Refused(refusal));
        }
        let after = match &f.after {
            Some(id) => self
                .store
                .get_raw(Tree::HostedIds, &id_key(&f.address, id))?
                .map(|s| s.to_vec()),
            None => None,
        };
        let mut envelopes = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for (k, h) in
            self.store
                .scan_prefix::<Hosted>(Tree::Hosted, &f.address.0, "hosted envelope")?
        {
            if after.as_deref().is_some_and(|a| k.as_ref()[32..] <= *a) {
                continue;
            }
            if h.expires_at <= now {
                continue;
            }
            if bytes + h.envelope.len() > self.policy.page_bytes {
                more = true;
                break;
            }
            bytes += h.envelope.len();
            envelopes.push(h.envelope);
        }
        Ok(Response::Envelopes { envelopes, more })
    }

    async fn delete(&self, d: &Delete) -> Result<Response, StoreError> {
        let _g = self.lock.lock().await;
        if let Err(refusal) = self.policy.admit_delete(d, now_ms()) {
            return Ok(Response::Refused(refusal));
        }
        let mut deleted = 0u32;
        let mut batch = Batch::new();
        for id in &d.ids {
            let Some(seq) = self
                .store
                .get_raw(Tree::HostedIds, &id_key(&d.address, id))?
            else {
                continue;
            };
            let key = seq_key(&d.address, &seq);
            if let Some(h) = self
                .store
                .get::<Hosted>(Tree::Hosted, &key, "hosted envelope")?
            {
                batch.remove(Tree::Hosted, key);
                batch.remove(Tree::HostedIds, id_key(&d.address, id));
                // Usage is staged per envelope so that repeated keys net out correctly.
                self.store.apply(&batch)?;
                batch = Batch::new();
                self.stage_usage(
                    &mut batch,
                    &d.address,
                    &h.depositor,
                    -1,
                    -(h.envelope.len() as i64),
                )?;
                self.store.apply(&batch)?;
                batch = Batch::new();
                deleted += 1;
            }
        }
        self.stage_stats(&mut batch, |s| s.deleted += u64::from(deleted))?;
        self.store.commit(batch).await?;
        Ok(Response::Deleted(deleted))
    }

    /// Drop expired envelopes; returns how many.
    pub async fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let mut expired = 0u64;
        for (k, h) in self.store.scan::<Hosted>(Tree::Hosted, "hosted envelope")? {
            if h.expires_at > now {
                continue;
            }
            let Ok(address) = <[u8; 32]>::try_from(&k.as_ref()[..32]).map(Address) else {
                continue;
            };
            let mut batch = Batch::new();
            batch.remove(Tree::Hosted, k.to_vec());
            batch.remove(
                Tree::HostedIds,
                id_key(&address, &envelope::digest(&h.envelope)),
            );
            self.store.apply(&batch)?;
            let mut batch = Batch::new();
            self.stage_usage(
                &mut batch,
                &address,
                &h.depositor,
                -1,
                -(h.envelope.len() as i64),
            )?;
            self.store.apply(&batch)?;
            expired += 1;
        }
        if expired > 0 {
            let mut batch = Batch::new();
            self.stage_stats(&mut batch, |s| s.expired += expired)?;
            self.store.commit(batch).await?;
        }
        Ok(expired)
    }

    /// Every hosted envelope, grouped by address (for handover).
    pub fn hosted(&self) -> Result<Vec<(Address, Hosted)>, StoreError> {
        Ok(self
            .store
            .scan::<Hosted>(Tree::Hosted, "hosted envelope")?
            .into_iter()
            .filter_map(|(k, h)| {
                <[u8; 32]>::try_from(&k.as_ref()[..32])
                    .ok()
                    .map(|a| (Address(a), h))
            })
            .collect())
    }

    /// Forget an envelope that was handed over to closer hosts.
    pub async fn forget(&self, address: &Address, hosted: &Hosted) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let ids = id_key(address, &envelope::digest(&hosted.envelope));
        let Some(seq) = self.store.get_raw(Tree::HostedIds, &ids)? else {
            return Ok(());
        };
        let mut batch = Batch::new();
        batch.remove(Tree::Hosted, seq_key(address, &seq));
        batch.remove(Tree::HostedIds, ids);
        self.store.apply(&batch)?;
        let mut batch = Batch::new();
        self.stage_usage(
            &mut batch,
            address,
            &hosted.depositor,
            -1,
            -(hosted.envelope.len() as i64),
        )?;
        self.stage_stats(&mut batch, |s| s.handed_over += 1)?;
        self.store.commit(batch).await
    }

    /// `mailbox.stats`
    pub fn stats_json(&self) -> Result<Value, StoreError> {
        let hosted = self.hosted()?;
        let mut drops: Vec<&Address> = hosted.iter().map(|(a, _)| a).collect();
        drops.dedup();
        let mut sizes = std::collections::BTreeMap::<String, u64>::new();
        for (_, h) in &hosted {
            *sizes.entry(h.envelope.len().to_string()).or_default() += 1;
        }
        let stats = self.stats()?;
        Ok(json!({
            "dead_drops": drops.len(),
            "addresses": drops.iter().map(|a| a.0.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>(),
            "sizes": sizes,
            "envelopes": hosted.len(),
            "bytes": self.host_bytes()?,
            "deposits": stats.deposits,
            "rejections": stats.rejections,
            "deleted": stats.deleted,
            "expired": stats.expired,
            "handed_over": stats.handed_over,
        }))
    }
}
