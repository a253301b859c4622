//! Dead drops: where envelopes wait for a recipient who is offline.
//!
//! A dead drop is derived from a 32-byte secret and an epoch number. For each epoch the
//! secret yields an Ed25519 key pair (the *drop key*); the dead-drop **address** is the
//! SHA-256 of the drop key's public half. Hosts store envelopes by address. Whoever knows
//! the secret can derive the drop key and so sign requests for that address — deposits to
//! it, fetches from it, deletions in it — and a host checks the signature against the public
//! key whose hash is the address. Nobody else can deposit there, read what waits there or
//! delete it, and the address changes every epoch, so a host cannot tell that two addresses
//! belong to the same pair.
//!
//! The secret of a pairwise dead drop is chosen by its recipient, one per contact, and told
//! to the contact inside the encrypted session (the *inbox secret*); a group's dead drop will
//! use the group secret the same way. The intro dead drop printed in a contact card is the
//! exception: it does not rotate, and since anyone with the card may deposit there, deposits
//! carry a proof-of-work stamp instead of a signature (see [`crate::pow`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};
use zeroize::Zeroizing;

const SEED_DOMAIN: &[u8] = b"sotto/dead-drop/seed/v1";
const ADDRESS_DOMAIN: &[u8] = b"sotto/dead-drop/address/v1";
const INTRO_ADDRESS_DOMAIN: &[u8] = b"sotto/dead-drop/intro-address/v1";
const REQUEST_DOMAIN: &[u8] = b"sotto/dead-drop/request/v1";

/// The default epoch: one day.
pub const DEFAULT_EPOCH_MS: u64 = 24 * 60 * 60 * 1000;

/// A dead-drop address: what hosts see and index by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address(pub [u8; 32]);

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Address(")?;
        self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…)")
    }
}

impl Address {
    /// The address of the (pairwise or group) drop whose public key is `key`.
    pub fn of_key(key: &[u8; 32]) -> Address {
        Address(
            Sha256::new()
                .chain_update(ADDRESS_DOMAIN)
                .chain_update(key)
                .finalize()
                .into(),
        )
    }

    /// The address of the intro dead drop whose public key is `key`. Its own domain lets a
    /// host tell an intro address (where stamped deposits are allowed) from a pair's.
    pub fn of_intro_key(key: &[u8; 32]) -> Address {
        Address(
            Sha256::new()
                .chain_update(INTRO_ADDRESS_DOMAIN)
                .chain_update(key)
                .finalize()
                .into(),
        )
    }
}

/// The epoch `now_ms` falls in, for epochs of `epoch_ms` milliseconds.
pub fn epoch_at(now_ms: u64, epoch_ms: u64) -> u64 {
    now_ms / epoch_ms.max(1)
}

/// A dead-drop secret. Neither `Debug` nor `Serialize`; persist it with [`Secret::bytes`].
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; 32]>);

impl Secret {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(s.as_mut());
        Secret(s)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The drop key for `epoch`.
    pub fn drop_key(&self, epoch: u64) -> DropKey {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            Sha256::new()
                .chain_update(SEED_DOMAIN)
                .chain_update(*self.0)
                .chain_update(epoch.to_be_bytes())
                .finalize()
                .into(),
        );
        DropKey::from_seed(&seed)
    }
}

/// The key pair of one dead drop in one epoch (or of an intro dead drop).
pub struct DropKey {
    secret: Ed25519SecretKey,
    public: [u8; 32],
}

impl DropKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let secret = Ed25519SecretKey::from_slice(seed);
        let public = *secret.public_key().as_bytes();
        DropKey { secret, public }
    }

    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret.to_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The address of this key's drop, as a pairwise (or group) drop.
    pub fn address(&self) -> Address {
        Address::of_key(&self.public)
    }

    /// The address of this key's drop, as an intro drop.
    pub fn intro_address(&self) -> Address {
        Address::of_intro_key(&self.public)
    }

    /// Sign a request about this key's pairwise drop. `what` is the request's own bytes
    /// (operation, timestamp, host, envelope digest or ids); the address is always bound in.
    pub fn sign(&self, what: &[u8]) -> Proof {
        self.sign_at(&self.address(), what)
    }

    /// Sign a request about `address`, which must be one of this key's addresses.
    pub fn sign_at(&self, address: &Address, what: &[u8]) -> Proof {
        let sig = self.secret.sign(&request_message(address, what)).to_bytes();
        Proof {
            key: self.public,
            signature: sig.to_vec(),
        }
    }
}

fn request_message(address: &Address, what: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_DOMAIN.len() + 32 + what.len());
    m.extend_from_slice(REQUEST_DOMAIN);
    m.extend_from_slice(&address.0);
    m.extend_from_slice(what);
    m
}

/// Evidence that a request comes from someone who holds a drop's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The drop's public key; its hash must be the address.
    pub key: [u8; 32],
    /// Ed25519 signature (64 bytes) over the request.
    pub signature: Vec<u8>,
}

