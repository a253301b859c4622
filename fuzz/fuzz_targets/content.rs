//! `content::Content::from_bytes` (the plaintext inside a ratchet message): refuses or
//! accepts within the limits, and accepted content round-trips through `to_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::content::{Body, Content, MAX_BYTES, MAX_RECEIPT_IDS, MAX_TEXT_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(content) = Content::from_bytes(data) else {
        return;
    };
    match &content.body {
        Body::Text(t) => assert!(t.len() <= MAX_TEXT_BYTES),
        Body::Receipt(ids) => assert!(ids.len() <= MAX_RECEIPT_IDS),
        _ => {}
    }
    let bytes = content.to_bytes();
    assert!(
        matches!(&bytes, Ok(b) if b.len() <= MAX_BYTES + 1),
        "accepted content does not re-encode within its limit: {bytes:?}"
    );
    let again = bytes.ok().map(|b| Content::from_bytes(&b));
    assert!(
        matches!(&again, Some(Ok(c)) if *c == content),
        "content does not round-trip: {again:?}"
    );
});
