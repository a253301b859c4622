//! Bad input from the control socket and from the network, and what crosses the wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::raw::ask;
use common::{pair, root, Daemon};
use libp2p::{Multiaddr, PeerId};
use serde_json::{json, Value};
use sotto_daemon::net::{build_swarm, Frame};
use sotto_protocol::wire::{Refusal, Response};

fn code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn control_socket_refuses_bad_requests_and_keeps_serving() {
    let root = root();
    let (alice, bob) = pair(root.path());
    assert_eq!(code(&alice.raw(b"this is not json\n")), -32700);
    assert_eq!(code(&alice.raw(b"[1, 2]\n")), -32600);
    assert_eq!(
        code(&alice.raw(b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"node.status\"}\n")),
        -32600
    );
    assert_eq!(
        code(&alice.raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no.such.method\"}\n")),
        -32601
    );
    assert_eq!(
        code(&alice.raw(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message.send\",\"params\":{\"to\":5}}\n"
        )),
        -32602
    );
    assert_eq!(
        code(&alice.raw(b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"node.status\"}\n")),
        -32600
    );

    let err = alice
        .try_call("message.send", json!({"to": "nobody", "text": "hi"}))
        .unwrap_err();
    assert_eq!(err["code"], -32003);
    let err = alice
        .try_call(
            "message.send",
            json!({"to": "bob", "text": "x".repeat(40_000)}),
        )
        .unwrap_err();
    assert_eq!(err["code"], -32602);
    let err = alice
        .try_call("account.create", json!({"name": "Again"}))
        .unwrap_err();
    assert_eq!(err["code"], -32002);
    let err = alice
        .try_call("contact.add", json!({"card": alice.card()}))
        .unwrap_err();
    assert_eq!(err["code"], -32006);

    // A line over the limit is refused and the connection closed.
    let mut s = UnixStream::connect(&alice.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = vec![b'x'; 300 * 1024];
    let _ = s.write_all(&big);
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert_eq!(code(&serde_json::from_str(&reply).unwrap()), -32600);

    // Notifications (no id) get no answer; the next request on the line does.
    let mut s = UnixStream::connect(&alice.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"node.status\"}\n{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"node.status\"}\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["id"], 7);

    // Still serving, and still chatting.
    alice.send("bob", "still here");
    bob.wait_for("alice", "still here", "received");
}

#[test]
fn tampered_cards_are_refused() {
    let root = root();
    let alice = Daemon::start(root.path(), "alice");
    let bob = Daemon::start(root.path(), "bob");
    alice.init();
    bob.init();
    let card = bob.card();
    let mut chars: Vec<char> = card.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    for bad in [
        tampered.as_str(),
        &card[..card.len() - 20],
        "sotto:",
        "https://example.com/card",
        "sotto:$$$$",
    ] {
        let err = alice
            .try_call("contact.add", json!({ "card": bad }))
            .unwrap_err();
        assert_eq!(err["code"], -32004, "{bad}: {err}");
    }
    assert_eq!(alice.call("contact.list", json!({})), json!([]));
    alice.call("contact.add", json!({ "card": card }));
}

/// A TCP relay on loopback that records every byte it forwards, both ways.
struct Relay {
    port: u16,
    target: Arc<AtomicU16>,
    captured: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn new() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            port: listener.local_addr().unwrap().port(),
            target: Arc::default(),
            captured: Arc::default(),
            stop: Arc::default(),
        };
        let (target, captured, stop) = (
            relay.target.clone(),
            relay.captured.clone(),
            relay.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) =
                            TcpStream::connect(("127.0.0.1", target.load(Ordering::Relaxed)))
                        else {
                            continue;
                        };
                        for (from, to) in [
                            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                            (outbound, inbound),
                        ] {
                            let (captured, stop) = (captured.clone(), stop.clone());
                            std::thread::spawn(move || pump(from, to, &captured, &stop));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        relay
    }

    fn bytes(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, captured: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                captured.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn the_wire_shows_neither_text_nor_account_keys() {
    let root = root();
    let (relay_a, relay_b) = (Relay::new(), Relay::new());
    let announce = |r: &Relay| format!("/ip4/127.0.0.1/tcp/{}", r.port);
    let alice = Daemon::start_with(root.path(), "alice", &["--announce", &announce(&relay_a)]);
    let bob = Daemon::start_with(root.path(), "bob", &["--announce", &announce(&relay_b)]);
    relay_a.target.store(alice.port, Ordering::Relaxed);
    relay_b.target.store(bob.port, Ordering::Relaxed);
    let keys: Vec<(String, Vec<u8>)> = [alice.init(), bob.init()]
        .iter()
        .map(|a| {
            let address = a["address"].as_str().unwrap().to_owned();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&address)
                .unwrap();
            (address, raw)
        })
        .collect();
    alice.add(&bob);
    bob.add(&alice);

    // Let the presence messages settle; then what crosses the relays is the secrets' traffic.
    for d in [&alice, &bob] {
        common::wait_until(Duration::from_secs(30), "the presence exchange", || {
            (d.outbox() == 0).then_some(())
        });
    }
    let before = relay_a.bytes().len() + relay_b.bytes().len();
    let secrets = [
        "the eagle flies at midnight",
        "understood: at midnight, by the old mill",
    ];
    alice.send("bob", secrets[0]);
    bob.wait_for("alice", secrets[0], "received");
    bob.send("alice", secrets[1]);
    alice.wait_for("bob", secrets[1], "received");

    let mut wire = relay_a.bytes();
    wire.extend(relay_b.bytes());
    // Each message crossed in an envelope of at least 512 bytes (its answer is a few bytes):
    // the traffic since the presence exchange holds two envelopes' worth.
    assert!(
        wire.len() - before >= 2 * 512,
        "the messages' envelopes went through the relays ({} bytes since the presences)",
        wire.len() - before
    );
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    for s in secrets {
        assert!(!contains(s.as_bytes()), "plaintext {s:?} on the wire");
        assert!(!contains(&s.as_bytes()[..12]), "part of {s:?} on the wire");
    }
    for (address, raw) in &keys {
        assert!(!contains(raw), "an account key on the wire");
        assert!(!contains(address.as_bytes()), "an address on the wire");
    }
    for name in ["Alice", "Bob\0", "sotto:"] {
        assert!(!contains(name.as_bytes()), "{name:?} on the wire");
    }
}

#[test]
fn garbage_truncated_and_oversize_frames_are_refused() {
    let root = root();
    let (alice, bob) = pair(root.path());
    let status = bob.call("node.status", json!({}));
    let peer: PeerId = status["peer_id"].as_str().unwrap().parse().unwrap();
    let addr: Multiaddr = status["listen_addrs"][0].as_str().unwrap().parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut mallory = build_swarm(
            libp2p::identity::Keypair::generate_ed25519(),
            Default::default(),
        )
        .unwrap();
        let mut random = vec![0u8; 512];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        random[0] = 1;
        let mut future_version = random.clone();
        future_version[0] = 9;
        let cases = [
            (
                Frame::Bytes(vec![0; 100]),
                Response::Refused(Refusal::Malformed),
            ),
            (
                Frame::Bytes(Vec::new()),
                Response::Refused(Refusal::Malformed),
            ),
            (
                Frame::Bytes(future_version),
                Response::Refused(Refusal::Malformed),
            ),
            (Frame::Bytes(random), Response::Refused(Refusal::Unopenable)),
            (
                Frame::HeaderOnly {
                    claimed: 10_000_000,
                },
                Response::Refused(Refusal::TooLarge),
            ),
            (
                Frame::HeaderOnly { claimed: u32::MAX },
                Response::Refused(Refusal::TooLarge),
            ),
        ];
        for (request, expected) in cases {
            let got = ask(&mut mallory, peer, &addr, request.clone()).await;
            assert_eq!(got, Ok(expected), "{request:?}");
        }
        // A frame cut off after its header: the daemon gives up on that stream only.
        let truncated = ask(
            &mut mallory,
            peer,
            &addr,
            Frame::HeaderOnly { claimed: 1000 },
        )
        .await;
        assert!(truncated.is_err(), "{truncated:?}");
    });

    // The daemon is still serving both the socket and the network.
    assert!(bob.call("node.status", json!({}))["peer_id"].is_string());
    alice.send("bob", "after the garbage");
    bob.wait_for("alice", "after the garbage", "received");
    assert_eq!(
        bob.messages("alice").len(),
        1,
        "nothing from the garbage was stored"
    );
}
