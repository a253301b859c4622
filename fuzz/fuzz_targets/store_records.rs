//! Records the daemon reads back from its sled store (`sotto_daemon::store`), decoded as
//! `Store::get` decodes them (the protocol codec): contacts, messages, outbox entries, hosted
//! envelopes, usage and stats counters, what happened to a message (extras), the account
//! snapshot, the pickled sessions and attachment records. A
//! corrupt record must be an error, never a panic; a readable one re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use sotto_daemon::store::{
    AttachmentRecord, Contact, Extras, HostStats, Hosted, Message, OutboxEntry, Usage,
};
use sotto_protocol::chat::{LocalAccount, Snapshot};
use sotto_protocol::codec;
use sotto_protocol::session::Pairwise;

const PICKLE_KEY: [u8; 32] = [3; 32];

fuzz_target!(|data: &[u8]| {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 10 {
        0 => {
            let _ = record::<Contact>(rest);
        }
        1 => {
            let _ = record::<Message>(rest);
        }
        2 => {
            let _ = record::<OutboxEntry>(rest);
        }
        3 => {
            let _ = record::<Hosted>(rest);
        }
        4 => {
            let _ = record::<Usage>(rest);
        }
        5 => {
            let _ = record::<HostStats>(rest);
        }
        7 => {
            let _ = record::<Extras>(rest);
        }
        8 => {
            let _ = record::<AttachmentRecord>(rest);
        }
        6 => {
            if let Some(snapshot) = record::<Snapshot>(rest) {
                // The Olm account inside is an encrypted vodozemac pickle.
                let _ = LocalAccount::restore(&snapshot, &PICKLE_KEY);
            }
        }
        _ => {
            if let Some(pickles) = record::<Vec<String>>(rest) {
                let _ = Pairwise::from_pickle(&pickles, &PICKLE_KEY);
            }
        }
    }
});

/// Decode a record; if it decodes, its encoding decodes to a value with the same encoding
/// (the store types have no `PartialEq`, so the encodings are compared).
fn record<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(bytes).ok()?;
    let first = codec::encode(&value).ok();
    assert!(first.is_some(), "a stored record does not re-encode");
    let second = first
        .as_ref()
        .and_then(|b| codec::decode::<T>(b).ok())
        .and_then(|v| codec::encode(&v).ok());
    assert_eq!(first, second, "a stored record does not round-trip");
    Some(value)
}
