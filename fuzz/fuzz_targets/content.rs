//! `content::Content::from_bytes` (the plaintext inside a ratchet message): refuses or
//! accepts within the limits, and accepted content round-trips through `to_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::content::{
    is_reaction, Body, Content, MAX_BYTES, MAX_RECEIPT_IDS, MAX_TEXT_BYTES, MAX_TIMER_MS,
    MIN_TIMER_MS,
};

fuzz_target!(|data: &[u8]| {
    let Ok(content) = Content::from_bytes(data) else {
        return;
    };
    match &content.body {
        Body::Text(t) => assert!(t.len() <= MAX_TEXT_BYTES),
        Body::Receipt(ids) | Body::Read(ids) => assert!(ids.len() <= MAX_RECEIPT_IDS),
        Body::Post(p) => {
            assert!(p.text.len() <= MAX_TEXT_BYTES);
            assert!(p
                .expires_in_ms
                .is_none_or(|t| (MIN_TIMER_MS..=MAX_TIMER_MS).contains(&t)));
        }
        Body::Edit { text, .. } => assert!(!text.is_empty() && text.len() <= MAX_TEXT_BYTES),
        Body::React { emoji, .. } => assert!(is_reaction(emoji)),
        Body::Timer(t) => assert!(t.is_none_or(|t| (MIN_TIMER_MS..=MAX_TIMER_MS).contains(&t))),
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