impl Proof {
    /// Does this proof authorise `what` at `address`, a pairwise or an intro address of
    /// the proof's key?
    pub fn verify(&self, address: &Address, what: &[u8]) -> bool {
        if Address::of_key(&self.key) != *address && Address::of_intro_key(&self.key) != *address {
            return false;
        }
        self.signature_valid(address, what)
    }

    /// As [`Proof::verify`], for a pairwise (or group) address only.
    pub fn verify_pairwise(&self, address: &Address, what: &[u8]) -> bool {
        Address::of_key(&self.key) == *address && self.signature_valid(address, what)
    }

    fn signature_valid(&self, address: &Address, what: &[u8]) -> bool {
        let Ok(key) = Ed25519PublicKey::from_slice(&self.key) else {
            return false;
        };
        let Ok(sig) = Ed25519Signature::from_slice(&self.signature) else {
            return false;
        };
        key.verify(&request_message(address, what), &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_rotate_with_the_epoch_and_differ_per_secret() {
        let s = Secret::from_bytes([1; 32]);
        let t = Secret::from_bytes([2; 32]);
        assert_eq!(s.drop_key(7).address(), s.drop_key(7).address());
        assert_ne!(s.drop_key(7).address(), s.drop_key(8).address());
        assert_ne!(s.drop_key(7).address(), t.drop_key(7).address());
    }

    #[test]
    fn snapshot_of_derivation() {
        // A change here moves every dead drop: make it a visible decision.
        let a = Secret::from_bytes([0; 32]).drop_key(0).address();
        let hex: String = a.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ae4cd4870575039cf036002ba5780239838206bab662a1d44bd06bb49013fa7c"
        );
    }

    /// A vector computed by an independent implementation (protocol/vectors/vectors.py,
    /// Python's hashlib and the `cryptography` package), not by this code.
    #[test]
    fn derivation_matches_an_independent_implementation() {
        let key = Secret::from_bytes([0x42; 32]).drop_key(20_000);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(key.seed().as_slice()),
            "cbb15b6141683f2e4abafe1c2a6d87b1bfab47a2c02a8335943365bae8e3c644"
        );
        assert_eq!(
            hex(&key.public()),
            "8e0474dfbee00b427a5dd1ac13ca5c9d58a596af9f598e311a538c3a22c071b5"
        );
        assert_eq!(
            hex(&key.address().0),
            "dd8745cfc4296e25522d0c96e1b94340d19685f09d1535f070a269a91422d503"
        );
        assert_eq!(
            hex(&key.intro_address().0),
            "7ad97d6e817693cd36c84834d0b68485cfaf63bc5fde5e9ec6ddf756e70c1605"
        );
    }

    #[test]
    fn only_the_secret_holder_can_prove() {
        let s = Secret::from_bytes([1; 32]);
        let key = s.drop_key(3);
        let addr = key.address();
        let proof = key.sign(b"delete:abc");
        assert!(proof.verify(&addr, b"delete:abc"));
        assert!(!proof.verify(&addr, b"delete:abd"), "bound to the request");
        assert!(
            !proof.verify(&s.drop_key(4).address(), b"delete:abc"),
            "bound to the address"
        );
        // Someone with another key cannot prove for this address: a valid signature over
        // this address and request, under a key whose hash is not the address, is refused…
        let other = Secret::from_bytes([9; 32]).drop_key(3);
        let theirs = other.sign_at(&addr, b"delete:abc");
        assert!(
            theirs.signature_valid(&addr, b"delete:abc"),
            "the signature itself is good"
        );
        assert!(!theirs.verify(&addr, b"delete:abc"));
        assert!(!theirs.verify_pairwise(&addr, b"delete:abc"));
        // … and so is the address's own key with a signature made by another key.
        let forged = Proof {
            key: proof.key,
            signature: theirs.signature.clone(),
        };
        assert!(!forged.verify(&addr, b"delete:abc"));
        assert!(!forged.verify_pairwise(&addr, b"delete:abc"));
        assert!(!Proof {
            key: [0; 32],
            signature: vec![1, 2]
        }
        .verify(&addr, b"x"));
    }

    #[test]
    fn intro_and_pairwise_addresses_differ() {
        let key = DropKey::from_seed(&[3; 32]);
        assert_ne!(key.address(), key.intro_address());
        let proof = key.sign_at(&key.intro_address(), b"fetch");
        assert!(proof.verify(&key.intro_address(), b"fetch"));
        assert!(!proof.verify_pairwise(&key.intro_address(), b"fetch"));
        let pairwise = key.sign(b"deposit");
        assert!(pairwise.verify_pairwise(&key.address(), b"deposit"));
    }

    #[test]
    fn epochs() {
        assert_eq!(epoch_at(0, DEFAULT_EPOCH_MS), 0);
        assert_eq!(epoch_at(DEFAULT_EPOCH_MS - 1, DEFAULT_EPOCH_MS), 0);
        assert_eq!(epoch_at(DEFAULT_EPOCH_MS, DEFAULT_EPOCH_MS), 1);
        assert_eq!(epoch_at(5, 0), 5, "a zero epoch length is treated as 1 ms");
    }
}
