//! Sealed envelopes: what crosses the wire and rests on disk.
//!
//! An envelope is one Noise `X` handshake message (`Noise_X_25519_ChaChaPoly_BLAKE2s`) from
//! the sender's static seal key to the recipient's, behind a version byte, padded so that
//! the whole envelope is exactly one of the [`crate::padding::BUCKETS`] sizes. The Noise `X`
//! pattern encrypts the sender's static key under an ephemeral key, so the envelope shows
//! neither who sent it nor who it is for, while the recipient learns and authenticates the
//! sender's seal key. Inside is a [`Letter`]: the sender's account key, its card on pre-key
//! messages (so that a first message can be answered), and the Olm ciphertext.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey};
use zeroize::Zeroizing;

use crate::codec::{self, CodecError};
use crate::identity::AccountKey;
use crate::padding;
use crate::session::Ciphertext;

/// The envelope format this code writes and reads.
pub const VERSION: u8 = 1;
/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake, so that an envelope is never valid in another protocol.
const PROLOGUE: &[u8] = b"sotto/envelope/v1";
/// Bytes the Noise `X` message adds to its payload: ephemeral key, encrypted static key with
/// its tag, and the payload's tag.
pub const NOISE_OVERHEAD: usize = 32 + 32 + 16 + 16;
/// The largest envelope, in bytes.
pub const MAX_BYTES: usize = padding::BUCKETS[padding::BUCKETS.len() - 1];
/// The largest letter that fits in an envelope.
pub const MAX_LETTER_BYTES: usize = MAX_BYTES - 1 - NOISE_OVERHEAD - 4;

/// Why an envelope could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("the message is too large for an envelope: limit {limit} bytes, got {got}")]
    TooLarge { limit: usize, got: usize },
    #[error("an envelope is one of the padding sizes; got {got} bytes")]
    BadSize { got: usize },
    #[error("envelope version {got} is not one this sotto understands ({known})")]
    UnsupportedVersion { got: u8, known: u8 },
    #[error("the envelope does not open with this node's key: {0}")]
    Unopenable(String),
    #[error("the envelope's padding is invalid")]
    BadPadding,
    #[error("the letter inside is malformed: {0}")]
    Malformed(#[from] CodecError),
    #[error("noise: {0}")]
    Noise(String),
}

/// An X25519 key pair for sealed envelopes. Neither `Debug` nor `Serialize`.
pub struct SealKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl SealKey {
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let public = Curve25519PublicKey::from(&Curve25519SecretKey::from_slice(secret)).to_bytes();
        SealKey {
            secret: Zeroizing::new(*secret),
            public,
        }
    }

    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        Self::from_secret(&secret)
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }
}

fn params() -> Result<snow::params::NoiseParams, EnvelopeError> {
    NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| EnvelopeError::Noise(e.to_string()))
}

fn noise(e: snow::Error) -> EnvelopeError {
    EnvelopeError::Noise(e.to_string())
}

/// Seal `payload` from `sender` to the holder of `recipient`, padded to a bucket size.
pub fn seal(
    sender: &SealKey,
    recipient: &[u8; 32],
    payload: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if payload.len() > MAX_LETTER_BYTES {
        return Err(EnvelopeError::TooLarge {
            limit: MAX_LETTER_BYTES,
            got: payload.len(),
        });
    }
    let total = padding::bucket_for(1 + NOISE_OVERHEAD + 4 + payload.len()).ok_or(
        EnvelopeError::TooLarge {
            limit: MAX_LETTER_BYTES,
            got: payload.len(),
        },
    )?;
    let padded =
        padding::pad_to(payload, total - 1 - NOISE_OVERHEAD).ok_or(EnvelopeError::TooLarge {
            limit: MAX_LETTER_BYTES,
            got: payload.len(),
        })?;
    let mut hs = snow::Builder::new(params()?)
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(sender.secret.as_ref()))
        .and_then(|b| b.remote_public_key(recipient))
        .and_then(|b| b.build_initiator())
        .map_err(noise)?;
    let mut out = vec![0u8; total];
    out[0] = VERSION;
    let n = hs.write_message(&padded, &mut out[1..]).map_err(noise)?;
    debug_assert_eq!(n + 1, total);
    out.truncate(n + 1);
    Ok(out)
}

/// What [`open`] found inside an envelope.
pub struct Opened {
    /// The sender's static seal key, authenticated by the handshake.
    pub sender: [u8; 32],
    pub payload: Vec<u8>,
}

