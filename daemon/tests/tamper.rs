//! A hostile relay on private paths, in-process with nine real nodes: one relay flips a bit
//! in every cell it passes on. Each such path fails at the next hop (the layer does not
//! open there), the sender builds another path, and every message arrives once, in order.
//! (A guard that breaks path after path is taken for failing: a unit test of
//! `paths::guards`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{
    config, free_port, paths_network, private_dir, rpc, texts, until, until_on_hosts,
};
use sotto_daemon::config::Config;
use sotto_daemon::node::Node;

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
    // Nodes 7 and 8 are alice and bob.
    let (relays, alice, bob) = paths_network(&mut configs).await;

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
        until_on_hosts(alice.service(), "bob").await;
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
