//! Attachments between real `sottod` processes: a file sent to an online contact arrives
//! byte for byte, with its type found from its bytes; a download interrupted by SIGKILL
//! resumes after a restart without starting over; bad files and ids get clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{pair, root, wait_until, Daemon};
use serde_json::{json, Value};

/// A file of `size` bytes that no run of chunks repeats in; PNG's signature in front when
/// `png`.
fn write_file(dir: &Path, name: &str, size: usize, png: bool) -> PathBuf {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    if png {
        let sig = [
            0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, b'I', b'H', b'D', b'R',
        ];
        data[..sig.len()].copy_from_slice(&sig);
    }
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

/// The attachment of message `id` as `d` shows it.
fn attachment(d: &Daemon, id: &str) -> Value {
    d.call("attachment.get", json!({ "id": id }))
}

/// Bytes of chunks `d` served so far.
fn served(d: &Daemon) -> u64 {
    d.call("node.status", json!({}))["traffic"]["blob_out"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_file_sent_to_an_online_contact_arrives_intact() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let file = write_file(root.path(), "holiday.png", 3 * 1024 * 1024 + 123, true);
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "the beach", "file": file }),
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let mine = &sent["attachments"][0];
    assert_eq!(mine["name"], "holiday.png", "{sent}");
    assert_eq!(mine["mime"], "image/png", "{sent}");
    assert_eq!(mine["state"], "complete", "{sent}");
    // Bob's daemon downloads it by itself (under auto_download_bytes).
    let got = wait_until(Duration::from_secs(60), "bob's download", || {
        let m = bob.wait_for("alice", "the beach", "received");
        (m["attachments"][0]["state"] == "complete").then_some(m)
    });
    let a = &got["attachments"][0];
    assert_eq!(a["size"], 3 * 1024 * 1024 + 123);
    assert_eq!(a["mime"], "image/png");
    assert_eq!(a["kind"], "file");
    let path = PathBuf::from(a["path"].as_str().unwrap());
    assert!(path.starts_with(&bob.data_dir), "{path:?}");
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
    // A copy elsewhere, never over an existing file.
    let out = root.path().join("copy.png");
    bob.call("attachment.get", json!({ "id": &id[..8], "out": out }));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    let again = bob.try_call("attachment.get", json!({ "id": id, "out": out }));
    let e = again.unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("exists"), "{e}");
    // The same file sent again is a new blob, under a new key.
    let twice = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "again", "file": file }),
    );
    let m2 = wait_until(Duration::from_secs(60), "the second download", || {
        let m = bob.wait_for("alice", "again", "received");
        (m["attachments"][0]["state"] == "complete").then_some(m)
    });
    assert_ne!(twice["id"], sent["id"]);
    let second = PathBuf::from(m2["attachments"][0]["path"].as_str().unwrap());
    assert_ne!(
        second, path,
        "a second file with the same name gets its own"
    );
    assert_eq!(
        std::fs::read(&second).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[test]
fn a_download_killed_half_way_resumes_after_a_restart() {
    let root = root();
    let alice = Daemon::start(root.path(), "alice");
    // Bob downloads nothing by himself: the test starts the download.
    let mut bob = Daemon::start_with(root.path(), "bob", &["--auto-download-bytes", "0"]);
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    let size = 40 * 1024 * 1024;
    let file = write_file(root.path(), "film.bin", size, false);
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "the film", "file": file }),
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let m = bob.wait_for("alice", "the film", "received");
    assert_eq!(m["attachments"][0]["state"], "pending", "{m}");
    assert_eq!(m["attachments"][0]["mime"], "application/octet-stream");
    assert_eq!(attachment(&bob, &id)["state"], "downloading");
    // SIGKILL once between a third and two thirds of it is on disk.
    let at_kill = wait_until(Duration::from_secs(120), "a third of the file", || {
        let received = attachment(&bob, &id)["received"].as_u64().unwrap();
        (received >= size as u64 / 3).then_some(received)
    });
    bob.kill();
    assert!(
        at_kill < size as u64,
        "the download finished before the kill: nothing to resume"
    );
    let before_restart = served(&alice);
    bob.restart();
    let done = wait_until(Duration::from_secs(180), "the rest of the file", || {
        let a = attachment(&bob, &id);
        (a["state"] == "complete").then_some(a)
    });
    let resent = served(&alice) - before_restart;
    println!("killed at {at_kill} of {size} bytes; after the restart alice served {resent} bytes");
    assert!(
        resent < size as u64 - at_kill / 2,
        "the download started over: {resent} bytes after the restart"
    );
    let path = PathBuf::from(done["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
    assert!(
        std::fs::read_dir(bob.data_dir.join("blobs/partial"))
            .unwrap()
            .next()
            .is_none(),
        "no partial file is left"
    );
}

#[test]
fn bad_files_and_ids_get_clear_errors_and_change_nothing() {
    let root = root();
    let (alice, _bob) = pair(root.path());
    let error = |r: Result<Value, Value>| -> (i64, String) {
        let e = r.unwrap_err();
        (
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap().to_owned(),
        )
    };
    let missing = root.path().join("no-such-file");
    let (code, msg) =
        error(alice.try_call("message.send", json!({ "to": "bob", "file": missing })));
    assert_eq!(code, -32602);
    assert!(msg.contains("cannot read"), "{msg}");
    let (_, msg) =
        error(alice.try_call("message.send", json!({ "to": "bob", "file": root.path() })));
    assert!(msg.contains("not a regular file"), "{msg}");
    let file = write_file(root.path(), "a.txt", 10, false);
    let (code, msg) = error(alice.try_call(
        "message.send",
        json!({ "to": "bob", "file": file, "kind": "video" }),
    ));
    assert_eq!(code, -32602);
    assert!(msg.contains("kind"), "{msg}");
    let (code, msg) = error(alice.try_call("attachment.get", json!({ "id": "abcdef12" })));
    assert_eq!(code, -32602);
    assert!(msg.contains("no attachment"), "{msg}");
    assert!(alice.messages("bob").is_empty(), "nothing was sent");
    // Over the limit: refused before anything is sealed.
    let small = Daemon::start_with(root.path(), "carol", &["--max-attachment-bytes", "1000"]);
    small.init();
    small.add(&alice);
    let big = write_file(root.path(), "big.bin", 1001, false);
    let (code, msg) = error(small.try_call("message.send", json!({ "to": "alice", "file": big })));
    assert_eq!(code, -32602);
    assert!(msg.contains("too large"), "{msg}");
    assert!(small.messages("alice").is_empty());
}

#[test]
fn a_file_sent_while_the_contact_is_away_arrives_after_the_sender_left_too() {
    let root = root();
    // The test is about where the chunks wait, not about relays' rate limits.
    let extra = ["--rate-onion", "1000000"];
    let hub = Daemon::start_node(root.path(), "hub", false, &extra);
    let _hosts: Vec<Daemon> = (0..3)
        .map(|i| Daemon::join(root.path(), &format!("host{i}"), &hub, &extra))
        .collect();
    let mut alice = Daemon::join(root.path(), "alice", &hub, &extra);
    let mut bob = Daemon::join(root.path(), "bob", &hub, &extra);
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    alice.send("bob", "hello bob");
    bob.wait_for("alice", "hello bob", "received");
    for d in [&alice, &bob] {
        wait_until(Duration::from_secs(60), "outboxes to empty", || {
            (d.outbox() == 0).then_some(())
        });
    }
    bob.stop();
    let size = 20 * 1024 * 1024;
    let file = write_file(root.path(), "report.pdf", size, false);
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "while you were away", "file": file }),
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    wait_until(
        Duration::from_secs(300),
        "the file at the mailbox hosts",
        || {
            let a = attachment(&alice, &id);
            (a["on_hosts"] == true).then_some(())
        },
    );
    wait_until(Duration::from_secs(120), "the message at the hosts", || {
        alice
            .messages("bob")
            .iter()
            .any(|m| m["id"] == id.as_str() && m["state"] == "on_hosts")
            .then_some(())
    });
    assert!(alice.stop().success());
    bob.restart();
    let m = bob.wait_for("alice", "while you were away", "received");
    // Over the automatic limit (16 MiB): bob asks for it.
    assert_eq!(m["attachments"][0]["state"], "pending", "{m}");
    attachment(&bob, &id);
    let done = wait_until(Duration::from_secs(300), "the file from the hosts", || {
        let a = attachment(&bob, &id);
        (a["state"] == "complete").then_some(a)
    });
    let path = PathBuf::from(done["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
}

/// A measurement, run by hand (docs/benchmarks.md §6): a 100 MiB file between two daemons
/// on loopback, against a raw TCP copy of the same file on the same machine in the same
/// run, with the receiver's peak memory.
/// `cargo test --release -p sotto-daemon --test attachments measure -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_100_mib_on_loopback() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let root = root();
    let size = 100 * 1024 * 1024;
    let file = write_file(root.path(), "big.bin", size, false);
    // A raw TCP copy: read the file, send it, write it to disk on the other side.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = root.path().join("raw-copy.bin");
    let started = Instant::now();
    let receiver = {
        let out = out.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut f = std::fs::File::create(&out).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                f.write_all(&buf[..n]).unwrap();
            }
            f.sync_all().unwrap();
        })
    };
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut f = std::fs::File::open(&file).unwrap();
        std::io::copy(&mut f, &mut s).unwrap();
    }
    receiver.join().unwrap();
    let raw = started.elapsed();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size as u64);

    let alice = Daemon::start(root.path(), "alice");
    let bob = Daemon::start_with(root.path(), "bob", &["--auto-download-bytes", "200000000"]);
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    alice.send("bob", "hello");
    bob.wait_for("alice", "hello", "received");
    let idle_rss = bob.rss_kib().unwrap();
    let started = Instant::now();
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "big", "file": file }),
    );
    let sealed = started.elapsed();
    let id = sent["id"].as_str().unwrap().to_owned();
    let mut peak = 0;
    let done = loop {
        peak = peak.max(bob.rss_kib().unwrap_or(0));
        if let Ok(a) = bob.try_call("attachment.get", json!({ "id": id })) {
            if a["state"] == "complete" {
                break a;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "too slow");
        std::thread::sleep(Duration::from_millis(20));
    };
    let total = started.elapsed();
    let transfer = total - sealed;
    let path = PathBuf::from(done["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size as u64);
    let mib = size as f64 / (1024.0 * 1024.0);
    println!(
        "raw TCP copy: {:.2} s ({:.0} MiB/s); sotto: sealing {:.2} s, then message and \
         transfer {:.2} s ({:.0} MiB/s), {:.2} s in all ({:.0} MiB/s; {:.2}x the raw copy); \
         bob's memory: {} MiB idle, {} MiB at most during the transfer",
        raw.as_secs_f64(),
        mib / raw.as_secs_f64(),
        sealed.as_secs_f64(),
        transfer.as_secs_f64(),
        mib / transfer.as_secs_f64(),
        total.as_secs_f64(),
        mib / total.as_secs_f64(),
        raw.as_secs_f64() / total.as_secs_f64(),
        idle_rss / 1024,
        peak / 1024
    );
}

#[test]
fn a_file_deleted_for_everyone_is_gone_from_the_receivers_disk() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let file = write_file(root.path(), "secret.bin", 200 * 1024, false);
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "oops", "file": file }),
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let got = wait_until(Duration::from_secs(60), "bob's download", || {
        let a = bob.try_call("attachment.get", json!({ "id": id })).ok()?;
        (a["state"] == "complete").then_some(a)
    });
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert!(path.exists());
    alice.call(
        "message.delete",
        json!({ "chat": "bob", "id": id, "for_everyone": true }),
    );
    wait_until(Duration::from_secs(60), "the file gone at bob", || {
        (!path.exists()).then_some(())
    });
    let m = bob.wait_for("alice", "", "received");
    assert_eq!(m["deleted"], true, "{m}");
    assert_eq!(m["attachments"], json!([]), "{m}");
    let left = bob.try_call("attachment.get", json!({ "id": id }));
    assert!(left.is_err(), "{left:?}");
    // Alice's sealed copy is no longer offered either.
    let sent_dir = alice.data_dir.join("blobs/sent");
    assert_eq!(std::fs::read_dir(sent_dir).unwrap().count(), 0);
}

