//! Envelopes this node hosts for others: by dead-drop address in deposit order, indexed by
//! envelope id, with usage per dead drop and per depositor, the total bytes and counters.

use sotto_protocol::deaddrop::Address;
use sotto_protocol::mailbox::EnvelopeId;

use super::schema::{concat, Tree, META_HOST_BYTES, META_HOST_STATS};
use super::{be_u64, Batch, HostStats, Hosted, Seq, Store, StoreError, Usage};

/// Whose usage a [`Usage`] record counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UsageOf {
    /// One dead drop.
    Drop(Address),
    /// One depositing peer (PeerId bytes).
    Depositor(Vec<u8>),
}

impl UsageOf {
    fn key(&self) -> Vec<u8> {
        match self {
            UsageOf::Drop(a) => concat(b"d", &a.0),
            UsageOf::Depositor(p) => concat(b"p", p),
        }
    }
}

/// A hosted envelope that expired, as the expiry index names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    pub expires_at: u64,
    pub address: Address,
    pub seq: Seq,
}

/// The key of the expiry index for the hosted envelope stored under `hosted_key` (address ‖
/// sequence number) that expires at `expires_at`.
pub(super) fn expiry_key_raw(expires_at: u64, hosted_key: &[u8]) -> Vec<u8> {
    concat(&expires_at.to_be_bytes(), hosted_key)
}

fn expiry_key(expires_at: u64, address: &Address, seq: Seq) -> Vec<u8> {
    expiry_key_raw(expires_at, &concat(&address.0, &seq.key()))
}

impl Store {
    /// The hosted envelopes that expired by `now_ms` (at most `limit`), soonest first, read
    /// from the expiry index only.
    pub fn expired_hosted(&self, now_ms: u64, limit: usize) -> Result<Vec<Expired>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .tree(Tree::HostedExpiry)
            .range(..now_ms.saturating_add(1).to_be_bytes().to_vec())
            .keys()
        {
            let k = kv?;
            if k.len() != 48 {
                continue;
            }
            if let (Some(expires_at), Ok(a), Some(seq)) = (
                be_u64(&k[..8]),
                <[u8; 32]>::try_from(&k[8..40]),
                Seq::from_key(&k[40..]),
            ) {
                out.push(Expired {
                    expires_at,
                    address: Address(a),
                    seq,
                });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn host_usage(&self, of: &UsageOf) -> Result<Usage, StoreError> {
        Ok(self
            .get::<Usage>(Tree::HostUsage, &of.key(), "host usage")?
            .unwrap_or_default())
    }

    /// Total bytes of hosted envelopes.
    pub fn host_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .get_raw(Tree::Meta, META_HOST_BYTES)?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0))
    }

    pub fn host_stats(&self) -> Result<HostStats, StoreError> {
        Ok(self
            .get::<HostStats>(Tree::Meta, META_HOST_STATS, "host stats")?
            .unwrap_or_default())
    }

    /// Where the envelope `id` is stored at `address`, if it is.
    pub fn hosted_seq(
        &self,
        address: &Address,
        id: &EnvelopeId,
    ) -> Result<Option<Seq>, StoreError> {
        Ok(self
            .get_raw(Tree::HostedIds, &concat(&address.0, id))?
            .and_then(|v| Seq::from_key(&v)))
    }

    pub fn hosted(&self, address: &Address, seq: Seq) -> Result<Option<Hosted>, StoreError> {
        self.get(
            Tree::Hosted,
            &concat(&address.0, &seq.key()),
            "hosted envelope",
        )
    }

    /// Call `f` on the envelopes hosted at `address` after `after` (all if `None`), in
    /// deposit order, one at a time, until it returns false.
    pub fn walk_hosted_at(
        &self,
        address: &Address,
        after: Option<Seq>,
        mut f: impl FnMut(Seq, Hosted) -> bool,
    ) -> Result<(), StoreError> {
        let start = concat(
            &address.0,
            &after.map_or(0, |s| s.0.saturating_add(1)).to_be_bytes(),
        );
        for kv in self.tree(Tree::Hosted).range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(&address.0) {
                break;
            }
            let Some(seq) = Seq::from_key(&k[32..]) else {
                continue;
            };
            if !f(seq, super::decode(&v, "hosted envelope")?) {
                break;
            }
        }
        Ok(())
    }

    /// Call `f` on every hosted envelope, one at a time, in address order, until it returns
    /// false.
    pub fn walk_hosted(
        &self,
        mut f: impl FnMut(Address, Seq, Hosted) -> bool,
    ) -> Result<(), StoreError> {
        self.walk::<Hosted>(Tree::Hosted, &[], "hosted envelope", |k, h| {
            match (
                <[u8; 32]>::try_from(&k[..32.min(k.len())]),
                Seq::from_key(&k[32.min(k.len())..]),
            ) {
                (Ok(a), Some(seq)) => f(Address(a), seq, h),
                _ => true,
            }
        })
    }

    /// The addresses of the dead drops that hold envelopes here.
    pub fn hosted_addresses(&self) -> Result<Vec<Address>, StoreError> {
        self.tree(Tree::HostUsage)
            .scan_prefix(b"d")
            .keys()
            .filter_map(|k| match k {
                Ok(k) => <[u8; 32]>::try_from(&k[1..]).ok().map(|a| Ok(Address(a))),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }
}

impl Batch {
    /// Host `hosted` at `address` under `seq`, indexed by its envelope id `id`.
    pub fn put_hosted(
        &mut self,
        address: &Address,
        seq: Seq,
        id: &EnvelopeId,
        hosted: &Hosted,
    ) -> Result<(), StoreError> {
        self.put_raw(Tree::HostedIds, concat(&address.0, id), seq.key());
        self.put_raw(
            Tree::HostedExpiry,
            expiry_key(hosted.expires_at, address, seq),
            [],
        );
        self.put(Tree::Hosted, concat(&address.0, &seq.key()), hosted)
    }

    /// Remove the envelope `hosted`, stored under `seq` at `address`.
    pub fn remove_hosted(&mut self, address: &Address, seq: Seq, hosted: &Hosted) {
        let id = sotto_protocol::envelope::digest(&hosted.envelope);
        self.remove(Tree::Hosted, concat(&address.0, &seq.key()));
        self.remove(Tree::HostedIds, concat(&address.0, &id));
        self.remove(
            Tree::HostedExpiry,
            expiry_key(hosted.expires_at, address, seq),
        );
    }

    /// Forget an expiry index entry whose envelope is gone.
    pub fn remove_expiry(&mut self, expired: &Expired) {
        self.remove(
            Tree::HostedExpiry,
            expiry_key(expired.expires_at, &expired.address, expired.seq),
        );
    }

    /// Set a usage record; one that counts nothing is removed.
    pub fn put_host_usage(&mut self, of: &UsageOf, usage: Usage) -> Result<(), StoreError> {
        if usage.count == 0 {
            self.remove(Tree::HostUsage, of.key());
            Ok(())
        } else {
            self.put(Tree::HostUsage, of.key(), &usage)
        }
    }

    pub fn put_host_bytes(&mut self, bytes: u64) {
        self.put_raw(Tree::Meta, META_HOST_BYTES, bytes.to_be_bytes());
    }

    pub fn put_host_stats(&mut self, stats: &HostStats) -> Result<(), StoreError> {
        self.put(Tree::Meta, META_HOST_STATS, stats)
    }
}
