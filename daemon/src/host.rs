//! Mailbox hosting: this node keeps sealed envelopes for others at dead-drop addresses,
//! within quotas per depositor, per dead drop and in all, for at most the policy's TTL.
//!
//! Hosted envelopes live in the store (tree `hosted`, keyed by address ‖ envelope id) and
//! are flushed before a deposit is confirmed. What the host can see: the address, the
//! envelope's size (a padding bucket), the depositing peer, and when. What it cannot: who
//! wrote it, for whom, or what it says.

use std::sync::Arc;

use serde_json::{json, Value};
use sotto_protocol::deaddrop::Address;
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{self, Delete, Deposit, Fetch, Policy, Refusal, Request, Response};
use tokio::sync::Mutex;

use crate::link::{HostAction, HostEvent, Observer};
use crate::service::now_ms;
use crate::store::{self, Batch, HostStats, Hosted, Store, StoreError, Tree, Usage};

/// Changes to usage records, summed per record before they are written.
#[derive(Default)]
struct UsageDelta {
    per_key: std::collections::HashMap<Vec<u8>, (i64, i64)>,
    bytes: i64,
}

impl UsageDelta {
    fn add(&mut self, address: &Address, depositor: &[u8], count: i64, bytes: i64) {
        for key in [drop_usage_key(address), depositor_usage_key(depositor)] {
            let e = self.per_key.entry(key).or_default();
            e.0 += count;
            e.1 += bytes;
        }
        self.bytes += bytes;
    }
}

/// The host.
pub struct Host {
    store: Store,
    policy: Policy,
    /// This node's PeerId bytes: fetch and delete proofs must name it.
    me: Vec<u8>,
    /// Serialises changes, so that usage counters stay exact.
    lock: Mutex<()>,
    /// Sees every answered request (only the simulator sets one).
    observer: Option<Arc<dyn Observer>>,
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
    pub fn new(store: Store, policy: Policy, me: Vec<u8>) -> Self {
        Host {
            store,
            policy,
            me,
            lock: Mutex::new(()),
            observer: None,
        }
    }

