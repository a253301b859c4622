//! Mailbox hosting: this node keeps sealed envelopes for others at dead-drop addresses,
//! within quotas per depositor, per dead drop and in all, for at most the policy's TTL.
//!
//! Hosted envelopes live in the store (see [`crate::store::hosting`]) and are flushed
//! before a deposit is confirmed. What the host can see: the address, the envelope's size
//! (a padding bucket), the depositing peer, and when. What it cannot: who wrote it, for
//! whom, or what it says.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use libp2p::PeerId;
use serde::Serialize;
use sotto_protocol::deaddrop::Address;
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{
    self, Delete, Deposit, Fetch, Fetched, Policy, Refusal, Request, Response,
};
use tokio::sync::Mutex;

use crate::clock::unix_ms;
use crate::link::{HostAction, HostEvent, Observer};
use crate::store::hosting::UsageOf;
use crate::store::{Batch, HostStats, Hosted, Seq, Store, StoreError, Usage};

/// Changes to usage records, summed per record before they are written.
#[derive(Default)]
struct UsageDelta {
    per_record: HashMap<UsageOf, (i64, i64)>,
    bytes: i64,
}

impl UsageDelta {
    fn add(&mut self, address: &Address, depositor: &[u8], count: i64, bytes: i64) {
        for of in [
            UsageOf::Drop(*address),
            UsageOf::Depositor(depositor.to_vec()),
        ] {
            let e = self.per_record.entry(of).or_default();
            e.0 += count;
            e.1 += bytes;
        }
        self.bytes += bytes;
    }
}

/// `mailbox.stats`: what this node hosts, and what it did as a host.
#[derive(Clone, Debug, Serialize)]
pub struct HostingStats {
    pub dead_drops: usize,
    /// The dead drops' addresses, in hex.
    pub addresses: Vec<String>,
    pub envelopes: u64,
    pub bytes: u64,
    /// Envelopes by size in bytes.
    pub sizes: BTreeMap<String, u64>,
    pub envelopes_by_address: BTreeMap<String, u64>,
    pub deposits: u64,
    pub rejections: u64,
    pub deleted: u64,
    pub expired: u64,
    pub handed_over: u64,
}

/// What a fetched envelope costs in a page beyond its bytes, at most: length prefix,
/// expiry, and authorisation.
const FETCHED_OVERHEAD: usize = 160;

/// Expired envelopes removed in one transaction, at most.
pub const GC_CHUNK: usize = 512;

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

