//! A hostile mailbox host: a raw libp2p peer that is one of the hosts of every dead drop
//! and answers every fetch with a page of junk envelopes that carry no deposit proof,
//! always saying there is more. A fetcher takes at most a page of it per pairwise dead drop
//! per round, opens none of it (no deposit proof from the pair at pairwise dead drops, no
//! stamp at intro dead drops), and bans the host after three such pages at dead drops only
//! the pair can deposit at.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{root, wait_until, Daemon};
use futures::StreamExt;
use libp2p::request_response::{Event, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId};
use rand::RngCore;
use serde_json::json;
use sotto_daemon::net::{BehaviourEvent, Frame};
use sotto_protocol::deaddrop::Address;
use sotto_protocol::mailbox::{DepositAuth, Fetched, Refusal, Request, Response};

/// Envelopes in each page the hostile host serves.
const PAGE: usize = 100;

/// What the hostile host saw: fetches per asking peer, at pairwise dead drops and at intro
/// dead drops.
type Fetches = Arc<Mutex<HashMap<PeerId, (u64, u64)>>>;

/// Run a hostile host on a fresh loopback port until `stop` is set; returns its address
/// (with `/p2p/…`) once it listens.
fn hostile_host(stop: Arc<AtomicBool>, fetches: Fetches) -> Multiaddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let me = key.public().to_peer_id();
            // A host, not a relay: it answers no onion cells (so it is never on a path).
            let limits = sotto_daemon::limits::Limits {
                relay: false,
                ..Default::default()
            };
            let mut swarm = sotto_daemon::net::build_swarm_with(
                key,
                Default::default(),
                &Default::default(),
                &limits,
                &[],
            )
            .unwrap();
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
            let mut sent_address = false;
            while !stop.load(Ordering::Relaxed) {
                let event = tokio::select! {
                    e = swarm.select_next_some() => e,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                };
                match event {
                    SwarmEvent::NewListenAddr { address, .. } if !sent_address => {
                        sent_address = true;
                        tx.send(format!("{address}/p2p/{me}")).unwrap();
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) => {
                        for addr in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mailbox(Event::Message {
                        peer,
                        message:
                            Message::Request {
                                request, channel, ..
                            },
                        ..
                    })) => {
                        let request = match request {
                            Frame::Bytes(b) => Request::from_bytes(&b).ok(),
                            Frame::HeaderOnly { .. } => None,
                        };
                        let answer = match request {
                            Some(Request::Fetch(f)) => {
                                let seen = &mut *fetches.lock().unwrap();
                                let (pairwise, intro) = seen.entry(peer).or_default();
                                if Address::of_intro_key(&f.proof.key) == f.address {
                                    *intro += 1;
                                } else {
                                    *pairwise += 1;
                                }
                                let envelopes = (0..PAGE)
                                    .map(|_| {
                                        let mut junk = vec![0u8; 512];
                                        rand::thread_rng().fill_bytes(&mut junk);
                                        junk[0] = 1;
                                        Fetched {
                                            envelope: junk,
                                            expires_at: u64::MAX,
                                            auth: DepositAuth::Stamp {
                                                intro: [7; 32],
                                                nonce: 0,
                                            },
                                        }
                                    })
                                    .collect();
                                Response::Envelopes {
                                    envelopes,
                                    more: true,
                                }
                            }
                            Some(Request::Deposit(_)) => Response::Stored,
                            Some(Request::Delete(d)) => Response::Deleted(d.ids.len() as u32),
                            None => Response::Refused(Refusal::Malformed),
                        };
                        let _ = swarm.behaviour_mut().mailbox.send_response(channel, answer);
                    }
                    _ => {}
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_host_serving_junk_costs_a_page_a_round_and_is_banned() {
    let root = root();
    let stop = Arc::new(AtomicBool::new(false));
    let fetches: Fetches = Arc::default();
    let mallory = hostile_host(stop.clone(), fetches.clone());
    let mallory_id = match mallory.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
        _ => unreachable!(),
    };
    // Three nodes in all: with three replicas, mallory hosts every dead drop of bob's.
    let join = |name| {
        Daemon::start_node(
            root.path(),
            name,
            true,
            &["--bootstrap", &mallory.to_string(), "--replicas", "3"],
        )
    };
    let (alice, bob) = (join("alice"), join("bob"));
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    alice.send("bob", "hello bob");
    bob.wait_for("alice", "hello bob", "received");

    // Alice and bob fetch every second: each an intro dead drop and pairwise ones. Their
    // mailbox work goes through private paths, and each is the other's only relay, so each
    // is the other's exit: mallory sees their fetches come from the other's PeerId. Whoever
    // sees mallory's junk three times at a pairwise dead drop bans it.
    let ban_of = |d: &Daemon| {
        d.call("peers.bans", json!({}))
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["peer"] == mallory_id.to_string())
            .cloned()
    };
    let banned = wait_until(Duration::from_secs(60), "a ban of the junk host", || {
        ban_of(&alice).or_else(|| ban_of(&bob))
    });
    assert!(
        banned["reason"]
            .as_str()
            .unwrap()
            .contains("nobody deposited"),
        "{banned}"
    );
    let served = || {
        fetches
            .lock()
            .unwrap()
            .values()
            .fold((0, 0), |(p, i), (dp, di)| (p + dp, i + di))
    };
    let (pairwise, intro) = served();
    // Each round: one page per pairwise dead drop, none of it opened: a strike each, the
    // third bans. At the intro dead drop, at most 64 pages a round (an exit cuts each to
    // one cell, a few envelopes), none with a stamp: none opened either. Without the caps a
    // round took 64 pages of 100 envelopes of each dead drop and opened every envelope.
    println!(
        "the junk host served alice and bob (through their exits) {pairwise} pages at \
         pairwise dead drops and {intro} at intro dead drops, none opened, before the ban"
    );
    assert!((3..=12).contains(&pairwise), "{pairwise} pairwise pages");
    assert!(intro <= 64 * pairwise, "{intro} intro pages");
    // Whoever banned it asks it nothing more; the other, whose exit it is, bans it too by
    // its third page of junk at a pairwise dead drop (intro junk is no strike: anyone with
    // a stamp may deposit there, so fetches of intro dead drops may go on).
    std::thread::sleep(Duration::from_secs(3));
    let (pairwise_after, _) = served();
    assert!(
        pairwise_after <= pairwise + 3,
        "{pairwise_after} pairwise pages after the ban"
    );
    // And bob still hears from alice.
    alice.send("bob", "still here");
    bob.wait_for("alice", "still here", "received");
    stop.store(true, Ordering::Relaxed);
}
