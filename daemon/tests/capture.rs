//! A capture on the wire between relays: nine real nodes in-process on TCP, every byte of
//! every connection recorded below Noise (as a capture on the link would see it). Alice
//! writes to bob while he is away, texts in three envelope size buckets, so that her paths
//! carry host lookups, deposits of three sizes, and, when bob is back, fetches and deletes.
//! Whatever the request inside, every cell a relay passes on to another relay is one Noise
//! frame of one size on the wire (4,127 bytes; its answer 4,128), in every phase, as the
//! relays' own count of the cells they passed on confirms. (The other large frames on
//! those links are mailbox requests between exits and hosts, which carry the envelope a
//! host stores anyway.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::inproc::{config, free_port, paths_network, private_dir, texts, until, until_on_hosts};
use libp2p::multiaddr::Protocol;
use sotto_daemon::config::Config;
use sotto_daemon::link::{HostEvent, Observer, RelayEvent, RelayStep, Transport, WireBytes};
use sotto_daemon::node::Node;
use sotto_protocol::onion;

/// One direction of one connection: the bytes, and the phase each byte arrived in.
#[derive(Default)]
struct Flow {
    bytes: Vec<u8>,
    phase: Vec<u8>,
}

/// Everything the nodes' dialed connections carried, by (dialing node, connection number):
/// the port dialed and the flows written and read. Only dialed connections are kept, so
/// each connection is recorded once, with both of its ends known.
#[derive(Default)]
struct Capture {
    connections: BTreeMap<(usize, u64), (u16, [Flow; 2])>,
}

