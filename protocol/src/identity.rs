//! Account identities: the Ed25519 key pair that is a user's address, its printable forms,
//! and the safety number two users compare to rule out a man in the middle.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};
use zeroize::Zeroizing;

/// Why a key or signature was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("an address is {expected} characters of base64url, got {got:?}")]
    BadAddress { expected: usize, got: String },
}

/// A user's public account key; its printable form is the user's address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountKey(pub [u8; 32]);

impl AccountKey {
    /// The address: the key in unpadded base64url (43 characters).
    pub fn address(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parse an address printed by [`AccountKey::address`].
    pub fn from_address(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadAddress {
            expected: 43,
            got: s.chars().take(64).collect(),
        };
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ed25519PublicKey::from_slice(&key).map_err(|_| KeyError::InvalidKey)?;
        Ok(AccountKey(key))
    }

    /// A short, human-comparable fingerprint: 20 hex digits in groups of four.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"sotto/fingerprint/v1")
            .chain_update(self.0)
            .finalize();
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        hex.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Check `signature` over `message` (with a domain tag) against this key.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let key = Ed25519PublicKey::from_slice(&self.0).map_err(|_| KeyError::InvalidKey)?;
        let sig = Ed25519Signature::from_slice(signature).map_err(|_| KeyError::BadSignature)?;
        key.verify(&tagged(domain, message), &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountKey({})", self.address())
    }
}

fn tagged(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + message.len());
    m.extend_from_slice(domain);
    m.push(0);
    m.extend_from_slice(message);
    m
}

/// The secret half of an account: it signs cards. Neither `Debug` nor `Serialize`; persist it
/// with [`Identity::secret_bytes`] inside an encrypted snapshot.
pub struct Identity {
    secret: Ed25519SecretKey,
    public: AccountKey,
}

impl Identity {
    /// A new identity from 32 bytes of fresh randomness.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let secret = Ed25519SecretKey::from_slice(seed);
        let public = AccountKey(*secret.public_key().as_bytes());
        Identity { secret, public }
    }

    /// A new identity with randomness from `rng`.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The 32 secret bytes, for an encrypted snapshot.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret.to_bytes())
    }

    /// The public account key.
    pub fn public(&self) -> AccountKey {
        self.public
    }

    /// Sign `message` under a domain tag, so that a signature for one purpose is never valid
    /// for another.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        self.secret.sign(&tagged(domain, message)).to_bytes()
    }
}

/// Number of hash iterations per side in a safety number (as in the Signal design: costly
/// enough that grinding a key to match a number is impractical).
const SAFETY_ITERATIONS: usize = 5200;

/// The safety number of two accounts: 60 digits in twelve groups of five, the same on both
/// sides whichever order the keys are given in.
pub fn safety_number(a: &AccountKey, b: &AccountKey) -> String {
    let mut halves = [side_digits(a), side_digits(b)];
    halves.sort();
    let digits = halves.concat();
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn side_digits(key: &AccountKey) -> String {
    let mut hash: Vec<u8> = Sha512::new()
        .chain_update(b"sotto/safety-number/v1")
        .chain_update(key.0)
        .finalize()
        .to_vec();
    for _ in 0..SAFETY_ITERATIONS {
        hash = Sha512::new()
            .chain_update(&hash)
            .chain_update(key.0)
            .finalize()
            .to_vec();
    }
    // Six chunks of five bytes, each reduced to five decimal digits.
    hash.chunks(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn alice() -> Identity {
        Identity::from_seed(&[1; 32])
    }
    fn bob() -> Identity {
        Identity::from_seed(&[2; 32])
    }

    #[test]
    fn address_round_trips_and_rejects_garbage() {
        let a = alice().public();
        assert_eq!(a.address().len(), 43);
        assert_eq!(AccountKey::from_address(&a.address()).unwrap(), a);
        assert!(AccountKey::from_address("not an address").is_err());
        assert!(AccountKey::from_address(&a.address()[..40]).is_err());
    }

    #[test]
    fn safety_number_is_symmetric_and_pairwise() {
        let (a, b) = (alice().public(), bob().public());
        let carol = Identity::generate(&mut StdRng::seed_from_u64(3)).public();
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_ne!(n, safety_number(&a, &carol));
        assert_eq!(n.split(' ').count(), 12);
        assert!(n
            .split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
    }

    #[test]
    fn safety_number_snapshot() {
        // A change here changes what users compare: make it a visible decision.
        let n = safety_number(&alice().public(), &bob().public());
        assert_eq!(
            n,
            "34414 85636 68278 29674 82298 35134 49215 71754 63255 51015 94792 94143"
        );
    }

    /// A vector computed by an independent implementation (protocol/vectors/vectors.py,
    /// Python's hashlib and the `cryptography` package), not by this code.
    #[test]
    fn safety_number_matches_an_independent_implementation() {
        let a = Identity::from_seed(&[3; 32]).public();
        let b = Identity::from_seed(&[4; 32]).public();
        let hex = |k: &AccountKey| k.0.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&a),
            "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1"
        );
        assert_eq!(
            hex(&b),
            "ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c"
        );
        assert_eq!(
            safety_number(&a, &b),
            "28022 46676 08221 79353 53281 19794 44764 09741 23902 60385 69723 15946"
        );
        assert_eq!(safety_number(&b, &a), safety_number(&a, &b));
    }

    #[test]
    fn fingerprint_shape() {
        let f = alice().public().fingerprint();
        assert_eq!(f.len(), 24);
        assert_ne!(f, bob().public().fingerprint());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let a = alice();
        let sig = a.sign(b"card", b"hello");
        assert!(a.public().verify(b"card", b"hello", &sig).is_ok());
        assert!(a.public().verify(b"other", b"hello", &sig).is_err());
        assert!(a.public().verify(b"card", b"hellO", &sig).is_err());
        assert!(bob().public().verify(b"card", b"hello", &sig).is_err());
    }

    #[test]
    fn secret_round_trips() {
        let a = alice();
        let b = Identity::from_seed(&a.secret_bytes());
        assert_eq!(a.public(), b.public());
    }
}
