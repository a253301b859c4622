//! Private paths with real `sottod` processes: two mailbox-only nodes talk while the other
//! is offline, every mailbox request travels guard → middle → exit, and no host ever sees
//! either node's PeerId; a node whose guards die picks others and still delivers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{root, wait_until, Daemon};
use serde_json::{json, Value};

/// What every node of these tests logs: warnings, and each request it serves (mailbox
/// requests as host, onion cells as relay), with the PeerId it came from.
const REQUESTS: &str = "warn,sotto_daemon::requests=debug";

fn peer_id(d: &Daemon) -> String {
    d.call("node.status", json!({}))["peer_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A network of `relays` relaying nodes around a hub, and alice and bob, mailbox-only and
/// relaying for nobody (so that any request a host sees from them is their own, or a
/// handover of what they host for others).
struct Net {
    relays: Vec<Daemon>,
    alice: Daemon,
    bob: Daemon,
}

fn network(root: &std::path::Path, relays: usize) -> Net {
    let hub = Daemon::start_logged(root, "hub", &[], REQUESTS);
    let hub_addr = hub.bootstrap_addr();
    let join = |name: &str, extra: &[&str]| {
        let mut args = vec!["--bootstrap", hub_addr.as_str()];
        args.extend_from_slice(extra);
        Daemon::start_logged(root, name, &args, REQUESTS)
    };
    let mut all = vec![hub];
    for i in 1..relays {
        all.push(join(&format!("relay{i}"), &[]));
    }
    let alice = join("alice", &["--mailbox-only", "--no-relay"]);
    let bob = join("bob", &["--mailbox-only", "--no-relay"]);
    // Each knows enough relays for full paths (they learn them from identify as they
    // connect through the DHT).
    for d in [&alice, &bob] {
        wait_until(Duration::from_secs(30), "relays known", || {
            let known = d.call("paths.status", json!({}))["relays_known"]
                .as_u64()
                .unwrap();
            (known >= 4).then_some(())
        });
    }
    Net {
        relays: all,
        alice,
        bob,
    }
}

fn paths(d: &Daemon) -> Value {
    d.call("paths.status", json!({}))
}

/// Every mailbox request `d` served as host, as (kind, address, from).
fn mailbox_requests(d: &Daemon) -> Vec<(String, String, String)> {
    d.log()
        .lines()
        .filter_map(|l| l.split_once("mailbox ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (kind, rest) = rest.split_once(" at ")?;
            let (address, from) = rest.split_once(" from ")?;
            Some((kind.to_owned(), address.to_owned(), from.trim().to_owned()))
        })
        .collect()
}

#[test]
fn mailbox_only_nodes_talk_offline_through_paths_and_no_host_sees_them() {
    let root = root();
    let Net {
        relays,
        alice,
        mut bob,
    } = network(root.path(), 6);
    let (alice_id, bob_id) = (peer_id(&alice), peer_id(&bob));
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);

    // Bob is away; alice writes; her messages wait at hosts; bob comes back and reads them.
    bob.stop();
    for i in 0..3 {
        alice.send("bob", &format!("while you were out {i}"));
    }
    wait_until(Duration::from_secs(60), "alice's messages on hosts", || {
        alice
            .messages("bob")
            .iter()
            .all(|m| m["state"] == "on_hosts" || m["state"] == "delivered")
            .then_some(())
    });
    bob.restart();
    for i in 0..3 {
        bob.wait_for("alice", &format!("while you were out {i}"), "received");
    }
    // And back, alice away.
    let mut alice = alice;
    alice.stop();
    bob.send("alice", "back now");
    wait_until(Duration::from_secs(60), "bob's reply on hosts", || {
        bob.messages("alice")
            .iter()
            .any(|m| {
                m["text"] == "back now" && (m["state"] == "on_hosts" || m["state"] == "delivered")
            })
            .then_some(())
    });
    alice.restart();
    alice.wait_for("bob", "back now", "received");
    // Every message once, in each history.
    let texts: Vec<String> = alice
        .messages("bob")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");

    // No host was asked anything by alice or bob for themselves: every deposit, fetch and
    // delete of theirs came from an exit. (As hosts they hand what they hold for others
    // over to closer hosts, from their own PeerIds: each such deposit is in their log.)
    let mut served = 0;
    for d in relays.iter().chain([&alice, &bob]) {
        let host_id = peer_id(d);
        for (kind, address, from) in mailbox_requests(d) {
            served += 1;
            let sender = if from == alice_id {
                &alice
            } else if from == bob_id {
                &bob
            } else {
                continue;
            };
            if sender.name == d.name {
                // Its own host, answering it in process: nobody else saw the request.
                continue;
            }
            assert!(
                kind == "deposit"
                    && sender
                        .log()
                        .contains(&format!("handover of {address} to {host_id}")),
                "{} served a {kind} at {address} from {} itself",
                d.name,
                sender.name
            );
        }
    }
    assert!(served > 0, "hosts served the mailbox work");

    // Full paths only: bob's guards carried his cells on, never answered one as exit.
    for d in [&alice, &bob] {
        let p = paths(d);
        println!("{}: {p}", d.name);
        assert_eq!(p["short_paths"], 0, "{p}");
        assert!(p["answered"].as_u64().unwrap() > 0, "{p}");
    }
    let bob_paths = paths(&bob);
    for g in bob_paths["guards"].as_array().unwrap() {
        let guard = relays
            .iter()
            .find(|d| peer_id(d) == g["peer"].as_str().unwrap())
            .expect("a guard is one of the nodes");
        let log = guard.log();
        assert!(
            log.contains(&format!("onion cell from {bob_id} to ")),
            "bob's guard {} carried his cells",
            guard.name
        );
        assert!(
            !log.contains(&format!("onion cell from {bob_id} at its exit")),
            "bob's guard {} was never his exit",
            guard.name
        );
    }
}

#[test]
fn a_node_whose_guards_die_picks_new_ones_and_still_delivers() {
    let root = root();
    let Net {
        mut relays,
        alice,
        bob,
    } = network(root.path(), 7);
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    alice.send("bob", "before");
    bob.wait_for("alice", "before", "received");

    // Kill every guard alice has used (never the hub, which holds the network together).
    let guards: Vec<String> = paths(&alice)["guards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["peer"].as_str().unwrap().to_owned())
        .collect();
    assert!(!guards.is_empty());
    let mut killed = Vec::new();
    for d in relays.iter_mut().skip(1) {
        if guards.contains(&peer_id(d)) {
            killed.push(peer_id(d));
            d.kill();
        }
    }
    if killed.is_empty() {
        // Her guard is the hub: kill it anyway; the others know each other by now.
        killed.push(peer_id(&relays[0]));
        relays[0].kill();
    }

    alice.send("bob", "after");
    bob.wait_for("alice", "after", "received");
    let p = paths(&alice);
    println!("alice after her guards died: {p}");
    let working: Vec<&Value> = p["guards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| !killed.contains(&g["peer"].as_str().unwrap().to_owned()))
        .filter(|g| g["used"].as_u64().unwrap() > 0)
        .collect();
    assert!(!working.is_empty(), "a new guard carries her paths: {p}");
    assert!(p["path_failures"].as_u64().unwrap() > 0, "{p}");
}

/// How long a message takes to reach mailbox hosts (`message.send` until `on_hosts`), for
/// mailbox-only nodes, through private paths and from the node's own PeerId: 100 messages
/// each, in a network of eight. A measurement (docs/benchmarks.md), run by hand:
/// `cargo test --release -p sotto-daemon --test private_paths -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_deposit_latency_through_paths() {
    for (label, extra) in [
        ("private paths", &[][..]),
        ("direct", &["--no-private-paths"][..]),
    ] {
        let root = root();
        let hub = Daemon::start_node(root.path(), "hub", false, extra);
        let join = |name: &str, more: &[&str]| {
            let mut args: Vec<&str> = extra.to_vec();
            args.extend_from_slice(more);
            Daemon::join(root.path(), name, &hub, &args)
        };
        let _relays: Vec<Daemon> = (1..6).map(|i| join(&format!("relay{i}"), &[])).collect();
        let alice = join("alice", &["--mailbox-only"]);
        let bob = join("bob", &["--mailbox-only"]);
        alice.init();
        bob.init();
        alice.add(&bob);
        bob.add(&alice);
        alice.send("bob", "warm-up");
        bob.wait_for("alice", "warm-up", "received");
        let mut samples = Vec::new();
        for i in 0..100 {
            let text = format!("{label} {i}");
            let started = std::time::Instant::now();
            alice.send("bob", &text);
            // Polled every millisecond (wait_until's 50 ms would be the resolution).
            loop {
                let placed = alice
                    .messages("bob")
                    .iter()
                    .any(|m| m["text"] == text && m["state"] != "queued");
                if placed {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{text} not on hosts"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            samples.push(started.elapsed());
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        println!(
            "{label}: send to on_hosts p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms ({} messages)",
            at(0.5).as_secs_f64() * 1e3,
            at(0.9).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            samples.len()
        );
        if label == "private paths" {
            println!("alice: {}", paths(&alice));
        }
    }
}
