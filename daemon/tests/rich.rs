//! What happens to messages after they are written, with real `sottod` processes: replies,
//! reactions, edits and deletes are seen alike by both sides; bad changes are refused and
//! change nothing; read receipts; a disappearing chat's messages are erased from both
//! stores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{pair, root, wait_until, Daemon};
use serde_json::{json, Value};

/// The conversation as `d` shows it, in terms that do not depend on whose side it is:
/// each message's id, author, text, reply, reactions (author, emoji), edited and deleted.
fn seen(d: &Daemon, with: &str, me: &str) -> Vec<Value> {
    let who = |from: &Value| -> String {
        match from.as_str().unwrap() {
            "me" => me.to_owned(),
            other => other.to_owned(),
        }
    };
    d.messages(with)
        .iter()
        .map(|m| {
            let reactions: Vec<Value> = m["reactions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| json!([who(&r["from"]), r["emoji"]]))
                .collect();
            json!({
                "id": m["id"],
                "from": who(&m["from"]),
                "text": m["text"],
                "reply_to": m["reply_to"],
                "reactions": reactions,
                "edited": !m["edited_at"].is_null(),
                "deleted": m["deleted"],
            })
        })
        .collect()
}

/// Wait until both sides show the conversation alike and `done` holds for it.
fn wait_alike(alice: &Daemon, bob: &Daemon, what: &str, done: impl Fn(&[Value]) -> bool) {
    wait_until(Duration::from_secs(30), what, || {
        let a = seen(alice, "bob", "alice");
        let b = seen(bob, "alice", "bob");
        (a == b && done(&a)).then_some(())
    });
}

fn error_code(answer: Result<Value, Value>) -> i64 {
    answer.expect_err("refused")["code"].as_i64().unwrap()
}

#[test]
fn replies_reactions_edits_and_deletes_are_seen_alike_by_both_sides() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let hello = alice.send("bob", "hello")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.wait_for("alice", "hello", "received");

    // Bob answers it by a prefix of its id, and reacts to it.
    let reply = bob.call(
        "message.send",
        json!({ "to": "alice", "text": "hi back", "reply_to": &hello[..6] }),
    );
    assert_eq!(reply["reply_to"], hello.as_str());
    bob.call(
        "message.react",
        json!({ "chat": "alice", "id": hello, "emoji": "👍🏽" }),
    );
    // Alice reacts too, changes her mind (one reaction per person), and edits her message.
    alice.call(
        "message.react",
        json!({ "chat": "bob", "id": hello, "emoji": "❤️" }),
    );
    alice.call(
        "message.react",
        json!({ "chat": "bob", "id": hello, "emoji": "🎉" }),
    );
    let edited = alice.call(
        "message.edit",
        json!({ "chat": "bob", "id": hello, "text": "hello, bob" }),
    );
    assert_eq!(edited["text"], "hello, bob");
    let oops = alice.send("bob", "oops")["id"].as_str().unwrap().to_owned();
    bob.wait_for("alice", "oops", "received");
    alice.call(
        "message.delete",
        json!({ "chat": "bob", "id": oops, "for_everyone": true }),
    );

    wait_alike(&alice, &bob, "both sides alike", |list| {
        let hello = &list[0];
        list.len() == 3
            && hello["text"] == "hello, bob"
            && hello["edited"] == true
            && hello["reactions"].as_array().unwrap().len() == 2
            && list[2]["deleted"] == true
    });
    let list = seen(&alice, "bob", "alice");
    assert_eq!(
        list[0]["reactions"],
        json!([["bob", "👍🏽"], ["alice", "🎉"]])
    );
    assert_eq!(list[1]["reply_to"], hello.as_str());
    assert_eq!(list[1]["from"], "bob");
    assert_eq!(list[2]["text"], "");

    // Bad changes: refused with a clear error, and nothing changes on either side.
    let before = seen(&alice, "bob", "alice");
    let hi_back = reply["id"].as_str().unwrap();
    for (method, params) in [
        // Not one emoji.
        (
            "message.react",
            json!({ "chat": "bob", "id": hello, "emoji": "ok" }),
        ),
        (
            "message.react",
            json!({ "chat": "bob", "id": hello, "emoji": "👍👍" }),
        ),
        // Someone else's message.
        (
            "message.edit",
            json!({ "chat": "bob", "id": hi_back, "text": "not mine" }),
        ),
        (
            "message.delete",
            json!({ "chat": "bob", "id": hi_back, "for_everyone": true }),
        ),
        // No such message, a prefix too short, a deleted message.
        (
            "message.react",
            json!({ "chat": "bob", "id": "ffffffffffffffffffffffffffffffff", "emoji": "👍" }),
        ),
        (
            "message.edit",
            json!({ "chat": "bob", "id": "a", "text": "x" }),
        ),
        (
            "message.edit",
            json!({ "chat": "bob", "id": oops, "text": "back" }),
        ),
        (
            "message.send",
            json!({ "to": "bob", "text": "x", "reply_to": "nothing" }),
        ),
    ] {
        assert_eq!(
            error_code(alice.try_call(method, params.clone())),
            -32602,
            "{method} {params}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(seen(&alice, "bob", "alice"), before);
    assert_eq!(seen(&bob, "alice", "bob"), before);

    // Deleting here only: gone from alice's history, still at bob's.
    alice.call(
        "message.delete",
        json!({ "chat": "bob", "id": hi_back, "for_everyone": false }),
    );
    assert_eq!(seen(&alice, "bob", "alice").len(), 2);
    assert_eq!(seen(&bob, "alice", "bob").len(), 3);
}

#[test]
fn reading_a_chat_tells_the_sender_unless_receipts_are_off() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let sent = alice.send("bob", "read me");
    bob.wait_for("alice", "read me", "received");
    let read = bob.call("chat.read", json!({ "chat": "alice" }));
    assert_eq!(read["marked"], 1);
    assert_eq!(read["receipt_sent"], true);
    wait_until(Duration::from_secs(30), "alice sees it read", || {
        alice
            .messages("bob")
            .into_iter()
            .find(|m| m["id"] == sent["id"] && m["state"] == "read")
    });
    // Nothing new to mark: nothing sent.
    let again = bob.call("chat.read", json!({ "chat": "alice" }));
    assert_eq!(again["marked"], 0);
    assert_eq!(again["receipt_sent"], false);

    // A node with read receipts off sends none.
    let carol = Daemon::start_with(root.path(), "carol", &["--no-read-receipts"]);
    carol.init();
    carol.add(&alice);
    alice.add(&carol);
    let to_carol = alice.send("carol", "are you there");
    carol.wait_for("alice", "are you there", "received");
    let read = carol.call("chat.read", json!({ "chat": "alice" }));
    assert_eq!(read["marked"], 1);
    assert_eq!(read["receipt_sent"], false);
    alice.wait_for("carol", "are you there", "delivered");
    std::thread::sleep(Duration::from_secs(2));
    let state = alice
        .messages("carol")
        .into_iter()
        .find(|m| m["id"] == to_carol["id"])
        .unwrap()["state"]
        .clone();
    assert_eq!(state, "delivered");
}

#[test]
fn a_disappearing_chats_messages_are_erased_from_both_stores() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let set = alice.call("chat.disappearing", json!({ "chat": "bob", "seconds": 10 }));
    assert_eq!(set["seconds"], 10);
    // Both sides show the notice and apply the timer.
    wait_until(Duration::from_secs(30), "bob sees the timer", || {
        bob.messages("alice")
            .into_iter()
            .find(|m| m["notice"] == true)
    });
    let secret = "a secret that must not outlive its timer 7f3a";
    alice.send("bob", secret);
    let at_bob = bob.wait_for("alice", secret, "received");
    assert!(at_bob["expires_at"].as_u64().is_some());
    let answer = bob.send("alice", "and mine disappears too");
    assert!(answer["expires_at"].as_u64().is_some());
    for d in [&alice, &bob] {
        wait_until(Duration::from_secs(30), "the messages disappear", || {
            let texts: Vec<Value> = d
                .messages(if d.name == "alice" { "bob" } else { "alice" })
                .into_iter()
                .filter(|m| m["notice"] == false)
                .collect();
            texts.is_empty().then_some(())
        });
    }
    // The store files (the event log in them too), read raw, hold the text no more.
    let (mut alice, mut bob) = (alice, bob);
    for d in [&mut alice, &mut bob] {
        d.stop();
        let raw = d.raw_store();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{}: the store files still hold the text",
            d.name
        );
    }
}
