//! The `sotto` command against two real `sottod` processes, as a user would drive it.
//!
//! `sottod` is looked up next to the `sotto` binary: `cargo test --workspace` builds both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sottod_path() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_sotto")).with_file_name("sottod");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p sotto-daemon` or `cargo test --workspace`",
        path.display()
    );
    path
}

struct Node {
    socket: PathBuf,
    child: Child,
}

impl Node {
    fn start(root: &Path, name: &str, bootstrap: Option<&str>) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let socket = root.join(format!("{name}.sock"));
        let child = Command::new(sottod_path())
            .arg("--data-dir")
            .arg(root.join(name))
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
            // Cheap proof-of-work and frequent fetches keep the test quick.
            .args(["--stamp-difficulty", "8", "--fetch-interval-secs", "1"])
            .args(
                bootstrap
                    .map(|b| vec!["--bootstrap", b])
                    .unwrap_or_default(),
            )
            .env("SOTTO_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node { socket, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !node.sotto(&["--json", "status"]).status.success() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn sotto(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sotto"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.sotto(&all);
        assert!(
            out.status.success(),
            "sotto {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_text(node: &Node, contact: &str, text: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = node.json(&["messages", contact]);
        if let Some(m) = list.as_array().unwrap().iter().find(|m| m["text"] == text) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "{text:?} never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// alice's and bob's daemons in a fresh directory (kept while the test runs), bob's
/// bootstrapped to alice's.
fn two_nodes() -> (tempfile::TempDir, Node, Node) {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let alice = Node::start(root.path(), "alice", None);
    let status = alice.json(&["status"]);
    let bootstrap = format!(
        "{}/p2p/{}",
        status["listen_addrs"][0].as_str().unwrap(),
        status["peer_id"].as_str().unwrap()
    );
    let bob = Node::start(root.path(), "bob", Some(&bootstrap));
    (root, alice, bob)
}

#[test]
fn two_users_chat_through_the_cli() {
    // No addresses in the cards: the first messages travel through the mailbox hosts of
    // a two-node network, then the nodes learn each other's addresses from presence.
    let (_root, alice, bob) = two_nodes();

    // Before init: a clear error and its exit code.
    assert_eq!(alice.sotto(&["id"]).status.code(), Some(4));

    let created = alice.json(&["init", "--name", "Alice"]);
    assert!(created["card"].as_str().unwrap().starts_with("sotto:"));
    assert_eq!(
        alice.sotto(&["init", "--name", "Again"]).status.code(),
        Some(7)
    );
    bob.json(&["init", "--name", "Bob"]);

    let id = alice.json(&["id"]);
    for key in ["card", "address", "fingerprint"] {
        assert!(id[key].is_string(), "id --json has {key}");
    }
    let status = alice.json(&["status"]);
    for key in ["peer_id", "listen_addrs", "connected_peers", "outbox"] {
        assert!(!status[key].is_null(), "status --json has {key}");
    }
    let qr = alice.sotto(&["id", "--qr"]);
    assert!(
        qr.status.success() && qr.stdout.len() > 500,
        "a QR code is printed"
    );

    let alice_card = id["card"].as_str().unwrap().to_owned();
    let bob_card = bob.json(&["id"])["card"].as_str().unwrap().to_owned();
    assert_eq!(
        bob.json(&["contact", "add", &alice_card, "--name", "alice"])["name"],
        "alice"
    );
    alice.json(&["contact", "add", &bob_card, "--name", "bob"]);
    assert_eq!(alice.json(&["contact", "list"])[0]["name"], "bob");

    // Bad input: a tampered card, an unknown contact.
    let mut tampered = bob_card.clone();
    tampered.replace_range(40..41, if &bob_card[40..41] == "A" { "B" } else { "A" });
    assert_eq!(
        alice.sotto(&["contact", "add", &tampered]).status.code(),
        Some(6)
    );
    assert_eq!(
        alice.sotto(&["send", "nobody", "hi"]).status.code(),
        Some(5)
    );

    // The same safety number on both sides.
    let a = alice.json(&["contact", "verify", "bob"]);
    let b = bob.json(&["contact", "verify", "alice"]);
    assert_eq!(a["safety_number"], b["safety_number"]);

    let sent = alice.json(&["send", "bob", "hello from the command line"]);
    let got = wait_for_text(&bob, "alice", "hello from the command line");
    assert_eq!(got["id"], sent["id"]);
    for key in ["id", "from", "text", "sent_at", "direction"] {
        assert!(!got[key].is_null(), "messages --json has {key}");
    }
    assert_eq!(got["from"], "alice");
    assert_eq!(got["direction"], "in");

    let human = bob.sotto(&["messages", "alice"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("hello from the command line"));

    bob.json(&["send", "alice", "and hello back"]);
    wait_for_text(&alice, "bob", "and hello back");
    let history = alice.json(&["messages", "bob"]);
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["hello from the command line", "and hello back"],
        "oldest first"
    );
}

#[test]
fn block_unblock_and_bans_from_the_cli() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let alice = Node::start(root.path(), "alice", None);
    let bob = Node::start(root.path(), "bob", None);
    alice.json(&["init", "--name", "Alice"]);
    bob.json(&["init", "--name", "Bob"]);
    let card = bob.json(&["id"])["card"].as_str().unwrap().to_owned();
    alice.json(&["contact", "add", &card, "--name", "bob"]);

    let out = alice.sotto(&["contact", "block", "bob"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Blocked bob"));
    // Writing to a blocked contact is invalid input (exit 6), and says how to undo it.
    let refused = alice.sotto(&["send", "bob", "hi"]);
    assert_eq!(refused.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unblock"));
    assert_eq!(alice.json(&["contact", "unblock", "bob"])["blocked"], false);
    assert_eq!(
        alice.sotto(&["contact", "unblock", "bob"]).status.code(),
        Some(6)
    );
    assert_eq!(
        alice.sotto(&["contact", "block", "nobody"]).status.code(),
        Some(5)
    );

    assert_eq!(alice.json(&["peers", "bans"]), serde_json::json!([]));
    let none = alice.sotto(&["peers", "bans"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("No peer is banned"));
    let peer = bob.json(&["status"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        alice.sotto(&["peers", "unban", &peer]).status.code(),
        Some(6)
    );
    assert_eq!(
        alice.sotto(&["peers", "unban", "not-a-peer"]).status.code(),
        Some(6)
    );
}

#[test]
fn a_group_through_the_cli() {
    let (_root, alice, bob) = two_nodes();
    alice.json(&["init", "--name", "Alice"]);
    bob.json(&["init", "--name", "Bob"]);
    let alice_card = alice.json(&["id"])["card"].as_str().unwrap().to_owned();
    let bob_card = bob.json(&["id"])["card"].as_str().unwrap().to_owned();
    bob.json(&["contact", "add", &alice_card, "--name", "alice"]);
    alice.json(&["contact", "add", &bob_card, "--name", "bob"]);

    let created = alice.json(&["group", "create", "club", "--member", "bob"]);
    assert_eq!(created["role"], "admin");
    assert_eq!(created["member_count"], 2);
    // Bob's node takes the invitation of a contact at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while bob.json(&["group", "list"])[0]["status"] != "joined" {
        assert!(Instant::now() < deadline, "bob never joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = bob.json(&["group", "info", "club"]);
    assert_eq!(info["role"], "member");
    assert_eq!(info["key_stale"], false);
    for key in ["id", "title", "members", "admins", "dropped", "created_ms"] {
        assert!(!info[key].is_null(), "group info --json has {key}");
    }
    let human = String::from_utf8_lossy(&bob.sotto(&["group", "info", "club"]).stdout).into_owned();
    assert!(
        human.contains("members:") && human.contains("(admin)"),
        "{human}"
    );

    // One namespace: `send` and `messages` take the group's name.
    bob.json(&["send", "club", "hello club"]);
    let got = wait_for_text(&alice, "club", "hello club");
    assert_eq!(
        (&got["group"], &got["from"]),
        (&"club".into(), &"bob".into())
    );

    // Bad input: a member who is no admin, a group that does not exist.
    assert_eq!(
        bob.sotto(&["group", "rename", "club", "mine"])
            .status
            .code(),
        Some(8)
    );
    assert_eq!(
        alice.sotto(&["group", "info", "nosuch"]).status.code(),
        Some(5)
    );
    assert_eq!(
        alice.sotto(&["group", "create", "bob"]).status.code(),
        Some(7),
        "a contact has that name"
    );

    // Bob leaves; alice, the admin, sees one member and a fresh key.
    bob.json(&["group", "leave", "club"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = alice.json(&["group", "info", "club"]);
        if info["member_count"] == 1 && info["key_stale"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leave never reached alice: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bob.json(&["group", "list"])[0]["status"], "left");
}
