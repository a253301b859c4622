//! Store-and-forward mailboxes: the `/sotto/mailbox/1` messages and the host's policy.
//!
//! Every request is self-contained and authorised by what it carries, never by the
//! connection it arrives on, so that it can later travel through relays unchanged:
//!
//! - a **deposit** carries either a [`Proof`] by the dead drop's key (the depositor knows the
//!   drop's secret: a contact) or a proof-of-work stamp (anyone with a card, at an intro
//!   dead drop);
//! - a **fetch** and a **delete** carry a proof by the drop's key over a fresh timestamp.
//!
//! [`Policy`] decides, without I/O, whether a host accepts a request, given the host's
//! current usage and the time.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::deaddrop::{Address, Proof};
use crate::envelope;
use crate::pow;

/// The protocol id.
pub const PROTOCOL: &str = "/sotto/mailbox/1";
/// The largest request: a deposit of the largest envelope and its authorisation.
pub const MAX_REQUEST_BYTES: usize = envelope::MAX_BYTES + 512;
/// The largest response: a page of fetched envelopes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024 + 512;
/// The most ids one delete may name.
pub const MAX_DELETE_IDS: usize = 256;

/// An envelope's id at a host: the SHA-256 of its bytes.
pub type EnvelopeId = [u8; 32];

/// What authorises a deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepositAuth {
    /// Signed by the key of a pairwise (or group) drop over [`Deposit::signed_bytes`].
    Proof(Proof),
    /// At an intro drop: the drop's public key (whose intro address must be the deposit's
    /// address) and a proof-of-work nonce for the envelope's digest at the address.
    Stamp { intro: [u8; 32], nonce: u64 },
}

/// Leave an envelope at a dead drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    pub address: Address,
    pub envelope: Vec<u8>,
    /// When the depositor wants the envelope dropped; hosts keep it at most their TTL.
    pub expires_at: u64,
    pub auth: DepositAuth,
}

impl Deposit {
    /// What a deposit proof signs.
    pub fn signed_bytes(digest: &EnvelopeId, expires_at: u64) -> Vec<u8> {
        let mut m = b"deposit".to_vec();
        m.extend_from_slice(digest);
        m.extend_from_slice(&expires_at.to_be_bytes());
        m
    }
}

/// Read what waits at a dead drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    pub address: Address,
    /// The requester's clock; hosts refuse timestamps far from theirs.
    pub timestamp: u64,
    /// Continue after this envelope id (from the previous page).
    pub after: Option<EnvelopeId>,
    pub proof: Proof,
}

impl Fetch {
    /// What a fetch proof signs: the timestamp and the host it is meant for (its PeerId
    /// bytes), so that a host cannot replay it at another host.
    pub fn signed_bytes(timestamp: u64, host: &[u8]) -> Vec<u8> {
        let mut m = b"fetch".to_vec();
        m.extend_from_slice(&timestamp.to_be_bytes());
        m.extend_from_slice(host);
        m
    }
}

/// Delete envelopes that were received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub address: Address,
    pub timestamp: u64,
    pub ids: Vec<EnvelopeId>,
    pub proof: Proof,
}

impl Delete {
    /// What a delete proof signs: the timestamp, the host (as for [`Fetch`]) and the ids.
    pub fn signed_bytes(timestamp: u64, host: &[u8], ids: &[EnvelopeId]) -> Vec<u8> {
        let mut m = b"delete".to_vec();
        m.extend_from_slice(&timestamp.to_be_bytes());
        m.extend_from_slice(&(host.len() as u64).to_be_bytes());
        m.extend_from_slice(host);
        for id in ids {
            m.extend_from_slice(id);
        }
        m
    }
}

/// A request to a mailbox host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Deposit(Deposit),
    Fetch(Fetch),
    Delete(Delete),
}

/// Why a host refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The request is not valid (size, encoding, an envelope that is not a bucket size).
    Malformed,
    /// The proof does not match the address or the request.
    BadProof,
    /// The deposit needs a proof-of-work stamp of at least this difficulty.
    StampRequired(u8),
    /// The timestamp is too far from the host's clock.
    StaleTimestamp,
    /// The envelope expires in the past.
    Expired,
    /// The depositor has too much stored at this host.
    DepositorQuota,
    /// The dead drop is full.
    DropQuota,
    /// The host is storing as much as it will.
    HostFull,
    Busy,
    Internal,
    /// This peer asked more than the host's rate limit allows; slow down. A peer that keeps
    /// going is banned.
    RateLimited,
}

