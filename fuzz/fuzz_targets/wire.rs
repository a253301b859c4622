//! `wire::Response::from_bytes`, the answer to a direct envelope delivery: refused or
//! accepted without panicking, and an accepted answer round-trips through `to_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::wire::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = Response::from_bytes(data) {
        assert_eq!(
            Response::from_bytes(&response.to_bytes()).ok(),
            Some(response)
        );
        let _ = response.is_delivered();
    }
});
