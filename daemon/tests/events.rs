//! `events.subscribe`: live notifications, and catching up after a reconnect.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{pair, root};
use serde_json::{json, Value};

struct Subscriber {
    reader: BufReader<UnixStream>,
}

impl Subscriber {
    fn new(socket: &std::path::Path, since: Option<u64>) -> (Subscriber, u64) {
        let mut s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let params = match since {
            Some(c) => json!({ "since": c }),
            None => json!({}),
        };
        let req =
            json!({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe", "params": params});
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut sub = Subscriber {
            reader: BufReader::new(s),
        };
        let reply = sub.next();
        assert_eq!(reply["id"], 1, "{reply}");
        let cursor = reply["result"]["cursor"].as_u64().unwrap();
        (sub, cursor)
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// The next `event` notification of `kind`, skipping others.
    fn next_of(&mut self, kind: &str) -> Value {
        for _ in 0..20 {
            let n = self.next();
            assert_eq!(n["method"], "event", "{n}");
            if n["params"]["kind"] == kind {
                return n["params"].clone();
            }
        }
        panic!("no {kind} event among the next 20");
    }
}

#[test]
fn subscribers_get_live_events_and_catch_up_after_reconnecting() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let (mut live, _) = Subscriber::new(&bob.socket, None);

    alice.send("bob", "first");
    let e = live.next_of("message.received");
    assert_eq!(e["message"]["text"], "first");
    assert_eq!(e["message"]["from"], "alice");
    let seen = e["cursor"].as_u64().unwrap();
    drop(live);

    // While nobody listens, two more arrive.
    alice.send("bob", "second");
    alice.send("bob", "third");
    bob.wait_for("alice", "third", "received");

    // Reconnecting with the last cursor seen delivers exactly what was missed, in order.
    let (mut again, latest) = Subscriber::new(&bob.socket, Some(seen));
    assert!(latest > seen);
    let texts: Vec<Value> = (0..2)
        .map(|_| again.next_of("message.received")["message"]["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("second"), json!("third")]);

    // The sender sees its message delivered.
    let (mut sender, _) = Subscriber::new(&alice.socket, None);
    alice.send("bob", "fourth");
    // (Delivery of "third" may still be reported first: skip to "fourth".)
    let d = (0..5)
        .map(|_| sender.next_of("message.delivered"))
        .find(|d| d["message"]["text"] == "fourth")
        .expect("fourth reported delivered");
    assert_eq!(d["message"]["state"], "delivered");
    // And the live subscription still carries on.
    assert_eq!(
        again.next_of("message.received")["message"]["text"],
        "fourth"
    );
}