/// An envelope as a fetch returns it: with the expiry and authorisation it was deposited
/// with, so that the fetcher can tell an envelope someone deposited from one the host made
/// up ([`Fetched::proof_holds`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub envelope: Vec<u8>,
    pub expires_at: u64,
    pub auth: DepositAuth,
}

impl Fetched {
    /// Was this envelope deposited at the pairwise (or group) dead drop `address` by
    /// someone holding its drop key? (A host cannot make such a proof; the pair can.)
    pub fn proof_holds(&self, address: &Address) -> bool {
        let digest = envelope::digest(&self.envelope);
        match &self.auth {
            DepositAuth::Proof(p) => {
                p.verify_pairwise(address, &Deposit::signed_bytes(&digest, self.expires_at))
            }
            DepositAuth::Stamp { .. } => false,
        }
    }

    /// Was this envelope deposited at the intro dead drop `address` with a stamp of at least
    /// `difficulty` bits? (Anyone can make one, at a price: a host too.)
    pub fn stamp_holds(&self, address: &Address, difficulty: u8) -> bool {
        match &self.auth {
            DepositAuth::Stamp { intro, nonce } => {
                Address::of_intro_key(intro) == *address
                    && pow::check(
                        address,
                        &envelope::digest(&self.envelope),
                        *nonce,
                        difficulty,
                    )
            }
            DepositAuth::Proof(_) => false,
        }
    }
}

/// A host's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The deposit is stored (and flushed to disk).
    Stored,
    /// This envelope was already stored here.
    AlreadyStored,
    /// A page of what waits, oldest first; `more` if another page follows.
    Envelopes {
        envelopes: Vec<Fetched>,
        more: bool,
    },
    /// How many of the named envelopes were deleted.
    Deleted(u32),
    Refused(Refusal),
}

/// The version byte of every mailbox message. Version 2 returns each fetched envelope with
/// its expiry and authorisation; nodes speak one version.
const VERSION: u8 = 2;

fn to_bytes<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    codec::encode_versioned(VERSION, value, limit)
}

fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    codec::decode_versioned(VERSION, "mailbox message", bytes, limit)
}

impl Request {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        to_bytes(self, MAX_REQUEST_BYTES)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        from_bytes(bytes, MAX_REQUEST_BYTES)
    }
}

impl Response {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        to_bytes(self, MAX_RESPONSE_BYTES)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        from_bytes(bytes, MAX_RESPONSE_BYTES)
    }
}

/// What a host currently stores for the parties to one deposit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub drop_count: u64,
    pub drop_bytes: u64,
    pub depositor_count: u64,
    pub depositor_bytes: u64,
    pub host_bytes: u64,
}

/// A host's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The longest an envelope is kept.
    pub ttl_ms: u64,
    /// How far a request's timestamp may be from the host's clock.
    pub max_skew_ms: u64,
    pub max_drop_count: u64,
    pub max_drop_bytes: u64,
    pub max_depositor_count: u64,
    pub max_depositor_bytes: u64,
    pub max_host_bytes: u64,
    /// Proof-of-work difficulty asked of deposits without a drop-key proof.
    pub stamp_difficulty: u8,
    /// The most bytes of envelopes in one fetch page.
    pub page_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ttl_ms: 14 * 24 * 60 * 60 * 1000,
            max_skew_ms: 10 * 60 * 1000,
            max_drop_count: 1_000,
            max_drop_bytes: 16 * 1024 * 1024,
            max_depositor_count: 5_000,
            max_depositor_bytes: 64 * 1024 * 1024,
            max_host_bytes: 1024 * 1024 * 1024,
            stamp_difficulty: pow::DEFAULT_DIFFICULTY,
            page_bytes: 1024 * 1024,
        }
    }
}

