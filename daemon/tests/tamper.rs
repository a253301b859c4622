//! A hostile relay on private paths, in-process with nine real nodes: one relay flips a bit
//! in every cell it passes on. Each such path fails at the next hop (the layer does not
//! open there), the sender builds another path, and every message arrives once, in order.
//! (A guard that breaks path after path is taken for failing: a unit test of
//! `paths::guards`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{config, free_port, private_dir, states, texts};
use serde_json::{json, Value};
use sotto_daemon::config::Config;
use sotto_daemon::node::Node;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// One JSON-RPC call on a node's control socket.
async fn rpc(socket: &Path, method: &str) -> Value {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let line = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}})
    );
    s.write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await.unwrap();
    let mut v: Value = serde_json::from_str(&reply).unwrap();
    v["result"].take()
}

/// Wait (at most `secs` seconds) until `f` holds.
async fn until<F: std::future::Future<Output = bool>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_flips_a_bit_breaks_only_its_paths_and_nothing_is_lost_or_doubled() {
    let dirs: Vec<_> = (0..9).map(|_| private_dir()).collect();
    let mut configs: Vec<Config> = dirs.iter().map(|d| config(d, free_port())).collect();
    for c in &mut configs {
        c.mailbox.policy.stamp_difficulty = 8;
        c.mailbox.publish_address = false;
    }
    // Node 6 flips one bit of every cell it passes on, in the first relay's layer region
    // that every hop's layer covers.
    let tampered = Arc::new(AtomicU64::new(0));
    let count = tampered.clone();
    configs[6].harness.tamper = Some(Arc::new(move |cell: &mut [u8]| {
        count.fetch_add(1, Ordering::Relaxed);
        cell[3 + 200] ^= 0x10;
    }));
    // Nodes 7 and 8 (alice and bob): mailbox-only, relaying for nobody.
    for c in &mut configs[7..] {
        c.mailbox.mailbox_only = true;
        c.limits.relay = false;
    }

    let hub = Node::start(&configs[0]).await.unwrap();
    let hub_addr = format!(
        "{}/p2p/{}",
        configs[0].listen[0],
        hub.service().network().peer_id()
    );
    for c in &mut configs[1..] {
        c.bootstrap = vec![hub_addr.parse().unwrap()];
    }
    let mut relays = vec![hub];
    for c in &configs[1..7] {
        relays.push(Node::start(c).await.unwrap());
    }
    let alice = Node::start(&configs[7]).await.unwrap();
    let bob = Node::start(&configs[8]).await.unwrap();
    for node in [&alice, &bob] {
        until(60, "relays known", || async {
            rpc(node.socket(), "paths.status").await["relays_known"]
                .as_u64()
                .unwrap()
                >= 5
        })
        .await;
    }
    alice.service().create_account("alice").await.unwrap();
    bob.service().create_account("bob").await.unwrap();
    let card_a = alice.service().account().await.unwrap().card;
    let card_b = bob.service().account().await.unwrap().card;
    alice
        .service()
        .add_contact(&card_b, Some("bob"))
        .await
        .unwrap();
    bob.service()
        .add_contact(&card_a, Some("alice"))
        .await
        .unwrap();

    // Bob is away; alice writes until the tampering relay has broken one of her paths (it
    // is one relay in seven: a middle on part of her paths, or her guard). After a path
    // fails its middle and exit are passed over for a while, so it rarely breaks more.
    bob.shutdown().await;
    let mut sent = Vec::new();
    for i in 0..40 {
        if i >= 8 && tampered.load(Ordering::Relaxed) > 0 {
            break;
        }
        let text = format!("through a hostile relay {i}");
        alice.service().send("bob", &text).await.unwrap();
        sent.push(text);
        until(120, "the message on hosts", || async {
            states(alice.service(), "bob")
                .await
                .iter()
                .all(|s| s == "on_hosts" || s == "delivered")
        })
        .await;
    }
    assert!(
        tampered.load(Ordering::Relaxed) > 0,
        "the hostile relay carried some of alice's cells ({} messages, {} cells tampered with)",
        sent.len(),
        tampered.load(Ordering::Relaxed)
    );
    let status = rpc(alice.socket(), "paths.status").await;
    assert!(
        status["path_failures"].as_u64().unwrap() > 0,
        "alice saw those paths fail: {status}"
    );
    // Each tampered cell was refused by the hop after the tampering relay.
    let mut refused = 0;
    for r in &relays {
        refused += rpc(r.socket(), "paths.status").await["refused"]
            .as_u64()
            .unwrap();
    }
    assert!(refused > 0, "the next hops refused the tampered cells");
    println!(
        "{} messages; {} cells tampered with; {refused} refused; alice: {status}",
        sent.len(),
        tampered.load(Ordering::Relaxed)
    );

    // Bob comes back and reads every message once, in order.
    let bob = Node::start(&configs[8]).await.unwrap();
    until(120, "every message at bob", || async {
        texts(bob.service(), "alice").await.len() >= sent.len()
    })
    .await;
    // A moment more, for any copy that would arrive twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(texts(bob.service(), "alice").await, sent);

    bob.shutdown().await;
    alice.shutdown().await;
    for r in relays {
        r.shutdown().await;
    }
}
