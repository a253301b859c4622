//! `sotto_protocol::codec`: any bytes decode to a value or an error within the limit, and a
//! decoded value re-encodes, within the same limit, to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use sotto_protocol::codec;

/// Every serde shape sotto's formats use: varints of each width, fixed arrays, byte and
/// string lengths, options, bools, enum tags, tuples and nested sequences.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    small: u8,
    medium: u32,
    large: u64,
    key: [u8; 32],
    bytes: Vec<u8>,
    text: String,
    maybe: Option<Vec<u8>>,
    flag: bool,
    kind: Kind,
    nested: Vec<Vec<u8>>,
    pair: Option<(Vec<u8>, Vec<String>)>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Tuple(u8),
    Struct { a: u64, b: Option<[u8; 32]> },
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the limit, so that both the length check before parsing and
    // bincode's own limit while parsing are reached.
    let Some((head, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = u64::from(u16::from_le_bytes(*head));
    let Ok(value) = codec::decode_limited::<Sample>(body, limit) else {
        return;
    };
    assert!(body.len() as u64 <= limit, "decoded past the limit");
    // bincode 1.3.3 accepts non-minimal varints, so the re-encoding may be shorter than the
    // input, never longer; it must fit the limit the input was accepted under.
    let encoded = codec::encode_limited(&value, limit);
    assert!(
        matches!(&encoded, Ok(e) if e.len() <= body.len()),
        "a decoded value does not re-encode within its limit: {encoded:?}"
    );
    let again = encoded
        .ok()
        .map(|e| codec::decode_limited::<Sample>(&e, limit));
    assert!(
        matches!(&again, Some(Ok(v)) if *v == value),
        "re-encoding does not decode to the same value: {again:?}"
    );
});