impl Policy {
    /// Accept or refuse a deposit; on acceptance, the time the host will drop it.
    pub fn admit_deposit(&self, d: &Deposit, usage: &Usage, now: u64) -> Result<u64, Refusal> {
        if !crate::padding::is_bucket(d.envelope.len()) {
            return Err(Refusal::Malformed);
        }
        if d.expires_at <= now {
            return Err(Refusal::Expired);
        }
        let digest = envelope::digest(&d.envelope);
        match &d.auth {
            DepositAuth::Proof(p) => {
                if !p.verify_pairwise(&d.address, &Deposit::signed_bytes(&digest, d.expires_at)) {
                    return Err(Refusal::BadProof);
                }
            }
            DepositAuth::Stamp { intro, nonce } => {
                // Stamps open intro drops only: a pair's drop takes deposits from the pair.
                if Address::of_intro_key(intro) != d.address {
                    return Err(Refusal::BadProof);
                }
                if !pow::check(&d.address, &digest, *nonce, self.stamp_difficulty) {
                    return Err(Refusal::StampRequired(self.stamp_difficulty));
                }
            }
        }
        let size = d.envelope.len() as u64;
        if usage.drop_count >= self.max_drop_count || usage.drop_bytes + size > self.max_drop_bytes
        {
            return Err(Refusal::DropQuota);
        }
        if usage.depositor_count >= self.max_depositor_count
            || usage.depositor_bytes + size > self.max_depositor_bytes
        {
            return Err(Refusal::DepositorQuota);
        }
        if usage.host_bytes + size > self.max_host_bytes {
            return Err(Refusal::HostFull);
        }
        Ok(d.expires_at.min(now.saturating_add(self.ttl_ms)))
    }

    fn fresh(&self, timestamp: u64, now: u64) -> bool {
        timestamp.abs_diff(now) <= self.max_skew_ms
    }

    /// Accept or refuse a fetch at the host whose PeerId bytes are `host`.
    pub fn admit_fetch(&self, f: &Fetch, host: &[u8], now: u64) -> Result<(), Refusal> {
        if !self.fresh(f.timestamp, now) {
            return Err(Refusal::StaleTimestamp);
        }
        if !f
            .proof
            .verify(&f.address, &Fetch::signed_bytes(f.timestamp, host))
        {
            return Err(Refusal::BadProof);
        }
        Ok(())
    }

