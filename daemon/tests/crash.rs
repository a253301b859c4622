//! Crash safety with real `sottod` processes: the sender, a mailbox host and the recipient
//! are SIGKILLed at random moments of a burst and started again; every message that
//! `message.send` accepted arrives exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{root, wait_until, Daemon};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Sender,
    Host,
    Recipient,
}

#[test]
fn sigkill_of_sender_host_and_recipient_during_a_burst_loses_and_repeats_nothing() {
    let seed: u64 = std::env::var("SOTTO_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set SOTTO_CRASH_SEED to repeat it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let root = root();
    let hub = Daemon::start(root.path(), "hub");
    let mut host = Daemon::join(root.path(), "host", &hub, &[]);
    let _other = Daemon::join(root.path(), "other", &hub, &[]);
    // Mailbox-only: every message goes through hosts, so killing one is felt.
    let mut alice = Daemon::join(root.path(), "alice", &hub, &["--mailbox-only"]);
    let mut bob = Daemon::join(root.path(), "bob", &hub, &["--mailbox-only"]);
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    alice.send("bob", "warm-up");
    bob.wait_for("alice", "warm-up", "received");

    const BURST: usize = 60;
    // Each victim is killed once at a random point of the burst, and started again a
    // random number of messages later (the sender at once: it is the one sending).
    let mut plan: HashMap<usize, Vec<(Who, bool)>> = HashMap::new();
    for who in [Who::Sender, Who::Host, Who::Recipient] {
        let kill_at = rng.gen_range(5..BURST - 10);
        let back_at = if who == Who::Sender {
            kill_at
        } else {
            kill_at + rng.gen_range(1..10)
        };
        plan.entry(kill_at).or_default().push((who, false));
        plan.entry(back_at).or_default().push((who, true));
    }
    eprintln!("plan: {plan:?}");

    let mut accepted = Vec::new();
    let mut attempted = Vec::new();
    for i in 0..BURST {
        for (who, start) in plan.remove(&i).unwrap_or_default() {
            let d = match who {
                Who::Sender => &mut alice,
                Who::Host => &mut host,
                Who::Recipient => &mut bob,
            };
            if start {
                d.restart();
            } else {
                d.kill();
            }
        }
        let text = format!("burst {i}");
        attempted.push(text.clone());
        if alice
            .try_call("message.send", json!({ "to": "bob", "text": text }))
            .is_ok()
        {
            accepted.push(text);
        }
        // Now and then a pause, so that kills also land between sends and deliveries.
        if rng.gen_bool(0.2) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
        }
    }
    assert_eq!(accepted.len(), BURST, "a running daemon accepts every send");

    let received = wait_until(Duration::from_secs(120), "every accepted message", || {
        let texts: Vec<String> = bob
            .messages("alice")
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        accepted.iter().all(|t| texts.contains(t)).then_some(texts)
    });
    for t in &accepted {
        assert_eq!(
            received.iter().filter(|r| *r == t).count(),
            1,
            "{t:?} arrived exactly once"
        );
    }
    assert!(received
        .iter()
        .all(|r| r == "warm-up" || attempted.contains(r)));
    // The sender learns of every delivery in the end, and keeps nothing queued.
    wait_until(
        Duration::from_secs(120),
        "the sender's outbox to empty",
        || (alice.outbox() == 0).then_some(()),
    );
}