    /// Report every answered request to `observer` (see [`crate::link`]).
    pub fn with_observer(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        self.observer = observer;
        self
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
        let seen = self.observer.as_ref().map(|_| match &request {
            Request::Deposit(d) => (d.address, d.envelope.len(), 0),
            Request::Fetch(f) => (f.address, 0, 1),
            Request::Delete(d) => (d.address, 0, 2),
        });
        let result = match request {
            Request::Deposit(d) => self.deposit(depositor, d).await,
            Request::Fetch(f) => self.fetch(&f),
            Request::Delete(d) => self.delete(&d).await,
        };
        let response = result.unwrap_or_else(|e| {
            tracing::error!("mailbox host: {e}");
            Response::Refused(Refusal::Internal)
        });
        if let (Some(observer), Some((address, size, kind))) = (&self.observer, seen) {
            let action = match (kind, &response) {
                (0, r) => HostAction::Deposit {
                    address: address.0,
                    size,
                    stored: matches!(r, Response::Stored | Response::AlreadyStored),
                },
                (1, r) => HostAction::Fetch {
                    address: address.0,
                    envelopes: match r {
                        Response::Envelopes { envelopes, .. } => envelopes.len(),
                        _ => 0,
                    },
                },
                (_, r) => HostAction::Delete {
                    address: address.0,
                    count: match r {
                        Response::Deleted(n) => *n as usize,
                        _ => 0,
                    },
                },
            };
            observer.host_event(HostEvent {
                at_ms: now_ms(),
                host: self.me.clone(),
                peer: depositor.to_vec(),
                action,
            });
        }
        response
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

    /// Write `delta` into `batch` on top of the stored usage records.
    fn stage_delta(&self, batch: &mut Batch, delta: UsageDelta) -> Result<(), StoreError> {
        for (key, (count, bytes)) in delta.per_key {
            let u = self.usage(&key)?;
            let u = Usage {
                count: u.count.saturating_add_signed(count),
                bytes: u.bytes.saturating_add_signed(bytes),
            };
            if u.count == 0 {
                batch.remove(Tree::HostUsage, key);
            } else {
                batch.put(Tree::HostUsage, key, &u)?;
            }
        }
        let total = self.host_bytes()?.saturating_add_signed(delta.bytes);
        batch.put_raw(
            Tree::Meta,
            store::META_HOST_BYTES.to_vec(),
            total.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    /// Stage the removal of the envelope stored under `seq` at `address`.
    fn stage_removal(
        &self,
        batch: &mut Batch,
        delta: &mut UsageDelta,
        address: &Address,
        seq: &[u8],
        h: &Hosted,
    ) {
        batch.remove(Tree::Hosted, seq_key(address, seq));
        batch.remove(
            Tree::HostedIds,
            id_key(address, &envelope::digest(&h.envelope)),
        );
        delta.add(address, &h.depositor, -1, -(h.envelope.len() as i64));
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
                deposit_expires_at: d.expires_at,
                stored_at: now,
                depositor: depositor.to_vec(),
                auth: d.auth,
                envelope: d.envelope,
            },
        )?;
        let mut delta = UsageDelta::default();
        delta.add(&d.address, depositor, 1, size);
        self.stage_delta(&mut batch, delta)?;
        self.stage_stats(&mut batch, |s| s.deposits += 1)?;
        self.store.commit(batch).await?;
        Ok(Response::Stored)
    }

    fn fetch(&self, f: &Fetch) -> Result<Response, StoreError> {
        let now = now_ms();
        if let Err(refusal) = self.policy.admit_fetch(f, &self.me, now) {
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
            // Budget by encoded size: each envelope also costs its length prefix.
            let cost = h.envelope.len() + 9;
            if !envelopes.is_empty() && bytes + cost > self.policy.page_bytes {
                more = true;
                break;
            }
            bytes += cost;
            envelopes.push(h.envelope);
        }
        Ok(Response::Envelopes { envelopes, more })
    }

    async fn delete(&self, d: &Delete) -> Result<Response, StoreError> {
        let _g = self.lock.lock().await;
        if let Err(refusal) = self.policy.admit_delete(d, &self.me, now_ms()) {
            return Ok(Response::Refused(refusal));
        }
        let mut deleted = 0u32;
        let mut batch = Batch::new();
        let mut delta = UsageDelta::default();
        let mut seen = std::collections::HashSet::new();
        for id in &d.ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(seq) = self
                .store
                .get_raw(Tree::HostedIds, &id_key(&d.address, id))?
            else {
                continue;
            };
            if let Some(h) = self.store.get::<Hosted>(
                Tree::Hosted,
                &seq_key(&d.address, &seq),
                "hosted envelope",
            )? {
                self.stage_removal(&mut batch, &mut delta, &d.address, &seq, &h);
                deleted += 1;
            }
        }
        self.stage_delta(&mut batch, delta)?;
        self.stage_stats(&mut batch, |s| s.deleted += u64::from(deleted))?;
        self.store.commit(batch).await?;
        Ok(Response::Deleted(deleted))
    }