    /// Accept or refuse a delete at the host whose PeerId bytes are `host`.
    pub fn admit_delete(&self, d: &Delete, host: &[u8], now: u64) -> Result<(), Refusal> {
        if d.ids.len() > MAX_DELETE_IDS {
            return Err(Refusal::Malformed);
        }
        if !self.fresh(d.timestamp, now) {
            return Err(Refusal::StaleTimestamp);
        }
        if !d
            .proof
            .verify(&d.address, &Delete::signed_bytes(d.timestamp, host, &d.ids))
        {
            return Err(Refusal::BadProof);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deaddrop::Secret;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;
    const HOST: &[u8] = b"the host's PeerId";

    fn deposit(secret: &Secret, envelope: Vec<u8>) -> Deposit {
        let key = secret.drop_key(1);
        let expires_at = NOW + 1000;
        let digest = envelope::digest(&envelope);
        Deposit {
            address: key.address(),
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
            envelope,
            expires_at,
        }
    }

    #[test]
    fn deposits_need_the_drop_key_or_a_stamp() {
        let policy = Policy {
            stamp_difficulty: 8,
            ..Policy::default()
        };
        let s = Secret::from_bytes([1; 32]);
        let d = deposit(&s, vec![0; 512]);
        assert_eq!(
            policy.admit_deposit(&d, &Usage::default(), NOW),
            Ok(NOW + 1000)
        );

        // Another drop's key does not authorise this address.
        let mut forged = deposit(&Secret::from_bytes([2; 32]), vec![0; 512]);
        forged.address = d.address;
        assert_eq!(
            policy.admit_deposit(&forged, &Usage::default(), NOW),
            Err(Refusal::BadProof)
        );

        // The envelope cannot be swapped under a proof.
        let mut swapped = d.clone();
        swapped.envelope = vec![1; 512];
        assert_eq!(
            policy.admit_deposit(&swapped, &Usage::default(), NOW),
            Err(Refusal::BadProof)
        );

        // At an intro drop, without a proof: a stamp of the host's difficulty.
        let intro = crate::deaddrop::DropKey::from_seed(&[5; 32]);
        let at_intro = Deposit {
            address: intro.intro_address(),
            ..d.clone()
        };
        let digest = envelope::digest(&d.envelope);
        let nonce = pow::mint(&at_intro.address, &digest, 8, 0, 1 << 16).unwrap();
        let stamped = Deposit {
            auth: DepositAuth::Stamp {
                intro: intro.public(),
                nonce,
            },
            ..at_intro.clone()
        };
        assert!(policy
            .admit_deposit(&stamped, &Usage::default(), NOW)
            .is_ok());
        let bad = (0..)
            .find(|n| !pow::check(&at_intro.address, &digest, *n, 8))
            .unwrap();
        let unstamped = Deposit {
            auth: DepositAuth::Stamp {
                intro: intro.public(),
                nonce: bad,
            },
            ..at_intro
        };
        assert_eq!(
            policy.admit_deposit(&unstamped, &Usage::default(), NOW),
            Err(Refusal::StampRequired(8))
        );
        // A stamp never opens a pair's drop, however much work it shows.
        let nonce = pow::mint(&d.address, &digest, 8, 0, 1 << 16).unwrap();
        let pushy = Deposit {
            auth: DepositAuth::Stamp {
                intro: intro.public(),
                nonce,
            },
            ..d.clone()
        };
        assert_eq!(
            policy.admit_deposit(&pushy, &Usage::default(), NOW),
            Err(Refusal::BadProof)
        );
        let claimed = Deposit {
            auth: DepositAuth::Stamp {
                intro: s.drop_key(1).public(),
                nonce,
            },
            ..d
        };
        assert_eq!(
            policy.admit_deposit(&claimed, &Usage::default(), NOW),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn quotas_expiry_and_size() {
        let policy = Policy {
            max_drop_count: 2,
            max_depositor_bytes: 1024,
            ..Policy::default()
        };
        let d = deposit(&Secret::from_bytes([1; 32]), vec![0; 512]);
        let full_drop = Usage {
            drop_count: 2,
            ..Usage::default()
        };
        assert_eq!(
            policy.admit_deposit(&d, &full_drop, NOW),
            Err(Refusal::DropQuota)
        );
        let heavy = Usage {
            depositor_bytes: 600,
            ..Usage::default()
        };
        assert_eq!(
            policy.admit_deposit(&d, &heavy, NOW),
            Err(Refusal::DepositorQuota)
        );
        assert_eq!(
            policy.admit_deposit(&d, &Usage::default(), NOW + 1000),
            Err(Refusal::Expired)
        );
        let odd = deposit(&Secret::from_bytes([1; 32]), vec![0; 500]);
        assert_eq!(
            policy.admit_deposit(&odd, &Usage::default(), NOW),
            Err(Refusal::Malformed)
        );
        // The host's TTL caps what the depositor asks for.
        let short = Policy {
            ttl_ms: 10,
            ..Policy::default()
        };
        assert_eq!(
            short.admit_deposit(&d, &Usage::default(), NOW),
            Ok(NOW + 10)
        );
    }

    /// The daemon's rate limiter tells a deposit from a fetch or delete by the byte after
    /// the version (the variant tag), before decoding: that byte must stay what it is.
    #[test]
    fn the_request_kind_is_the_byte_after_the_version() {
        let s = Secret::from_bytes([1; 32]);
        let key = s.drop_key(1);
        let fetch = Fetch {
            address: key.address(),
            timestamp: NOW,
            after: None,
            proof: key.sign(&Fetch::signed_bytes(NOW, HOST)),
        };
        let delete = Delete {
            address: key.address(),
            timestamp: NOW,
            ids: vec![[5; 32]],
            proof: key.sign(&Delete::signed_bytes(NOW, HOST, &[[5; 32]])),
        };
        let tags: Vec<(u8, u8)> = [
            Request::Deposit(deposit(&s, vec![0; 512])),
            Request::Fetch(fetch),
            Request::Delete(delete),
        ]
        .iter()
        .map(|r| {
            let b = r.to_bytes().unwrap();
            (b[0], b[1])
        })
        .collect();
        assert_eq!(tags, [(VERSION, 0), (VERSION, 1), (VERSION, 2)]);
    }

    #[test]
    fn fetch_and_delete_need_a_fresh_proof() {
        let policy = Policy::default();
        let s = Secret::from_bytes([1; 32]);
        let key = s.drop_key(1);
        let fetch = Fetch {
            address: key.address(),
            timestamp: NOW,
            after: None,
            proof: key.sign(&Fetch::signed_bytes(NOW, HOST)),
        };
        assert_eq!(policy.admit_fetch(&fetch, HOST, NOW + 5), Ok(()));
        assert_eq!(
            policy.admit_fetch(&fetch, HOST, NOW + policy.max_skew_ms + 1),
            Err(Refusal::StaleTimestamp)
        );
        let stranger = Secret::from_bytes([7; 32]).drop_key(1);
        let drain = Fetch {
            proof: stranger.sign(&Fetch::signed_bytes(NOW, HOST)),
            ..fetch.clone()
        };
        assert_eq!(
            policy.admit_fetch(&drain, HOST, NOW),
            Err(Refusal::BadProof)
        );

        let ids = vec![[5u8; 32]];
        let delete = Delete {
            address: key.address(),
            timestamp: NOW,
            ids: ids.clone(),
            proof: key.sign(&Delete::signed_bytes(NOW, HOST, &ids)),
        };
        assert_eq!(policy.admit_delete(&delete, HOST, NOW), Ok(()));
        let widened = Delete {
            ids: vec![[5u8; 32], [6u8; 32]],
            ..delete.clone()
        };
        assert_eq!(
            policy.admit_delete(&widened, HOST, NOW),
            Err(Refusal::BadProof),
            "ids are signed"
        );
        let by_stranger = Delete {
            proof: stranger.sign(&Delete::signed_bytes(NOW, HOST, &ids)),
            ..delete
        };
        assert_eq!(
            policy.admit_delete(&by_stranger, HOST, NOW),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn a_fetch_for_one_host_is_refused_by_another() {
        let policy = Policy::default();
        let key = Secret::from_bytes([1; 32]).drop_key(1);
        let proof = key.sign(&Fetch::signed_bytes(NOW, HOST));
        let fetch = Fetch {
            address: key.address(),
            timestamp: NOW,
            after: None,
            proof,
        };
        assert_eq!(policy.admit_fetch(&fetch, HOST, NOW), Ok(()));
        assert_eq!(
            policy.admit_fetch(&fetch, b"another host", NOW),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn messages_round_trip_and_refuse_other_versions() {
        let d = Request::Deposit(deposit(&Secret::from_bytes([1; 32]), vec![0; 512]));
        let bytes = d.to_bytes().unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(Request::from_bytes(&bytes).unwrap(), d);
        let mut other = bytes.clone();
        other[0] = 1;
        assert!(Request::from_bytes(&other).is_err(), "version 1 is refused");
        let Request::Deposit(deposit) = d else {
            unreachable!()
        };
        let r = Response::Envelopes {
            envelopes: vec![Fetched {
                envelope: deposit.envelope.clone(),
                expires_at: deposit.expires_at,
                auth: deposit.auth.clone(),
            }],
            more: true,
        };
        assert_eq!(Response::from_bytes(&r.to_bytes().unwrap()).unwrap(), r);
        assert_eq!(
            Response::Refused(Refusal::StampRequired(20))
                .to_bytes()
                .unwrap(),
            vec![2, 4, 2, 20]
        );
    }

    #[test]
    fn a_fetched_envelope_proves_its_deposit_at_its_drop_only() {
        let s = Secret::from_bytes([1; 32]);
        let Request::Deposit(d) = Request::Deposit(deposit(&s, vec![3; 512])) else {
            unreachable!()
        };
        let fetched = Fetched {
            envelope: d.envelope.clone(),
            expires_at: d.expires_at,
            auth: d.auth.clone(),
        };
        assert!(fetched.proof_holds(&d.address));
        // Another drop, another expiry, other bytes, or a stamp: no proof.
        assert!(!fetched.proof_holds(&s.drop_key(2).address()));
        let later = Fetched {
            expires_at: d.expires_at + 1,
            ..fetched.clone()
        };
        assert!(!later.proof_holds(&d.address));
        let made_up = Fetched {
            envelope: vec![4; 512],
            ..fetched.clone()
        };
        assert!(!made_up.proof_holds(&d.address));
        let stamped = Fetched {
            auth: DepositAuth::Stamp {
                intro: [0; 32],
                nonce: 0,
            },
            ..fetched
        };
        assert!(!stamped.proof_holds(&d.address));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Request::from_bytes(&bytes);
            let _ = Response::from_bytes(&bytes);
        }
    }
}
