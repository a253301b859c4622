//! The daemon's TOML config file (`sotto_daemon::config::File`, as `File::load` parses it)
//! and the multiaddress lists in it (`config::parse_addrs`): any text is a config or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_daemon::config::{self, File};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<File>(text) else {
        return;
    };
    for (what, addrs) in [
        ("listen", &file.listen),
        ("bootstrap", &file.bootstrap),
        ("announce", &file.announce),
    ] {
        if let Some(addrs) = addrs {
            let _ = config::parse_addrs(what, addrs);
        }
    }
    for secs in [
        file.epoch_secs,
        file.fetch_interval_secs,
        file.mailbox_ttl_secs,
    ]
    .into_iter()
    .flatten()
    {
        let _ = config::positive_secs("secs", secs);
    }
});