/// Open an envelope addressed to `recipient`.
pub fn open(recipient: &SealKey, envelope: &[u8]) -> Result<Opened, EnvelopeError> {
    if !padding::is_bucket(envelope.len()) {
        return Err(EnvelopeError::BadSize {
            got: envelope.len(),
        });
    }
    let (version, message) = envelope
        .split_first()
        .ok_or(EnvelopeError::BadSize { got: 0 })?;
    if *version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion {
            got: *version,
            known: VERSION,
        });
    }
    let mut hs = snow::Builder::new(params()?)
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(recipient.secret.as_ref()))
        .and_then(|b| b.build_responder())
        .map_err(noise)?;
    let mut padded = vec![0u8; message.len()];
    let n = hs
        .read_message(message, &mut padded)
        .map_err(|e| EnvelopeError::Unopenable(e.to_string()))?;
    let sender: [u8; 32] = hs
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| EnvelopeError::Unopenable("no sender key".into()))?;
    let payload = padding::unpad(&padded[..n])
        .ok_or(EnvelopeError::BadPadding)?
        .to_vec();
    Ok(Opened { sender, payload })
}

/// A stable id for an envelope: the SHA-256 of its bytes. Used to recognise a retransmitted
/// envelope whose ratchet key is already spent.
pub fn digest(envelope: &[u8]) -> [u8; 32] {
    Sha256::digest(envelope).into()
}

/// What a sealed envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// The sender's account key; must match the card known for the sender's seal key.
    pub sender: AccountKey,
    /// The sender's card, in its binary form, sent with pre-key messages.
    pub card: Option<Vec<u8>>,
    pub ciphertext: Ciphertext,
}

impl Letter {
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = vec![VERSION];
        out.extend(codec::encode_limited(self, MAX_LETTER_BYTES as u64)?);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (version, rest) = bytes.split_first().ok_or(EnvelopeError::BadPadding)?;
        if *version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                got: *version,
                known: VERSION,
            });
        }
        Ok(codec::decode_limited(rest, MAX_LETTER_BYTES as u64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn keys() -> (SealKey, SealKey) {
        let mut rng = StdRng::seed_from_u64(1);
        (SealKey::generate(&mut rng), SealKey::generate(&mut rng))
    }

    #[test]
    fn seal_and_open() {
        let (alice, bob) = keys();
        let env = seal(&alice, &bob.public(), b"hello bob").unwrap();
        assert_eq!(env.len(), 512);
        let opened = open(&bob, &env).unwrap();
        assert_eq!(opened.sender, alice.public());
        assert_eq!(opened.payload, b"hello bob");
    }

    #[test]
    fn envelope_hides_payload_and_keys() {
        let (alice, bob) = keys();
        let env = seal(&alice, &bob.public(), b"secret words here").unwrap();
        let contains = |needle: &[u8]| env.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(b"secret words"));
        assert!(!contains(&alice.public()));
        assert!(!contains(&bob.public()));
    }

    #[test]
    fn only_the_recipient_opens_it() {
        let (alice, bob) = keys();
        let carol = SealKey::generate(&mut StdRng::seed_from_u64(9));
        let env = seal(&alice, &bob.public(), b"x").unwrap();
        assert!(matches!(
            open(&carol, &env),
            Err(EnvelopeError::Unopenable(_))
        ));
    }

    #[test]
    fn sizes_are_buckets() {
        let (alice, bob) = keys();
        for len in [0, 100, 407, 408, 1000, 5000, 20000, MAX_LETTER_BYTES] {
            let env = seal(&alice, &bob.public(), &vec![7u8; len]).unwrap();
            assert!(padding::is_bucket(env.len()), "{len} -> {}", env.len());
            assert_eq!(open(&bob, &env).unwrap().payload.len(), len);
        }
        assert!(matches!(
            seal(&alice, &bob.public(), &vec![0; MAX_LETTER_BYTES + 1]),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_version_and_size_are_refused() {
        let (alice, bob) = keys();
        let mut env = seal(&alice, &bob.public(), b"x").unwrap();
        assert!(matches!(
            open(&bob, &env[..511]),
            Err(EnvelopeError::BadSize { got: 511 })
        ));
        env[0] = 2;
        assert!(matches!(
            open(&bob, &env),
            Err(EnvelopeError::UnsupportedVersion { got: 2, .. })
        ));
    }

    #[test]
    fn letter_round_trips() {
        let letter = Letter {
            sender: AccountKey([5; 32]),
            card: Some(vec![1, 2, 3]),
            ciphertext: Ciphertext {
                kind: 0,
                body: vec![9; 40],
            },
        };
        assert_eq!(
            Letter::from_bytes(&letter.to_bytes().unwrap()).unwrap(),
            letter
        );
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_detected(pos in 0usize..512, bit in 0u8..8) {
            let (alice, bob) = keys();
            let mut env = seal(&alice, &bob.public(), b"flip me").unwrap();
            env[pos] ^= 1 << bit;
            prop_assert!(open(&bob, &env).is_err());
        }

        /// Any bytes, and (half the time) bytes of a bucket size with the current version
        /// byte, which get past the framing to the Noise open itself.
        #[test]
        fn open_never_panics(bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::collection::vec(any::<u8>(), 512..=512).prop_map(|mut v| {
                v[0] = VERSION;
                v
            }),
        ]) {
            let (_, bob) = keys();
            let _ = open(&bob, &bytes);
            let _ = Letter::from_bytes(&bytes);
        }
    }
}
