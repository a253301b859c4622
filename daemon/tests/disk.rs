//! A full disk, with a real `sottod` whose data directory sits on a small tmpfs: writes
//! fail with a clear error, nothing stored is corrupted or lost, and the node carries on
//! once space is freed. Needs root (to mount the tmpfs), as on sotto's CI machines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{root, wait_until, Daemon};
use serde_json::json;

/// A tmpfs of `mib` MiB at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs at {}",
            dir.display()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `path` until a write fails; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    for _ in 0..10_000 {
        if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
            break;
        }
    }
    // Down to the last bytes.
    for _ in 0..100_000 {
        if f.write_all(&[0]).and_then(|_| f.sync_all()).is_err() {
            break;
        }
    }
    path
}

#[test]
#[ignore = "mounts a tmpfs, which needs root: .ci/run runs it with --ignored as root"]
fn a_full_disk_fails_writes_clearly_and_the_node_recovers_when_space_is_freed() {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(uid.trim(), "0", "mounting a tmpfs needs root");
    let root = root();
    let disk = root.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, 24);

    let mut alice = Daemon::start_node(&disk, "alice", true, &[]);
    let bob = Daemon::start(root.path(), "bob");
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    bob.send("alice", "before the disk filled");
    alice.wait_for("bob", "before the disk filled", "received");
    alice.send("bob", "from alice before");
    bob.wait_for("alice", "from alice before", "received");

    let filler = fill(&disk);

    // Alice cannot store bob's message durably: she refuses it, so it stays in bob's
    // outbox, not delivered…
    let envelope_in = |d: &Daemon| {
        d.call("node.status", json!({}))["traffic"]["envelope_in"]
            .as_u64()
            .unwrap()
    };
    let before = envelope_in(&alice);
    bob.send("alice", "while the disk is full");
    wait_until(
        Duration::from_secs(30),
        "bob's attempt to reach alice",
        || (envelope_in(&alice) > before).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let waiting = bob.messages("alice");
    let waiting = waiting
        .iter()
        .find(|m| m["text"] == "while the disk is full")
        .unwrap();
    assert_ne!(waiting["state"], "delivered", "{waiting}");
    // … and a send says why it failed.
    let err = alice
        .try_call("message.send", json!({ "to": "bob", "text": "no room" }))
        .unwrap_err();
    let message = err["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("storage") || message.contains("space"),
        "{err}"
    );
    assert!(alice.is_running(), "the daemon survives a full disk");
    assert!(alice.call("node.status", json!({}))["peer_id"].is_string());

    // Space comes back: everything that waited arrives, once, and alice can write again.
    std::fs::remove_file(&filler).unwrap();
    alice.wait_for("bob", "while the disk is full", "received");
    alice.send("bob", "after the disk emptied");
    bob.wait_for("alice", "after the disk emptied", "received");

    // Nothing stored before was lost or damaged: restart and read it all back.
    alice.stop();
    alice.restart();
    let texts: Vec<String> = alice
        .messages("bob")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "before the disk filled",
        "from alice before",
        "while the disk is full",
        "after the disk emptied",
    ] {
        assert_eq!(
            texts.iter().filter(|x| *x == t).count(),
            1,
            "{t}: {texts:?}"
        );
    }
    assert!(!texts.iter().any(|t| t == "no room"));
    wait_until(Duration::from_secs(30), "bob's outbox to empty", || {
        (bob.outbox() == 0).then_some(())
    });
    alice.stop();
}
