//! Two real `sottod` processes on loopback: cards, chat both ways, restarts and crashes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pair, root, run_briefly, Daemon};
use serde_json::json;

#[test]
fn chat_both_ways_and_survive_a_restart() {
    let root = root();
    let (alice, mut bob) = pair(root.path());

    let sent = alice.send("bob", "hello bob");
    assert_eq!(sent["state"], "queued");
    let got = bob.wait_for("alice", "hello bob", "received");
    assert_eq!(got["id"], sent["id"], "same message id on both sides");
    assert_eq!(got["from"], "alice");
    assert_eq!(got["direction"], "in");
    alice.wait_for("bob", "hello bob", "delivered");

    bob.send("alice", "hi alice");
    alice.wait_for("bob", "hi alice", "received");

    // Both sides compute the same safety number.
    let a = alice.call("contact.verify", json!({"contact": "bob"}));
    let b = bob.call("contact.verify", json!({"contact": "alice"}));
    assert_eq!(a["safety_number"], b["safety_number"]);

    // Restart bob: history and sessions survive.
    let before = bob.messages("alice");
    assert!(bob.stop().success(), "a clean shutdown exits 0");
    assert!(!bob.socket.exists(), "the socket is removed on shutdown");
    bob.restart();
    let after = bob.messages("alice");
    assert_eq!(before, after, "history is intact after a restart");

    alice.send("bob", "after the restart");
    bob.wait_for("alice", "after the restart", "received");
    bob.send("alice", "still decrypts");
    alice.wait_for("bob", "still decrypts", "received");
    assert_eq!(alice.messages("bob").len(), 4);
    assert_eq!(bob.messages("alice").len(), 4);
}

#[test]
fn a_message_accepted_before_sigkill_is_delivered_after_restart() {
    let root = root();
    let (mut alice, mut bob) = pair(root.path());
    bob.stop();
    let sent = alice.send("bob", "sent just before a crash");
    alice.kill();
    // Bob is still down, so nothing can take the message yet: it must be in the outbox.
    alice.restart();
    assert_eq!(
        alice.call("node.status", json!({}))["outbox"],
        1,
        "the outbox survived the crash"
    );
    bob.restart();
    let got = bob.wait_for("alice", "sent just before a crash", "received");
    assert_eq!(got["id"], sent["id"]);
    alice.wait_for("bob", "sent just before a crash", "delivered");
    // Exactly once.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(bob.messages("alice").len(), 1);
}

#[test]
fn messages_queue_while_the_contact_is_offline() {
    let root = root();
    let (alice, mut bob) = pair(root.path());
    bob.stop();
    for i in 0..5 {
        alice.send("bob", &format!("queued {i}"));
    }
    // All five wait, in the outbox or sealed on a mailbox host (here, alice's own node).
    let waiting = alice
        .messages("bob")
        .iter()
        .filter(|m| m["state"] == "queued" || m["state"] == "on_hosts")
        .count();
    assert_eq!(waiting, 5);
    bob.restart();
    // Bob writing first makes alice's node retry at once instead of after its back-off.
    bob.send("alice", "back online");
    for i in 0..5 {
        bob.wait_for("alice", &format!("queued {i}"), "received");
    }
    let texts: Vec<String> = bob
        .messages("alice")
        .iter()
        .filter(|m| m["direction"] == "in")
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("queued {i}")).collect::<Vec<_>>(),
        "in order, once each"
    );
}

#[test]
fn a_stranger_with_my_card_arrives_as_a_request() {
    let root = root();
    let alice = Daemon::start(root.path(), "alice");
    let carol = Daemon::start(root.path(), "carol");
    alice.init();
    carol.init();
    carol.add(&alice); // alice does not know carol
    carol.send("alice", "we met at the conference");
    // A stranger is named as a request, so that it can never pass for a contact.
    let got = alice.wait_for("request-carol", "we met at the conference", "received");
    assert_eq!(got["from"], "request-carol");
    let contacts = alice.call("contact.list", json!({}));
    assert_eq!(contacts[0]["name"], "request-carol");
    assert_eq!(contacts[0]["request"], true);
    // Alice can answer; adding the card turns the request into a contact.
    alice.send("request-carol", "hello carol");
    carol.wait_for("alice", "hello carol", "received");
    alice.add(&carol);
    let contacts = alice.call("contact.list", json!({}));
    assert_eq!(contacts[0]["request"], false);
    assert_eq!(contacts[0]["name"], "carol");
    assert_eq!(
        alice.messages("carol").len(),
        2,
        "the conversation follows the new name"
    );
}

#[test]
fn one_data_dir_one_daemon() {
    let root = root();
    let mut alice = Daemon::start(root.path(), "alice");
    alice.init();
    let address = alice.call("account.get", json!({}))["address"].clone();

    // Same data dir, another socket: refused with a clear message.
    let (ok, err) = run_briefly(
        std::process::Command::new(env!("CARGO_BIN_EXE_sottod"))
            .arg("--data-dir")
            .arg(&alice.data_dir)
            .arg("--socket")
            .arg(root.path().join("other.sock"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"]),
    );
    assert!(!ok);
    assert!(err.contains("already running"), "{err}");

    // Same socket, another data dir: refused too.
    let (ok, err) = run_briefly(
        std::process::Command::new(env!("CARGO_BIN_EXE_sottod"))
            .arg("--data-dir")
            .arg(root.path().join("other"))
            .arg("--socket")
            .arg(&alice.socket)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"]),
    );
    assert!(!ok);
    assert!(err.contains("control socket"), "{err}");

    // Same port, another data dir and socket: refused (libp2p's SO_REUSEPORT would
    // otherwise let both listen and split the connections between them).
    let (ok, err) = run_briefly(
        std::process::Command::new(env!("CARGO_BIN_EXE_sottod"))
            .arg("--data-dir")
            .arg(root.path().join("third"))
            .arg("--socket")
            .arg(root.path().join("third.sock"))
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{}", alice.port)]),
    );
    assert!(!ok);
    assert!(err.contains("another sottod"), "{err}");

    // The first daemon is untouched.
    assert!(alice.is_running());
    assert_eq!(alice.call("account.get", json!({}))["address"], address);

    // A socket left behind by a killed daemon is cleaned up on the next start.
    alice.kill();
    assert!(alice.socket.exists());
    alice.restart();
    assert_eq!(alice.call("account.get", json!({}))["address"], address);
}

#[test]
fn control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = root();
    let alice = Daemon::start(root.path(), "alice");
    let mode = std::fs::metadata(&alice.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&alice.data_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}
