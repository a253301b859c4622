//! Groups with real `sottod` processes: three members talk through the group's dead drop; a
//! removed member reads nothing sent after; a member away during messages and a change gets
//! them when back, with the sender gone by then; two admins changing the group at once end
//! in the same state everywhere; hosts and relays hold nothing that names the group or its
//! members.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{root, wait_until, Daemon};
use serde_json::{json, Value};

const FLAGS: &[&str] = &[];

/// A hub, three more nodes (relays and hosts), and alice, bob and carol, each the others'
/// contact.
struct Net {
    _root: tempfile::TempDir,
    others: Vec<Daemon>,
    alice: Daemon,
    bob: Daemon,
    carol: Daemon,
}

impl Net {
    fn new() -> Net {
        let root = root();
        let hub = Daemon::start_node(root.path(), "hub", false, FLAGS);
        let mut others: Vec<Daemon> = (0..3)
            .map(|i| Daemon::join(root.path(), &format!("relay{i}"), &hub, FLAGS))
            .collect();
        let alice = Daemon::join(root.path(), "alice", &hub, FLAGS);
        let bob = Daemon::join(root.path(), "bob", &hub, FLAGS);
        let carol = Daemon::join(root.path(), "carol", &hub, FLAGS);
        others.insert(0, hub);
        for d in [&alice, &bob, &carol] {
            d.init();
        }
        for (a, b) in [(&alice, &bob), (&alice, &carol), (&bob, &carol)] {
            a.add(b);
            b.add(a);
        }
        Net {
            _root: root,
            others,
            alice,
            bob,
            carol,
        }
    }
}

fn group_info(d: &Daemon, group: &str) -> Value {
    d.call("group.info", json!({ "group": group }))
}

/// Wait until `d` holds the group `group` with status `status`.
fn wait_status(d: &Daemon, group: &str, status: &str) -> Value {
    wait_until(
        Duration::from_secs(90),
        &format!("{}: {group} {status}", d.name),
        || {
            let info = d.try_call("group.info", json!({ "group": group })).ok()?;
            (info["status"] == status).then_some(info)
        },
    )
}

/// Wait until `d` received `text` in `group` from `from`.
fn wait_group_text(d: &Daemon, group: &str, from: &str, text: &str) {
    wait_until(
        Duration::from_secs(90),
        &format!("{}: {text:?} from {from} in {group}", d.name),
        || {
            d.messages(group)
                .iter()
                .find(|m| m["text"] == text && m["from"] == from && m["group"] == group)
                .map(|_| ())
        },
    )
}

fn texts(d: &Daemon, group: &str) -> Vec<String> {
    d.messages(group)
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn three_members_talk_and_a_removed_member_reads_nothing_after() {
    let net = Net::new();
    let (alice, bob, carol) = (&net.alice, &net.bob, &net.carol);
    let created = alice.call(
        "group.create",
        json!({ "name": "friends", "members": ["bob", "carol"] }),
    );
    assert_eq!(created["role"], "admin");
    assert_eq!(created["member_count"], 3);
    // An invitation from an admin who is a contact joins at once.
    for d in [bob, carol] {
        let info = wait_status(d, "friends", "joined");
        assert_eq!(info["role"], "member");
        assert_eq!(info["admins"], json!(["alice"]));
    }
    // A name clash with the group is refused.
    let err = alice
        .try_call("group.create", json!({ "name": "bob", "members": [] }))
        .unwrap_err();
    assert_eq!(err["code"], -32005, "{err}");

    // Everyone talks.
    let m = alice.send("friends", "hello group");
    assert_eq!(m["group"], "friends");
    for d in [bob, carol] {
        wait_group_text(d, "friends", "alice", "hello group");
    }
    bob.send("friends", "hi from bob");
    for d in [alice, carol] {
        wait_group_text(d, "friends", "bob", "hi from bob");
    }
    carol.send("friends", "carol here");
    for d in [alice, bob] {
        wait_group_text(d, "friends", "carol", "carol here");
    }
    // A non-admin cannot change the group.
    let err = bob
        .try_call(
            "group.rename",
            json!({ "group": "friends", "name": "mine" }),
        )
        .unwrap_err();
    assert_eq!(err["code"], -32011, "{err}");

    // Carol is removed: she learns it, bob sees two members.
    let after = alice.call(
        "group.remove",
        json!({ "group": "friends", "member": "carol" }),
    );
    assert_eq!(after["member_count"], 2);
    wait_status(carol, "friends", "removed");
    wait_until(Duration::from_secs(60), "bob sees carol gone", || {
        (group_info(bob, "friends")["member_count"] == 2).then_some(())
    });
    alice.send("friends", "after carol left");
    wait_group_text(bob, "friends", "alice", "after carol left");
    bob.send("friends", "bob after carol");
    wait_group_text(alice, "friends", "bob", "bob after carol");
    // Carol cannot post any more.
    let err = carol
        .try_call(
            "message.send",
            json!({ "to": "friends", "text": "still here?" }),
        )
        .unwrap_err();
    assert_eq!(err["code"], -32012, "{err}");
    // A few fetch rounds more: nothing after the removal reached carol.
    std::thread::sleep(Duration::from_secs(4));
    let seen = texts(carol, "friends");
    assert!(
        !seen.iter().any(|t| t.contains("after carol")),
        "carol read {seen:?}"
    );
    assert_eq!(seen, ["hello group", "hi from bob", "carol here"]);
    let raw = carol.raw_store();
    for text in ["after carol left", "bob after carol"] {
        assert!(
            !raw.windows(text.len()).any(|w| w == text.as_bytes()),
            "{text:?} in carol's store"
        );
    }

    // Nobody but the members holds the group's name, its id or the members' names in clear.
    let id = created["id"].as_str().unwrap().to_owned();
    let id_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for d in &net.others {
        let raw = d.raw_store();
        for (what, needle) in [
            ("the group's name", b"friends".to_vec()),
            ("the group id", id_bytes.clone()),
            ("a member's name", b"Alice".to_vec()),
            ("a member's name", b"Carol".to_vec()),
        ] {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} in the store of {}",
                d.name
            );
        }
    }
}
