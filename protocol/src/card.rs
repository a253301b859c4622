//! Contact cards: the signed, shareable blob that lets someone start a chat with a user.
//!
//! A card binds the account key to the keys a sender needs — the Olm identity key and a
//! reusable fallback key for the pairwise ratchet, the static key for sealed envelopes — and
//! to optional reachability hints (PeerId and addresses). It is printed as a `sotto:` URI:
//! `sotto:` followed by the unpadded base64url of `[version][bincode(card::Body)][signature]`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::identity::{AccountKey, Identity, KeyError};

/// The card format this code writes and the newest it reads.
pub const VERSION: u8 = 1;
/// The URI scheme of a printed card.
pub const URI_SCHEME: &str = "sotto:";
/// The largest encoded card accepted, in bytes.
pub const MAX_BYTES: usize = 2048;
/// The longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// At most this many address hints, each at most [`MAX_ADDR_LEN`] bytes.
pub const MAX_ADDRS: usize = 8;
pub const MAX_ADDR_LEN: usize = 256;

const SIGNING_DOMAIN: &[u8] = b"sotto/card/v1";

/// Why a card was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("a card starts with {URI_SCHEME:?}")]
    NotACard,
    #[error("the card is not valid base64url; was it cut off when copied?")]
    BadText,
    #[error("the card is too large: limit {limit} bytes, got {got}")]
    TooLarge { limit: usize, got: usize },
    #[error("the card is truncated")]
    Truncated,
    #[error(
        "card version {got} is newer than this sotto understands (up to {known}); update sotto"
    )]
    UnsupportedVersion { got: u8, known: u8 },
    #[error("the card is malformed: {0}")]
    Malformed(#[from] CodecError),
    #[error("the card's signature does not match its account key: it was altered or forged")]
    BadSignature,
    #[error("the card is invalid: {0}")]
    Invalid(&'static str),
}

/// Where the card's owner may be reached directly. Optional, and opt-in once mailboxes exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hints {
    /// The libp2p PeerId, in its binary form.
    pub peer_id: Option<Vec<u8>>,
    /// Multiaddresses, as text.
    pub addrs: Vec<String>,
}

/// What a card says; the signature covers exactly its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub account: AccountKey,
    pub name: String,
    /// The Olm (Curve25519) identity key of the owner's device.
    pub session_key: [u8; 32],
    /// The owner's current Olm fallback key, usable by any number of senders.
    pub fallback_key: [u8; 32],
    /// The X25519 static key sealed envelopes are addressed to.
    pub seal_key: [u8; 32],
    /// The public key of the owner's intro dead drop, where first messages are deposited.
    pub intro: [u8; 32],
    pub hints: Hints,
    /// When the card was issued, in milliseconds since the Unix epoch; the newer card wins.
    pub issued_at: u64,
}

/// A signed contact card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    body: Body,
    signature: [u8; 64],
}

impl Card {
    /// Sign `body` with `identity`. The body's account key must be the identity's.
    pub fn sign(identity: &Identity, body: Body) -> Result<Card, CardError> {
        if body.account != identity.public() {
            return Err(CardError::Invalid(
                "the card's account key is not the signer's",
            ));
        }
        check_body(&body)?;
        let encoded = codec::encode_limited(&body, MAX_BYTES as u64)?;
        let signature = identity.sign(SIGNING_DOMAIN, &encoded);
        Ok(Card { body, signature })
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    pub fn account(&self) -> AccountKey {
        self.body.account
    }

    /// The binary form: version byte, body, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding a body that `sign` or `from_bytes` accepted cannot fail or exceed the limit.
        let body = codec::encode(&self.body).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + body.len() + 64);
        out.push(VERSION);
        out.extend_from_slice(&body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parse and verify the binary form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Card, CardError> {
        if bytes.len() > MAX_BYTES {
            return Err(CardError::TooLarge {
                limit: MAX_BYTES,
                got: bytes.len(),
            });
        }
        let (version, rest) = bytes.split_first().ok_or(CardError::Truncated)?;
        if *version > VERSION {
            return Err(CardError::UnsupportedVersion {
                got: *version,
                known: VERSION,
            });
        }
        if *version == 0 {
            return Err(CardError::Invalid("version 0"));
        }
        if rest.len() < 64 {
            return Err(CardError::Truncated);
        }
        let (body_bytes, sig) = rest.split_at(rest.len() - 64);
        let body: Body = codec::decode_limited(body_bytes, MAX_BYTES as u64)?;
        // The signature covers the bytes as received, and a card is stored and sent on as it
        // re-encodes: a body written in another form than the codec's own (an integer in
        // more bytes than it needs, say) would pass here and fail at its next use.
        if codec::encode(&body).ok().as_deref() != Some(body_bytes) {
            return Err(CardError::Invalid("the body is not in canonical form"));
        }
        body.account
            .verify(SIGNING_DOMAIN, body_bytes, sig)
            .map_err(|e| match e {
                KeyError::InvalidKey => CardError::Invalid("the account key is not a valid key"),
                _ => CardError::BadSignature,
            })?;
        check_body(&body)?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig);
        Ok(Card { body, signature })
    }