/// Whom a deposit's usage is counted against: its source IP address (an IPv6 address by
/// its /64), which costs a depositor more to change than a PeerId does; the PeerId where the
/// transport has no address, or the address is loopback (a node on this machine, as the
/// simulator's are).
pub fn depositor(from: &PeerId, source: Option<IpAddr>) -> Vec<u8> {
    let key = source.map(crate::net::per_ip::address_key);
    match key {
        Some(IpAddr::V4(ip)) if !ip.is_loopback() => [&b"4"[..], &ip.octets()].concat(),
        Some(IpAddr::V6(ip)) if source.is_some_and(|s| !s.is_loopback()) => {
            [&b"6"[..], &ip.octets()[..8]].concat()
        }
        _ => from.to_bytes(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Host {
    /// The host of the node `me`, keeping its envelopes in `store` under `policy`.
    pub fn new(store: Store, policy: Policy, me: &PeerId) -> Self {
        Host {
            store,
            policy,
            me: me.to_bytes(),
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

    /// Answer `request` from the peer `from`, which came from the IP address `source`
    /// (if the transport has one).
    pub async fn handle(
        &self,
        from: &PeerId,
        source: Option<IpAddr>,
        request: Request,
    ) -> Response {
        let from_bytes = from.to_bytes();
        let (kind, address) = match &request {
            Request::Deposit(d) => ("deposit", &d.address),
            Request::Fetch(f) => ("fetch", &f.address),
            Request::Delete(d) => ("delete", &d.address),
        };
        tracing::debug!(
            target: "sotto_daemon::requests",
            "mailbox {kind} at {} from {from}",
            super::address_hex(address)
        );
        let seen = self.observer.as_ref().map(|_| observed(&request));
        let started = std::time::Instant::now();
        let result = match request {
            Request::Deposit(d) => self.deposit(&depositor(from, source), d).await,
            Request::Fetch(f) => self.fetch(&f),
            Request::Delete(d) => self.delete(&d).await,
        };
        if started.elapsed().as_secs() >= 2 {
            tracing::debug!("a mailbox {kind} took {:?}", started.elapsed());
        }
        let response = result.unwrap_or_else(|e| {
            tracing::error!("mailbox host: {e}");
            Response::Refused(Refusal::Internal)
        });
        if let (Some(observer), Some(action)) = (&self.observer, seen) {
            observer.host_event(HostEvent {
                at_ms: unix_ms(),
                host: self.me.clone(),
                peer: from_bytes,
                action: action(&response),
            });
        }
        response
    }

    fn stage_stats(
        &self,
        batch: &mut Batch,
        f: impl FnOnce(&mut HostStats),
    ) -> Result<(), StoreError> {
        let mut stats = self.store.host_stats()?;
        f(&mut stats);
        batch.put_host_stats(&stats)
    }

    /// Write `delta` into `batch` on top of the stored usage records.
    fn stage_delta(&self, batch: &mut Batch, delta: UsageDelta) -> Result<(), StoreError> {
        for (of, (count, bytes)) in delta.per_record {
            let u = self.store.host_usage(&of)?;
            let u = Usage {
                count: u.count.saturating_add_signed(count),
                bytes: u.bytes.saturating_add_signed(bytes),
            };
            batch.put_host_usage(&of, u)?;
        }
        let total = self.store.host_bytes()?.saturating_add_signed(delta.bytes);
        batch.put_host_bytes(total);
        Ok(())
    }

    /// Stage the removal of the envelope stored under `seq` at `address`.
    fn stage_removal(
        &self,
        batch: &mut Batch,
        delta: &mut UsageDelta,
        address: &Address,
        seq: Seq,
        h: &Hosted,
    ) {
        batch.remove_hosted(address, seq, h);
        delta.add(address, &h.depositor, -1, -(h.envelope.len() as i64));
    }

    async fn deposit(&self, depositor: &[u8], d: Deposit) -> Result<Response, StoreError> {
        let _g = self.lock.lock().await;
        let now = unix_ms();
        let id = envelope::digest(&d.envelope);
        if self.store.hosted_seq(&d.address, &id)?.is_some() {
            return Ok(Response::AlreadyStored);
        }
        let drop_usage = self.store.host_usage(&UsageOf::Drop(d.address))?;
        let depositor_usage = self
            .store
            .host_usage(&UsageOf::Depositor(depositor.to_vec()))?;
        let usage = mailbox::Usage {
            drop_count: drop_usage.count,
            drop_bytes: drop_usage.bytes,
            depositor_count: depositor_usage.count,
            depositor_bytes: depositor_usage.bytes,
            host_bytes: self.store.host_bytes()?,
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
        let seq = self.store.next_seq()?;
        let mut batch = Batch::new();
        batch.put_hosted(
            &d.address,
            seq,
            &id,
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
        let now = unix_ms();
        if let Err(refusal) = self.policy.admit_fetch(f, &self.me, now) {
            return Ok(Response::Refused(refusal));
        }
        let after = match &f.after {
            Some(id) => self.store.hosted_seq(&f.address, id)?,
            None => None,
        };
        let mut envelopes = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        self.store.walk_hosted_at(&f.address, after, |_, h| {
            if h.expires_at <= now {
                return true;
            }
            // Budget by encoded size: each envelope also costs its length prefix, expiry
            // and authorisation (a proof is ~100 bytes).
            let cost = h.envelope.len() + FETCHED_OVERHEAD;
            if !envelopes.is_empty() && bytes + cost > self.policy.page_bytes {
                more = true;
                return false;
            }
            bytes += cost;
            envelopes.push(Fetched {
                envelope: h.envelope,
                expires_at: h.deposit_expires_at,
                auth: h.auth,
            });
            true
        })?;
        Ok(Response::Envelopes { envelopes, more })
    }

    async fn delete(&self, d: &Delete) -> Result<Response, StoreError> {
        let _g = self.lock.lock().await;
        if let Err(refusal) = self.policy.admit_delete(d, &self.me, unix_ms()) {
            return Ok(Response::Refused(refusal));
        }
        let mut deleted = 0u32;
        let mut batch = Batch::new();
        let mut delta = UsageDelta::default();
        let mut seen = HashSet::new();
        for id in &d.ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(seq) = self.store.hosted_seq(&d.address, id)? else {
                continue;
            };
            if let Some(h) = self.store.hosted(&d.address, seq)? {
                self.stage_removal(&mut batch, &mut delta, &d.address, seq, &h);
                deleted += 1;
            }
        }
        self.stage_delta(&mut batch, delta)?;
        self.stage_stats(&mut batch, |s| s.deleted += u64::from(deleted))?;
        self.store.commit(batch).await?;
        Ok(Response::Deleted(deleted))
    }

    /// Drop expired envelopes, [`GC_CHUNK`] to a transaction; returns how many. Reads only
    /// the expired envelopes (through the store's expiry index), so that its cost and
    /// memory do not grow with what the host holds.
    pub async fn collect_garbage(&self) -> Result<u64, StoreError> {
        self.collect_garbage_at(unix_ms()).await
    }

    /// [`Host::collect_garbage`] as of `now` (unix ms): what expired at or before then.
    async fn collect_garbage_at(&self, now: u64) -> Result<u64, StoreError> {
        let mut expired = 0u64;
        loop {
            let _g = self.lock.lock().await;
            let due = self.store.expired_hosted(now, GC_CHUNK)?;
            if due.is_empty() {
                return Ok(expired);
            }
            let mut batch = Batch::new();
            let mut delta = UsageDelta::default();
            let mut n = 0u64;
            for e in &due {
                match self.store.hosted(&e.address, e.seq)? {
                    Some(h) => {
                        self.stage_removal(&mut batch, &mut delta, &e.address, e.seq, &h);
                        n += 1;
                    }
                    None => batch.remove_expiry(e),
                }
            }
            self.stage_delta(&mut batch, delta)?;
            self.stage_stats(&mut batch, |s| s.expired += n)?;
            self.store.commit(batch).await?;
            expired += n;
            if due.len() < GC_CHUNK {
                return Ok(expired);
            }
        }
    }

    /// The addresses of the dead drops this node hosts.
    pub fn addresses(&self) -> Result<Vec<Address>, StoreError> {
        self.store.hosted_addresses()
    }

    /// The envelopes hosted at `address`, in deposit order (at most the per-drop quota).
    pub fn hosted_at(&self, address: &Address) -> Result<Vec<Hosted>, StoreError> {
        let mut out = Vec::new();
        self.store.walk_hosted_at(address, None, |_, h| {
            out.push(h);
            true
        })?;
        Ok(out)
    }

    /// Forget an envelope that was handed over to closer hosts.
    pub async fn forget(&self, address: &Address, hosted: &Hosted) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let Some(seq) = self
            .store
            .hosted_seq(address, &envelope::digest(&hosted.envelope))?
        else {
            return Ok(());
        };
        let mut batch = Batch::new();
        let mut delta = UsageDelta::default();
        self.stage_removal(&mut batch, &mut delta, address, seq, hosted);
        self.stage_delta(&mut batch, delta)?;
        self.stage_stats(&mut batch, |s| s.handed_over += 1)?;
        self.store.commit(batch).await
    }

    /// `mailbox.stats`
    pub fn stats(&self) -> Result<HostingStats, StoreError> {
        let addresses = self.addresses()?;
        let mut envelopes = 0u64;
        let mut sizes = BTreeMap::<String, u64>::new();
        let mut by_address = BTreeMap::<String, u64>::new();
        // One envelope at a time: a host may hold up to its quota in all.
        self.store.walk_hosted(|address, _, h| {
            envelopes += 1;
            *sizes.entry(h.envelope.len().to_string()).or_default() += 1;
            *by_address.entry(hex(&address.0)).or_default() += 1;
            true
        })?;
        let stats = self.store.host_stats()?;
        Ok(HostingStats {
            dead_drops: addresses.len(),
            addresses: addresses.iter().map(|a| hex(&a.0)).collect(),
            envelopes,
            bytes: self.store.host_bytes()?,
            sizes,
            envelopes_by_address: by_address,
            deposits: stats.deposits,
            rejections: stats.rejections,
            deleted: stats.deleted,
            expired: stats.expired,
            handed_over: stats.handed_over,
        })
    }
}

/// What the observer is told of `request`, once its answer is known.
fn observed(request: &Request) -> Box<dyn Fn(&Response) -> HostAction + Send> {
    match request {
        Request::Deposit(d) => {
            let (address, size) = (d.address.0, d.envelope.len());
            Box::new(move |r| HostAction::Deposit {
                address,
                size,
                stored: matches!(r, Response::Stored | Response::AlreadyStored),
            })
        }
        Request::Fetch(f) => {
            let address = f.address.0;
            Box::new(move |r| HostAction::Fetch {
                address,
                envelopes: match r {
                    Response::Envelopes { envelopes, .. } => envelopes.len(),
                    _ => 0,
                },
            })
        }
        Request::Delete(d) => {
            let address = d.address.0;
            Box::new(move |r| HostAction::Delete {
                address,
                count: match r {
                    Response::Deleted(n) => *n as usize,
                    _ => 0,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::deaddrop::Secret;
    use sotto_protocol::mailbox::DepositAuth;

    fn me() -> PeerId {
        PeerId::from_bytes(&[0, 4, 1, 2, 3, 4]).unwrap()
    }

    /// A fixed peer, told by `n`.
    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes(&[0, 4, n, n, n, n]).unwrap()
    }

    impl Host {
        /// As [`Host::handle`], from a peer with no IP address.
        async fn handle_from(&self, from: &PeerId, request: Request) -> Response {
            self.handle(from, None, request).await
        }
    }

    #[test]
    fn deposits_count_against_their_source_address_and_ipv6_by_its_64() {
        let p = peer(1);
        let q = peer(2);
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(depositor(&p, Some(v4)), depositor(&q, Some(v4)));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(depositor(&p, Some(a)), depositor(&q, Some(b)));
        assert_ne!(depositor(&p, Some(a)), depositor(&p, Some(c)));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(depositor(&q, Some(mapped)), depositor(&p, Some(v4)));
        // No address, or a loopback one: the PeerId.
        assert_eq!(depositor(&p, None), p.to_bytes());
        assert_eq!(
            depositor(&p, Some("127.0.0.1".parse().unwrap())),
            p.to_bytes()
        );
        assert_eq!(depositor(&p, Some("::1".parse().unwrap())), p.to_bytes());
    }

    /// Fresh PeerIds from one address share that address's quota.
    #[tokio::test]
    async fn fresh_peer_ids_from_one_address_share_its_quota() {
        let (_dir, host) = host(Policy {
            max_depositor_count: 3,
            ..Policy::default()
        });
        let ip: IpAddr = "198.51.100.20".parse().unwrap();
        let s = Secret::from_bytes([7; 32]);
        let far = unix_ms() + 3_600_000;
        for i in 0..3u8 {
            assert_eq!(
                host.handle(&peer(10 + i), Some(ip), deposit(&s, i, far))
                    .await,
                Response::Stored
            );
        }
        assert_eq!(
            host.handle(&peer(20), Some(ip), deposit(&s, 9, far)).await,
            Response::Refused(Refusal::DepositorQuota)
        );
        let other: IpAddr = "198.51.100.21".parse().unwrap();
        assert_eq!(
            host.handle(&peer(20), Some(other), deposit(&s, 9, far))
                .await,
            Response::Stored
        );
    }

    fn host(policy: Policy) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Host::new(store, policy, &me()))
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
        let now = unix_ms();
        Request::Fetch(Fetch {
            address: key.address(),
            timestamp: now,
            after: None,
            proof: key.sign(&Fetch::signed_bytes(now, &me().to_bytes())),
        })
    }

    #[tokio::test]
    async fn usage_is_exact_through_deposit_delete_and_expiry() {
        let (_dir, host) = host(Policy::default());
        let s = Secret::from_bytes([1; 32]);
        let far = unix_ms() + 3_600_000;
        for fill in 0..3 {
            assert_eq!(
                host.handle_from(&peer(70), deposit(&s, fill, far)).await,
                Response::Stored
            );
        }
        assert_eq!(
            host.handle_from(&peer(71), deposit(&s, 0, far)).await,
            Response::AlreadyStored
        );
        assert_eq!(host.store.host_bytes().unwrap(), 3 * 512);

        // Served in deposit order.
        let Response::Envelopes {
            envelopes,
            more: false,
        } = host.handle_from(&peer(120), fetch(&s)).await
        else {
            panic!()
        };
        assert_eq!(
            envelopes.iter().map(|e| e.envelope[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );

        // Delete two, naming one twice.
        let key = s.drop_key(1);
        let ids = vec![
            envelope::digest(&envelopes[0].envelope),
            envelope::digest(&envelopes[0].envelope),
            envelope::digest(&envelopes[2].envelope),
        ];
        let now = unix_ms();
        let delete = Request::Delete(Delete {
            address: key.address(),
            timestamp: now,
            ids: ids.clone(),
            proof: key.sign(&Delete::signed_bytes(now, &me().to_bytes(), &ids)),
        });
        assert_eq!(
            host.handle_from(&peer(120), delete).await,
            Response::Deleted(2)
        );
        assert_eq!(host.store.host_bytes().unwrap(), 512);
        assert_eq!(
            host.store
                .host_usage(&UsageOf::Depositor(peer(70).to_bytes()))
                .unwrap()
                .count,
            1
        );

        // An envelope that expires is collected, and the books are back at zero.
        let soon = unix_ms() + 60_000;
        assert_eq!(
            host.handle_from(&peer(70), deposit(&s, 9, soon)).await,
            Response::Stored
        );
        assert_eq!(host.collect_garbage_at(soon).await.unwrap(), 1);
        let Response::Envelopes { envelopes, .. } = host.handle_from(&peer(120), fetch(&s)).await
        else {
            panic!()
        };
        assert_eq!(envelopes.len(), 1);
        let address = host.addresses().unwrap()[0];
        let hosted = host.hosted_at(&address).unwrap();
        host.forget(&address, &hosted[0]).await.unwrap();
        assert_eq!(host.store.host_bytes().unwrap(), 0);
        assert_eq!(
            host.store
                .host_usage(&UsageOf::Depositor(peer(70).to_bytes()))
                .unwrap()
                .count,
            0
        );
        assert_eq!(
            host.store
                .host_usage(&UsageOf::Drop(key.address()))
                .unwrap()
                .count,
            0
        );
        let stats = host.store.host_stats().unwrap();
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
        let far = unix_ms() + 3_600_000;
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
                host.handle_from(&peer(97), Request::Deposit(d)).await,
                Response::Stored
            );
        }
        let mut after = None;
        let mut seen = 0;
        for _ in 0..5 {
            let now = unix_ms();
            let f = Fetch {
                address: key.address(),
                timestamp: now,
                after,
                proof: key.sign(&Fetch::signed_bytes(now, &me().to_bytes())),
            };
            let page = host.handle_from(&peer(120), Request::Fetch(f)).await;
            assert!(page.to_bytes().is_ok(), "a page fits the response limit");
            let Response::Envelopes { envelopes, more } = page else {
                panic!()
            };
            seen += envelopes.len();
            after = envelopes.last().map(|e| envelope::digest(&e.envelope));
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
        let far = unix_ms() + 3_600_000;
        assert_eq!(
            host.handle_from(&peer(97), deposit(&s, 1, far)).await,
            Response::Stored
        );
        assert_eq!(
            host.handle_from(&peer(98), deposit(&s, 2, far)).await,
            Response::Stored
        );
        assert_eq!(
            host.handle_from(&peer(99), deposit(&s, 3, far)).await,
            Response::Refused(Refusal::DropQuota)
        );
        assert_eq!(host.store.host_stats().unwrap().rejections, 1);
    }

    /// An envelope of 512 bytes made of `n`, deposited under `secret`'s drop.
    fn numbered(secret: &Secret, n: u32, expires_at: u64) -> Request {
        let key = secret.drop_key(1);
        let mut envelope = vec![0u8; 512];
        envelope[..4].copy_from_slice(&n.to_be_bytes());
        let digest = envelope::digest(&envelope);
        Request::Deposit(Deposit {
            address: key.address(),
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
            envelope,
            expires_at,
        })
    }

    /// Garbage collection reads the expired envelopes only (through the expiry index), a
    /// chunk at a time: what it costs does not grow with what the host keeps.
    #[tokio::test]
    async fn garbage_collection_reads_only_what_expired() {
        let (_dir, host) = host(Policy::default());
        let far = unix_ms() + 3_600_000;
        let soon = unix_ms() + 600_000;
        let mut n = 0u32;
        // 2,000 that stay (two dead drops of 1,000), 1,100 that expire (over two chunks)
        // ten minutes on: the collections below are run as of a given time, so that a slow
        // machine depositing them cannot make any expire early.
        for (secret, count, far) in [
            (Secret::from_bytes([1; 32]), 1_000, true),
            (Secret::from_bytes([2; 32]), 1_000, true),
            (Secret::from_bytes([3; 32]), 600, false),
            (Secret::from_bytes([4; 32]), 500, false),
        ]
        .map(|(s, c, stays)| (s, c, stays.then_some(far)))
        {
            for _ in 0..count {
                n += 1;
                let expires_at = far.unwrap_or(soon);
                assert_eq!(
                    host.handle_from(&peer(1), numbered(&secret, n, expires_at))
                        .await,
                    Response::Stored
                );
            }
        }
        let store = &host.store;
        let before = store.records_read();
        assert_eq!(host.collect_garbage_at(soon - 1).await.unwrap(), 0);
        assert_eq!(
            store.records_read(),
            before,
            "nothing expired: nothing read"
        );

        let before = store.records_read();
        assert_eq!(host.collect_garbage_at(soon).await.unwrap(), 1_100);
        let read = store.records_read() - before;
        // Each expired envelope, and per chunk the usage records, total and counters.
        let chunks = 1_100u64.div_ceil(GC_CHUNK as u64);
        assert!(read <= 1_100 + chunks * 8, "read {read} records");
        assert_eq!(store.host_bytes().unwrap(), 2_000 * 512);
        assert_eq!(
            store
                .host_usage(&UsageOf::Depositor(peer(1).to_bytes()))
                .unwrap()
                .count,
            2_000
        );
        assert_eq!(store.expired_hosted(u64::MAX, 10_000).unwrap().len(), 2_000);
    }
}