/// The frames of one direction of a connection: past multistream-select (unsigned-varint
/// length, text ending in a newline) up to and including `/noise`, every Noise message has
/// a 2-byte big-endian length. Returns (length, phase) of each complete frame.
fn noise_frames(flow: &Flow) -> Vec<(usize, u8)> {
    let b = &flow.bytes;
    let mut i = 0;
    // multistream-select
    loop {
        let (mut len, mut shift) = (0usize, 0);
        while i < b.len() {
            let byte = b[i];
            i += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if i + len > b.len() {
            return Vec::new();
        }
        let message = &b[i..i + len];
        i += len;
        if message == b"/noise\n" {
            break;
        }
        assert!(
            message.ends_with(b"\n"),
            "not multistream-select: {message:?}"
        );
    }
    let mut frames = Vec::new();
    while i + 2 <= b.len() {
        let len = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
        if i + 2 + len > b.len() {
            break;
        }
        frames.push((len, flow.phase[i + 1 + len]));
        i += 2 + len;
    }
    frames
}

/// A cell passed on: the phase, the relay and the next hop (PeerId bytes).
type Forward = (u8, Vec<u8>, Vec<u8>);

/// The relays' own account of the cells they passed on: (phase, from, to) PeerId bytes.
struct Forwards {
    phase: Arc<AtomicUsize>,
    seen: Mutex<Vec<Forward>>,
}

impl Observer for Forwards {
    fn host_event(&self, _event: HostEvent) {}
    fn relay_event(&self, event: RelayEvent) {
        if let RelayStep::Forward { next } = event.step {
            let phase = self.phase.load(Ordering::Relaxed) as u8;
            self.seen.lock().unwrap().push((phase, event.relay, next));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_between_relays_have_one_size_on_the_wire_whatever_the_request_inside() {
    let dirs: Vec<_> = (0..9).map(|_| private_dir()).collect();
    let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let mut configs: Vec<Config> = dirs
        .iter()
        .zip(&ports)
        .map(|(d, p)| config(d, *p))
        .collect();
    let capture = Arc::new(Mutex::new(Capture::default()));
    let phase = Arc::new(AtomicUsize::new(0));
    let forwards = Arc::new(Forwards {
        phase: phase.clone(),
        seen: Mutex::default(),
    });
    for (node, c) in configs.iter_mut().enumerate() {
        c.mailbox.policy.stamp_difficulty = 8;
        c.mailbox.publish_address = false;
        c.harness.transport = Transport::Tcp;
        c.harness.observer = Some(forwards.clone());
        let (capture, phase) = (capture.clone(), phase.clone());
        c.harness.wire_tap = Some(Arc::new(move |seen: WireBytes<'_>| {
            let Some(dialed) = seen.dialed else { return };
            let port = dialed
                .iter()
                .find_map(|p| match p {
                    Protocol::Tcp(port) => Some(port),
                    _ => None,
                })
                .unwrap_or(0);
            let mut capture = capture.lock().unwrap();
            let (_, flows) = capture
                .connections
                .entry((node, seen.connection))
                .or_insert_with(|| (port, Default::default()));
            let flow = &mut flows[usize::from(!seen.outbound)];
            flow.bytes.extend_from_slice(seen.bytes);
            let now = phase.load(Ordering::Relaxed) as u8;
            flow.phase
                .extend(std::iter::repeat_n(now, seen.bytes.len()));
        }));
    }
    // Nodes 7 and 8 are alice and bob; 0 to 6 relay.
    let (relays, alice, bob) = paths_network(&mut configs).await;

    // Bob is away; alice's deposits go into envelopes of 512, 1,024 and 2,048 bytes, one
    // size per phase. Then bob is back and fetches (phase 4).
    bob.shutdown().await;
    let mut sent = Vec::new();
    for (p, len) in [(1usize, 10usize), (2, 700), (3, 1500)] {
        phase.store(p, Ordering::Relaxed);
        for i in 0..3 {
            let text = format!("{i}{}", "x".repeat(len));
            alice.service().send("bob", &text).await.unwrap();
            sent.push(text);
            until_on_hosts(alice.service(), "bob").await;
        }
    }
    phase.store(4, Ordering::Relaxed);
    let bob = Node::start(&configs[8]).await.unwrap();
    until(120, "every message at bob", || async {
        texts(bob.service(), "alice").await.len() >= sent.len()
    })
    .await;
    assert_eq!(texts(bob.service(), "alice").await, sent);
    let relay_ids: Vec<Vec<u8>> = relays
        .iter()
        .map(|r| r.service().network().peer_id().to_bytes())
        .collect();
    bob.shutdown().await;
    alice.shutdown().await;
    for r in relays {
        r.shutdown().await;
    }
    // Cells a relay passed on to another relay, by phase.
    let mut passed: BTreeMap<u8, usize> = BTreeMap::new();
    for (phase, from, to) in forwards.seen.lock().unwrap().iter() {
        if relay_ids.contains(from) && relay_ids.contains(to) {
            *passed.entry(*phase).or_default() += 1;
        }
    }
    println!("cells passed between relays, by phase: {passed:?}");

    // Frames large enough to hold a cell, on links between two relays, by phase.
    let relay_ports: Vec<u16> = ports[..7].to_vec();
    let mut sizes: BTreeMap<u8, BTreeMap<usize, usize>> = BTreeMap::new();
    let mut small: BTreeMap<usize, usize> = BTreeMap::new();
    let capture = capture.lock().unwrap();
    let mut links = 0;
    for ((node, _), (port, flows)) in &capture.connections {
        if *node >= 7 || !relay_ports.contains(port) {
            continue;
        }
        links += 1;
        for flow in flows {
            for (len, phase) in noise_frames(flow) {
                if len >= onion::CELL {
                    *sizes.entry(phase).or_default().entry(len).or_default() += 1;
                } else {
                    *small.entry(len).or_default() += 1;
                }
            }
        }
    }
    println!("{links} relay-to-relay connections");
    for (phase, by_size) in &sizes {
        println!("phase {phase}: frames by size {by_size:?}");
    }
    let largest_small = small.keys().last().copied().unwrap_or(0);
    println!("largest smaller frame: {largest_small}");
    let all: BTreeSet<usize> = sizes.values().flat_map(|s| s.keys().copied()).collect();
    println!("all sizes: {all:?}");

    // A cell is one frame of one size: its 4,099 bytes, yamux's 12-byte header and Noise's
    // 16-byte tag; its answer one byte more. Each phase carried other requests inside.
    let cell_frame = onion::FRAME_BYTES + YAMUX_HEADER + NOISE_TAG;
    let answer_frame = onion::MAX_ANSWER_BYTES + YAMUX_HEADER + NOISE_TAG;
    let count = |size: usize| -> usize {
        sizes
            .values()
            .map(|s| s.get(&size).copied().unwrap_or(0))
            .sum()
    };
    for p in 1..=4u8 {
        assert!(
            passed.get(&p).copied().unwrap_or(0) > 0,
            "phase {p}: the relays passed cells on to each other: {passed:?}"
        );
        assert!(
            sizes.get(&p).is_some_and(|s| s.contains_key(&cell_frame)),
            "phase {p}: cells of {cell_frame} bytes on the wire: {sizes:?}"
        );
    }
    // Every cell the relays passed on to each other is one frame of exactly that size on
    // the wire, and so is every answer (a cell whose next hop went away in between is
    // passed on but never written: a little slack).
    let total: usize = passed.values().sum();
    let slack = (total / 20).max(2);
    for (what, size) in [("cells", cell_frame), ("answers", answer_frame)] {
        let frames = count(size);
        assert!(
            frames.abs_diff(total) <= slack,
            "{frames} frames of {size} bytes ({what}) for {total} cells passed on"
        );
    }
}

/// The bytes yamux puts in front of each frame of a stream's data.
const YAMUX_HEADER: usize = 12;
/// The bytes Noise adds to each transport message.
const NOISE_TAG: usize = 16;
