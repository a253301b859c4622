//! What the node counts of its traffic: application bytes on each of sotto's protocols
//! (frames, headers included; Noise, yamux and TCP/QUIC overhead not), its own Kademlia
//! lookups, and the Kademlia requests peers make of it. Read by `node.status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The counters, shared by the codecs, the DHT guard and the swarm task.
#[derive(Debug, Default)]
pub struct Traffic {
    pub envelope_in: AtomicU64,
    pub envelope_out: AtomicU64,
    pub mailbox_in: AtomicU64,
    pub mailbox_out: AtomicU64,
    /// Onion cells relayed, sent and answered (requests and replies, both ways).
    pub onion_in: AtomicU64,
    pub onion_out: AtomicU64,
    /// Chunks of blobs asked for and served (requests and answers, both ways).
    pub blob_in: AtomicU64,
    pub blob_out: AtomicU64,
    /// Kademlia closest-peer lookups this node finished, and how many requests they sent
    /// and how many of those were answered, in all.
    pub lookups: AtomicU64,
    pub lookup_requests: AtomicU64,
    pub lookup_successes: AtomicU64,
    /// Kademlia requests from peers, by kind (as [`super::dht::REQUESTS`]), answered or
    /// refused.
    pub dht_requests: [AtomicU64; 5],
    /// Kademlia requests from peers refused for being over their rate limit.
    pub dht_refused: AtomicU64,
}

/// Add `n` to a counter.
pub fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// The counters as `node.status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficView {
    pub envelope_in: u64,
    pub envelope_out: u64,
    pub mailbox_in: u64,
    pub mailbox_out: u64,
    pub onion_in: u64,
    pub onion_out: u64,
    pub blob_in: u64,
    pub blob_out: u64,
    pub lookups: u64,
    pub lookup_requests: u64,
    pub lookup_successes: u64,
    pub dht_requests: DhtRequestsView,
    pub dht_refused: u64,
}

/// Kademlia requests from peers, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DhtRequestsView {
    pub find_node: u64,
    pub get_providers: u64,
    pub add_provider: u64,
    pub get_record: u64,
    pub put_record: u64,
}

impl Traffic {
    /// A reading of every counter.
    pub fn view(&self) -> TrafficView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let dht = &self.dht_requests;
        TrafficView {
            envelope_in: get(&self.envelope_in),
            envelope_out: get(&self.envelope_out),
            mailbox_in: get(&self.mailbox_in),
            mailbox_out: get(&self.mailbox_out),
            onion_in: get(&self.onion_in),
            onion_out: get(&self.onion_out),
            blob_in: get(&self.blob_in),
            blob_out: get(&self.blob_out),
            lookups: get(&self.lookups),
            lookup_requests: get(&self.lookup_requests),
            lookup_successes: get(&self.lookup_successes),
            dht_requests: DhtRequestsView {
                find_node: get(&dht[0]),
                get_providers: get(&dht[1]),
                add_provider: get(&dht[2]),
                get_record: get(&dht[3]),
                put_record: get(&dht[4]),
            },
            dht_refused: get(&self.dht_refused),
        }
    }
}
