//! Where the daemon's control socket is when neither `--socket` nor `SOTTO_SOCKET` says.
//!
//! The resolution must be the daemon's own (`sotto_daemon::config::default_socket`), so that
//! `sotto` finds a `sottod` started with the same environment:
//! `$XDG_RUNTIME_DIR/sotto/sottod.sock`, or `/tmp/sotto-$UID/sottod.sock` when
//! `XDG_RUNTIME_DIR` is unset or empty.

use std::ffi::OsString;
use std::path::PathBuf;

/// The default control socket path for this process's environment.
pub fn default_socket() -> PathBuf {
    socket_for(std::env::var_os("XDG_RUNTIME_DIR"), current_uid())
}

/// The default socket path given the value of `XDG_RUNTIME_DIR` and the user's uid.
fn socket_for(runtime_dir: Option<OsString>, uid: u32) -> PathBuf {
    match runtime_dir.filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sotto").join("sottod.sock"),
        None => PathBuf::from(format!("/tmp/sotto-{uid}")).join("sottod.sock"),
    }
}

/// The uid of this process, read the way the daemon reads it (without unsafe code):
/// `/proc/self` is owned by the process's user.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_wins() {
        assert_eq!(
            socket_for(Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/sotto/sottod.sock")
        );
    }

    #[test]
    fn unset_or_empty_runtime_dir_falls_back_to_tmp() {
        let expected = PathBuf::from("/tmp/sotto-1234/sottod.sock");
        assert_eq!(socket_for(None, 1234), expected);
        assert_eq!(socket_for(Some(OsString::new()), 1234), expected);
    }
}