    /// The `sotto:` URI.
    pub fn to_uri(&self) -> String {
        format!("{URI_SCHEME}{}", URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }

    /// Parse and verify a `sotto:` URI. Surrounding whitespace is ignored.
    pub fn from_uri(uri: &str) -> Result<Card, CardError> {
        let text = uri
            .trim()
            .strip_prefix(URI_SCHEME)
            .ok_or(CardError::NotACard)?;
        // base64 expands 3 bytes to 4 characters.
        if text.len() > MAX_BYTES * 4 / 3 + 4 {
            return Err(CardError::TooLarge {
                limit: MAX_BYTES,
                got: text.len() * 3 / 4,
            });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CardError::BadText)?;
        Card::from_bytes(&bytes)
    }
}

fn check_body(body: &Body) -> Result<(), CardError> {
    if body.name.chars().count() > MAX_NAME_CHARS {
        return Err(CardError::Invalid("display name longer than 64 characters"));
    }
    if body.name.chars().any(char::is_control) {
        return Err(CardError::Invalid(
            "display name contains control characters",
        ));
    }
    if body.hints.addrs.len() > MAX_ADDRS {
        return Err(CardError::Invalid("more than 8 address hints"));
    }
    if body.hints.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
        return Err(CardError::Invalid("an address hint longer than 256 bytes"));
    }
    if body.hints.peer_id.as_ref().is_some_and(|p| p.len() > 128) {
        return Err(CardError::Invalid("a PeerId hint longer than 128 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alice() -> Identity {
        Identity::from_seed(&[7; 32])
    }

    fn body(id: &Identity) -> Body {
        Body {
            account: id.public(),
            name: "Alice".into(),
            session_key: [1; 32],
            fallback_key: [2; 32],
            seal_key: [3; 32],
            intro: [4; 32],
            hints: Hints {
                peer_id: Some(vec![0, 36, 8, 1]),
                addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            },
            issued_at: 1_700_000_000_000,
        }
    }

    fn card() -> Card {
        Card::sign(&alice(), body(&alice())).unwrap()
    }

    #[test]
    fn uri_round_trips() {
        let c = card();
        let uri = c.to_uri();
        assert!(uri.starts_with("sotto:"));
        assert_eq!(Card::from_uri(&format!("  {uri}\n")).unwrap(), c);
    }

    #[test]
    fn snapshot_of_encoding() {
        // The first bytes: version 1, then the account key (32 bytes, no length prefix).
        let bytes = card().to_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &alice().public().0);
        // name: varint length 5, "Alice"
        assert_eq!(&bytes[33..39], b"\x05Alice");
        assert_eq!(
            bytes.len(),
            1 + 32 + 6 + 128 + 1 + 1 + 4 + 1 + 1 + 23 + 9 + 64
        );
    }

    #[test]
    fn tampered_card_is_rejected() {
        let mut bytes = card().to_bytes();
        bytes[35] ^= 1; // a letter of the name
        assert!(matches!(
            Card::from_bytes(&bytes),
            Err(CardError::BadSignature)
        ));
    }

    #[test]
    fn foreign_and_truncated_cards_are_rejected() {
        let uri = card().to_uri();
        assert!(matches!(
            Card::from_uri("https://example.com"),
            Err(CardError::NotACard)
        ));
        assert!(matches!(
            Card::from_uri("sotto:!!!"),
            Err(CardError::BadText)
        ));
        assert!(Card::from_uri(&uri[..uri.len() - 10]).is_err());
        assert!(matches!(Card::from_bytes(&[]), Err(CardError::Truncated)));
    }

    #[test]
    fn a_validly_signed_body_in_a_non_canonical_form_is_refused() {
        // The name length 5 written in three bytes (bincode's u16 form) instead of one: the
        // codec reads it, but the card would re-encode to other bytes than were signed.
        let canonical = codec::encode(&body(&alice())).unwrap();
        assert_eq!(canonical[32], 5);
        let mut stretched = canonical[..32].to_vec();
        stretched.extend_from_slice(&[0xfb, 5, 0]);
        stretched.extend_from_slice(&canonical[33..]);
        let signature = alice().sign(SIGNING_DOMAIN, &stretched);
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&stretched);
        bytes.extend_from_slice(&signature);
        assert!(matches!(
            Card::from_bytes(&bytes),
            Err(CardError::Invalid(_))
        ));
        // Signed in canonical form, the same body is a card.
        let signature = alice().sign(SIGNING_DOMAIN, &canonical);
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&canonical);
        bytes.extend_from_slice(&signature);
        assert_eq!(Card::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    }

    #[test]
    fn newer_version_is_refused_clearly() {
        let mut bytes = card().to_bytes();
        bytes[0] = 9;
        assert!(matches!(
            Card::from_bytes(&bytes),
            Err(CardError::UnsupportedVersion { got: 9, known: 1 })
        ));
    }

    #[test]
    fn signing_someone_elses_body_is_refused() {
        let other = Identity::from_seed(&[8; 32]);
        assert!(Card::sign(&other, body(&alice())).is_err());
    }

    #[test]
    fn oversize_fields_are_refused() {
        let mut b = body(&alice());
        b.hints.addrs = vec!["/ip4/1.2.3.4/tcp/1".into(); 9];
        assert!(Card::sign(&alice(), b).is_err());
        let mut b = body(&alice());
        b.name = "x".repeat(65);
        assert!(Card::sign(&alice(), b).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Card::from_bytes(&bytes);
        }

        #[test]
        fn any_bit_flip_is_detected(pos in 0usize..240, bit in 0u8..8) {
            let mut bytes = card().to_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            prop_assert!(Card::from_bytes(&bytes).is_err());
        }

        #[test]
        fn round_trip(name in "[a-zA-Z ]{0,64}", issued_at in any::<u64>(), addrs in proptest::collection::vec("[a-z0-9/.]{1,40}", 0..8)) {
            let mut b = body(&alice());
            b.name = name;
            b.issued_at = issued_at;
            b.hints.addrs = addrs;
            let c = Card::sign(&alice(), b).unwrap();
            prop_assert_eq!(Card::from_uri(&c.to_uri()).unwrap(), c);
        }
    }
}
