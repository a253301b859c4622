//! The `/sotto/mailbox/1` messages: `mailbox::Request::from_bytes` as a host receives it,
//! followed by the host's `Policy` (deposit, fetch, delete admission, which verifies the
//! dead-drop `Proof` and the proof-of-work stamp), and `mailbox::Response::from_bytes` as a
//! client receives it; a bare dead-drop `Proof` too. Everything accepted round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::codec;
use sotto_protocol::deaddrop::{Address, Proof};
use sotto_protocol::mailbox::{Policy, Request, Response, Usage};

const NOW: u64 = 1_800_000_000_000;
const HOST: &[u8] = b"the host's PeerId";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => request(rest),
        1 => {
            if let Ok(response) = Response::from_bytes(rest) {
                let again = response.to_bytes().map(|b| Response::from_bytes(&b));
                assert!(
                    matches!(&again, Ok(Ok(r)) if *r == response),
                    "a response does not round-trip"
                );
            }
        }
        _ => {
            // A proof as it sits inside a request: any key and signature bytes are checked
            // without panicking. (Under `cargo fuzz`, vodozemac's cfg(fuzzing) accepts every
            // signature, so whether it verifies is not asserted here.)
            if let Ok(proof) = codec::decode::<Proof>(rest) {
                let _ = proof.verify(&Address([0; 32]), b"fuzz");
                let _ = proof.verify_pairwise(&Address::of_key(&proof.key), b"fuzz");
            }
        }
    }
});

fn request(bytes: &[u8]) {
    let Ok(request) = Request::from_bytes(bytes) else {
        return;
    };
    let again = request.to_bytes().map(|b| Request::from_bytes(&b));
    assert!(
        matches!(&again, Ok(Ok(r)) if *r == request),
        "a request does not round-trip"
    );
    // Difficulty 0, so that a stamp passes and the quota checks behind it are reached too.
    let policy = Policy {
        stamp_difficulty: 0,
        ..Policy::default()
    };
    match &request {
        Request::Deposit(d) => {
            if let Ok(until) = policy.admit_deposit(d, &Usage::default(), NOW) {
                assert!(until > NOW && until <= NOW + policy.ttl_ms);
                assert!(until <= d.expires_at);
            }
        }
        Request::Fetch(f) => {
            let _ = policy.admit_fetch(f, HOST, NOW);
        }
        Request::Delete(d) => {
            let _ = policy.admit_delete(d, HOST, NOW);
        }
    }
}
