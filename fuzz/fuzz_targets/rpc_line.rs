//! The control socket's request framing (`sotto_daemon::rpc::read_line`) and the JSON parse
//! of each line that follows it. Whatever a client writes, every line comes back without its
//! newline, within `MAX_LINE`, and the lines put back together are the input; a line longer
//! than `MAX_LINE` is an error, not an allocation.
//!
//! The checks after the JSON parse (`jsonrpc`, `method`, `id`) live in `rpc::handle_line`,
//! which needs a running `Service`; they are not reached here.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sotto_daemon::rpc::{read_line, MAX_LINE};
use tokio::io::BufReader;
use tokio::runtime::Runtime;

fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Builder::new_current_thread().build().ok())
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some((cap, input)) = data.split_first() else {
        return;
    };
    let Some(rt) = runtime() else {
        return;
    };
    // A small read buffer, chosen by the input, so that lines straddle buffer boundaries.
    let capacity = usize::from(*cap % 64) + 1;
    rt.block_on(async {
        let mut reader = BufReader::with_capacity(capacity, input);
        let mut buf = Vec::new();
        let mut rebuilt = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf).await {
                Ok(Some(())) => {
                    assert!(buf.len() <= MAX_LINE, "a line over MAX_LINE");
                    assert!(!buf.contains(&b'\n'), "a line with its newline");
                    let _ = serde_json::from_slice::<serde_json::Value>(&buf);
                    rebuilt.extend_from_slice(&buf);
                    rebuilt.push(b'\n');
                }
                Ok(None) => break,
                Err(too_long) => {
                    // Reading a slice cannot fail, so only a line over the limit ends here.
                    assert!(too_long, "an I/O error reading a slice");
                    return;
                }
            }
        }
        // The last line may lack its newline.
        if !input.ends_with(b"\n") {
            rebuilt.pop();
        }
        assert_eq!(rebuilt, input, "the lines are not the input");
    });
});