    /// Drop expired envelopes; returns how many.
    pub async fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let mut expired = 0u64;
        let mut batch = Batch::new();
        let mut delta = UsageDelta::default();
        for (k, h) in self.store.scan::<Hosted>(Tree::Hosted, "hosted envelope")? {
            if h.expires_at > now {
                continue;
            }
            let Ok(address) = <[u8; 32]>::try_from(&k.as_ref()[..32]).map(Address) else {
                continue;
            };
            self.stage_removal(&mut batch, &mut delta, &address, &k.as_ref()[32..], &h);
            expired += 1;
        }
        if expired > 0 {
            self.stage_delta(&mut batch, delta)?;
            self.stage_stats(&mut batch, |s| s.expired += expired)?;
            self.store.commit(batch).await?;
        }
        Ok(expired)
    }

    /// The addresses of the dead drops this node hosts.
    pub fn addresses(&self) -> Result<Vec<Address>, StoreError> {
        Ok(self
            .store
            .keys_with_prefix(Tree::HostUsage, b"d")?
            .iter()
            .filter_map(|k| <[u8; 32]>::try_from(&k.as_ref()[1..]).ok().map(Address))
            .collect())
    }

    /// The envelopes hosted at `address`, in deposit order (at most the per-drop quota).
    pub fn hosted_at(&self, address: &Address) -> Result<Vec<Hosted>, StoreError> {
        Ok(self
            .store
            .scan_prefix::<Hosted>(Tree::Hosted, &address.0, "hosted envelope")?
            .into_iter()
            .map(|(_, h)| h)
            .collect())
    }

    /// Forget an envelope that was handed over to closer hosts.
    pub async fn forget(&self, address: &Address, hosted: &Hosted) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let Some(seq) = self.store.get_raw(
            Tree::HostedIds,
            &id_key(address, &envelope::digest(&hosted.envelope)),
        )?
        else {
            return Ok(());
        };
        let mut batch = Batch::new();
        let mut delta = UsageDelta::default();
        self.stage_removal(&mut batch, &mut delta, address, &seq, hosted);
        self.stage_delta(&mut batch, delta)?;
        self.stage_stats(&mut batch, |s| s.handed_over += 1)?;
        self.store.commit(batch).await
    }

    /// `mailbox.stats`
    pub fn stats_json(&self) -> Result<Value, StoreError> {
        let addresses = self.addresses()?;
        let mut envelopes = 0u64;
        let mut sizes = std::collections::BTreeMap::<String, u64>::new();
        let mut by_address = std::collections::BTreeMap::<String, u64>::new();
        // One envelope at a time: a host may hold up to its quota in all.
        self.store
            .for_each::<Hosted>(Tree::Hosted, "hosted envelope", |k, h| {
                envelopes += 1;
                *sizes.entry(h.envelope.len().to_string()).or_default() += 1;
                let hex: String = k.iter().take(32).map(|b| format!("{b:02x}")).collect();
                *by_address.entry(hex).or_default() += 1;
            })?;
        let stats = self.stats()?;
        Ok(json!({
            "dead_drops": addresses.len(),
            "addresses": addresses.iter().map(|a| a.0.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>(),
            "envelopes": envelopes,
            "bytes": self.host_bytes()?,
            "sizes": sizes,
            "envelopes_by_address": by_address,
            "deposits": stats.deposits,
            "rejections": stats.rejections,
            "deleted": stats.deleted,
            "expired": stats.expired,
            "handed_over": stats.handed_over,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::deaddrop::Secret;
    use sotto_protocol::mailbox::DepositAuth;

    const ME: &[u8] = b"this host";

    fn host(policy: Policy) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Host::new(store, policy, ME.to_vec()))
    }

    fn deposit(secret: &Secret, fill: u8, expires_at: u64) -> Request {
        let key = secret.drop_key(1);
        let envelope = vec![fill; 512];
        let digest = envelope::digest(&envelope);
        Request::Deposit(Deposit {
            address: key.address(),
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
            envelope,
            expires_at,
        })
    }

    fn fetch(secret: &Secret) -> Request {
        let key = secret.drop_key(1);
        let now = now_ms();
        Request::Fetch(Fetch {
            address: key.address(),
            timestamp: now,
            after: None,
            proof: key.sign(&Fetch::signed_bytes(now, ME)),
        })
    }

    #[tokio::test]
    async fn usage_is_exact_through_deposit_delete_and_expiry() {
        let (_dir, host) = host(Policy::default());
        let s = Secret::from_bytes([1; 32]);
        let far = now_ms() + 3_600_000;
        for fill in 0..3 {
            assert_eq!(
                host.handle_request(b"peer-a", deposit(&s, fill, far)).await,
                Response::Stored
            );
        }
        assert_eq!(
            host.handle_request(b"peer-b", deposit(&s, 0, far)).await,
            Response::AlreadyStored
        );
        assert_eq!(host.host_bytes().unwrap(), 3 * 512);

        // Served in deposit order.
        let Response::Envelopes {
            envelopes,
            more: false,
        } = host.handle_request(b"x", fetch(&s)).await
        else {
            panic!()
        };
        assert_eq!(
            envelopes.iter().map(|e| e[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );

        // Delete two, naming one twice.
        let key = s.drop_key(1);
        let ids = vec![
            envelope::digest(&envelopes[0]),
            envelope::digest(&envelopes[0]),
            envelope::digest(&envelopes[2]),
        ];
        let now = now_ms();
        let delete = Request::Delete(Delete {
            address: key.address(),
            timestamp: now,
            ids: ids.clone(),
            proof: key.sign(&Delete::signed_bytes(now, ME, &ids)),
        });
        assert_eq!(
            host.handle_request(b"x", delete).await,
            Response::Deleted(2)
        );
        assert_eq!(host.host_bytes().unwrap(), 512);
        assert_eq!(
            host.usage(&depositor_usage_key(b"peer-a")).unwrap().count,
            1
        );

        // An envelope that expires is collected, and the books are back at zero.
        assert_eq!(
            host.handle_request(b"peer-a", deposit(&s, 9, now_ms() + 100))
                .await,
            Response::Stored
        );
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        assert_eq!(host.collect_garbage().await.unwrap(), 1);
        let Response::Envelopes { envelopes, .. } = host.handle_request(b"x", fetch(&s)).await
        else {
            panic!()
        };
        assert_eq!(envelopes.len(), 1);
        let address = host.addresses().unwrap()[0];
        let hosted = host.hosted_at(&address).unwrap();
        host.forget(&address, &hosted[0]).await.unwrap();
        assert_eq!(host.host_bytes().unwrap(), 0);
        assert_eq!(
            host.usage(&depositor_usage_key(b"peer-a")).unwrap().count,
            0
        );
        assert_eq!(
            host.usage(&drop_usage_key(&key.address())).unwrap().count,
            0
        );
        let stats = host.stats().unwrap();
        assert_eq!(
            (
                stats.deposits,
                stats.deleted,
                stats.expired,
                stats.handed_over
            ),
            (4, 2, 1, 1)
        );
    }

    #[tokio::test]
    async fn pages_of_the_largest_envelopes_still_encode() {
        let (_dir, host) = host(Policy::default());
        let s = Secret::from_bytes([1; 32]);
        let key = s.drop_key(1);
        let far = now_ms() + 3_600_000;
        for fill in 0..20u8 {
            let envelope = vec![fill; 65535];
            let digest = envelope::digest(&envelope);
            let d = Deposit {
                address: key.address(),
                auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, far))),
                envelope,
                expires_at: far,
            };
            assert_eq!(
                host.handle_request(b"a", Request::Deposit(d)).await,
                Response::Stored
            );
        }
        let mut after = None;
        let mut seen = 0;
        for _ in 0..5 {
            let now = now_ms();
            let f = Fetch {
                address: key.address(),
                timestamp: now,
                after,
                proof: key.sign(&Fetch::signed_bytes(now, ME)),
            };
            let page = host.handle_request(b"x", Request::Fetch(f)).await;
            assert!(page.to_bytes().is_ok(), "a page fits the response limit");
            let Response::Envelopes { envelopes, more } = page else {
                panic!()
            };
            seen += envelopes.len();
            after = envelopes.last().map(|e| envelope::digest(e));
            if !more {
                break;
            }
        }
        assert_eq!(seen, 20);
    }

    #[tokio::test]
    async fn a_full_dead_drop_refuses_more() {
        let (_dir, host) = host(Policy {
            max_drop_count: 2,
            ..Policy::default()
        });
        let s = Secret::from_bytes([1; 32]);
        let far = now_ms() + 3_600_000;
        assert_eq!(
            host.handle_request(b"a", deposit(&s, 1, far)).await,
            Response::Stored
        );
        assert_eq!(
            host.handle_request(b"b", deposit(&s, 2, far)).await,
            Response::Stored
        );
        assert_eq!(
            host.handle_request(b"c", deposit(&s, 3, far)).await,
            Response::Refused(Refusal::DropQuota)
        );
        assert_eq!(host.stats().unwrap().rejections, 1);
        assert_eq!(
            host.handle(b"a", b"garbage").await,
            Response::Refused(Refusal::Malformed)
        );
    }
}
