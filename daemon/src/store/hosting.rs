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

impl Store {
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
        self.put(Tree::Hosted, concat(&address.0, &seq.key()), hosted)
    }

    pub fn remove_hosted(&mut self, address: &Address, seq: Seq, id: &EnvelopeId) {
        self.remove(Tree::Hosted, concat(&address.0, &seq.key()));
        self.remove(Tree::HostedIds, concat(&address.0, id));
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