#[test]
fn a_disappearing_file_is_erased_from_both_disks() {
    let root = root();
    let (alice, bob) = pair(root.path());
    alice.call("chat.disappearing", json!({ "chat": "bob", "seconds": 15 }));
    let file = write_file(root.path(), "brief.bin", 300 * 1024, false);
    let sent = alice.call(
        "message.send",
        json!({ "to": "bob", "text": "for a moment", "file": file }),
    );
    assert!(!sent["expires_at"].is_null(), "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let got = wait_until(Duration::from_secs(30), "bob's download", || {
        let a = bob.try_call("attachment.get", json!({ "id": id })).ok()?;
        (a["state"] == "complete").then_some(a)
    });
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
    wait_until(Duration::from_secs(60), "the file erased at bob", || {
        (!path.exists()).then_some(())
    });
    for d in [&alice, &bob] {
        wait_until(Duration::from_secs(30), "the message erased", || {
            d.messages(if d.name == "alice" { "bob" } else { "alice" })
                .iter()
                .all(|m| m["id"] != id.as_str())
                .then_some(())
        });
        assert!(d.try_call("attachment.get", json!({ "id": id })).is_err());
        let blobs = d.data_dir.join("blobs");
        for sub in ["sent", "partial"] {
            if let Ok(entries) = std::fs::read_dir(blobs.join(sub)) {
                assert_eq!(entries.count(), 0, "{} blobs/{sub}", d.name);
            }
        }
    }
}
