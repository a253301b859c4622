//! `card::Card::from_bytes`: refuses or accepts without panicking, and an accepted card
//! re-encodes (`to_bytes`, `to_uri`) to exactly the bytes it was parsed from, which parse back
//! to the same card.
//!
//! Under `cargo fuzz`, vodozemac is built with cfg(fuzzing) and accepts every Ed25519
//! signature, so random bytes reach the checks behind the signature; the round trip therefore
//! compares bytes, which is what keeps the signature valid outside fuzzing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::card::{self, Card};
use sotto_protocol::identity::Identity;

/// The card signing domain (private in `card.rs`). Outside cfg(fuzzing), a change there
/// would make every signed-mode input refused.
const SIGNING_DOMAIN: &[u8] = b"sotto/card/v1";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // As received from anyone: random bytes almost never carry a valid signature, so this
        // reaches the size, version, body and key checks.
        if let Ok(card) = Card::from_bytes(rest) {
            round_trip(&card, rest);
        }
    } else {
        // As written by a hostile card owner: any body bytes after its own account key,
        // validly signed, so that the checks after the signature and the re-encoding of an
        // accepted card are reached too.
        let id = Identity::from_seed(&[7; 32]);
        let mut body = id.public().0.to_vec();
        body.extend_from_slice(rest);
        let signature = id.sign(SIGNING_DOMAIN, &body);
        let mut bytes = vec![card::VERSION];
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&signature);
        if let Ok(card) = Card::from_bytes(&bytes) {
            round_trip(&card, &bytes);
        }
    }
});

/// The daemon stores a contact's card as `to_bytes()` and parses it again on every use, and
/// the signature covers the body bytes as received: an accepted card must re-encode to the
/// very bytes it came from.
fn round_trip(card: &Card, received: &[u8]) {
    assert!(
        card.to_bytes() == received,
        "an accepted card re-encodes to other bytes than it was parsed from"
    );
    let again = Card::from_bytes(&card.to_bytes());
    assert!(
        matches!(&again, Ok(c) if c == card),
        "an accepted card does not parse back from its own encoding: {again:?}"
    );
    let again = Card::from_uri(&card.to_uri());
    assert!(
        matches!(&again, Ok(c) if c == card),
        "an accepted card does not parse back from its own URI: {again:?}"
    );
}
