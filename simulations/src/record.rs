//! What a run recorded: the nodes, the conversations, every message, what mailbox hosts saw,
//! and samples over time. The figures ([`crate::figures`]) and the privacy analysis
//! ([`crate::privacy`]) are computed from this alone.

use std::sync::Mutex;

use serde::Serialize;
use sotto_daemon::link::{
    ExitSeen, HostAction, HostEvent, MailboxKind, Observer, RelayEvent, RelayStep,
};

use crate::peer::Totals;

/// What a node was in the run.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Never churns; the others join through it.
    Bootstrap,
    Honest,
    /// Offline for the whole traffic phase.
    OfflineRecipient,
    Spammer,
}

/// One node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRecord {
    pub name: String,
    pub peer_id: String,
    pub role: Role,
    pub traffic: Totals,
    /// Envelopes and bytes it hosted at the end, and the most bytes seen in a sample.
    pub hosted_envelopes: u64,
    pub hosted_bytes: u64,
    pub hosted_bytes_max: u64,
    /// Deposits it refused as a host (quotas, bad proofs, expired).
    pub rejections: u64,
    pub restarts: u64,
    /// Peers it was connected to when the figures were collected.
    pub connections: usize,
}

/// How a message travelled.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Straight to the recipient's node.
    Direct,
    /// Deposited at mailbox hosts (the sender saw `message.on_hosts`).
    Mailbox,
    /// Not delivered.
    None,
}

/// One message the traffic model sent.
#[derive(Clone, Debug, Serialize)]
pub struct MessageRecord {
    pub conversation: usize,
    pub from: usize,
    pub to: usize,
    /// Text bytes.
    pub size: usize,
    /// When it was sent, ms after the traffic phase began.
    pub at_ms: u64,
    pub recipient_online: bool,
    pub id: String,
    /// Absolute times (ms since the Unix epoch).
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub path: Path,
    /// Extra copies the recipient listed.
    pub duplicates: usize,
}

impl MessageRecord {
    pub fn latency_ms(&self) -> Option<u64> {
        self.received_at.map(|r| r.saturating_sub(self.sent_at))
    }
}

/// One request a host answered, with nodes named by index.
#[derive(Clone, Debug, Serialize)]
pub struct Observation {
    pub at_ms: u64,
    pub host: usize,
    /// The asking node; `None` if it is not a node of the run.
    pub peer: Option<usize>,
    pub kind: Kind,
    #[serde(skip)]
    pub address: [u8; 32],
    /// Deposit: envelope bytes; fetch: envelopes returned; delete: envelopes removed.
    pub amount: usize,
    /// Deposit stored.
    pub stored: bool,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deposit,
    Fetch,
    Delete,
}

impl From<MailboxKind> for Kind {
    fn from(k: MailboxKind) -> Self {
        match k {
            MailboxKind::Deposit => Kind::Deposit,
            MailboxKind::Fetch => Kind::Fetch,
            MailboxKind::Delete => Kind::Delete,
        }
    }
}

/// One onion cell a relay peeled, with nodes named by index (`None`: not a node of the run).
#[derive(Clone, Debug)]
pub struct RelayObservation {
    pub at_ms: u64,
    pub relay: usize,
    pub prev: Option<usize>,
    /// The relay's place on the path (0 = first), as it reads it off the layer.
    pub hop: Option<usize>,
    pub step: Step,
}

/// What a relay did with a cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Forward {
        next: Option<usize>,
    },
    /// As the exit: a lookup of an address's hosts.
    Lookup {
        address: [u8; 32],
    },
    /// As the exit: a mailbox request at `address` for `host`.
    Mailbox {
        host: Option<usize>,
        kind: Kind,
        address: [u8; 32],
    },
    /// As the exit: one part of a request in parts.
    Part,
}

/// A sample of the network, every `report.sample_s`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds after the traffic phase began.
    pub t_s: f64,
    pub online: usize,
    pub hosted_bytes: u64,
    pub hosted_envelopes: u64,
    pub hosted_bytes_max: u64,
    /// Process resident memory, KiB.
    pub rss_kib: u64,
}

/// What the spammers did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpamRecord {
    pub attempts: u64,
    pub stored: u64,
    pub refused: u64,
    pub failed: u64,
    /// Refusals by reason.
    pub refusals: std::collections::BTreeMap<String, u64>,
}

/// Durations and resources of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    pub start_ms: u64,
    /// How long each setup step took, ms: nodes started, self-lookups, accounts, contacts
    /// added, presence exchanged.
    pub setup_steps: Vec<(String, u64)>,
    pub setup_ms: u64,
    /// How much later than planned the traffic began (0 when setup fit its budget).
    pub setup_overrun_ms: u64,
    pub traffic_ms: u64,
    pub drain_ms: u64,
    pub collect_ms: u64,
    pub wall_ms: u64,
    /// Peak resident memory of the process (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Threads of the process at the end of the traffic phase.
    pub threads: u64,
    /// Open file descriptors at the end of the traffic phase.
    pub fds: u64,
}

/// Everything a run recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub nodes: Vec<NodeRecord>,
    /// Node indices of each conversation.
    pub conversations: Vec<(usize, usize)>,
    /// Conversations whose two nodes had exchanged their presence before traffic began.
    pub conversations_ready: usize,
    pub messages: Vec<MessageRecord>,
    /// Sends skipped because both nodes of the conversation were offline.
    pub skipped: usize,
    /// Sends the sender's node refused (an error, not a delivery failure).
    pub send_errors: usize,
    #[serde(skip)]
    pub observations: Vec<Observation>,
    /// Every onion cell any node relayed.
    #[serde(skip)]
    pub relay_observations: Vec<RelayObservation>,
    /// Host events the recorder could not keep ([`MAX_EVENTS`] reached).
    pub observations_dropped: u64,
    pub samples: Vec<Sample>,
    pub spam: SpamRecord,
    pub restarts: usize,
    pub failed_restarts: usize,
    /// Epoch 0 begins here (ms since the Unix epoch): the start of the traffic phase.
    pub epoch_origin_ms: u64,
    /// When the traffic phase really began.
    pub traffic_start_ms: u64,
    pub timing: Timing,
    /// The group scenario's figures, when the scenario has a group.
    pub group: Option<GroupFigures>,
}

/// What the group of a `groups` scenario did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupFigures {
    pub members: usize,
    /// Members that had joined when the messages began.
    pub joined: usize,
    /// From the first invitation until every member had joined (or the timeout), ms.
    pub join_ms: u64,
    pub messages: usize,
    /// Deliveries wanted: each message to every other member.
    pub expected: usize,
    pub delivered: usize,
    /// Send → stored at the member, ms, one per delivery (summarised in `figures`).
    #[serde(skip)]
    pub latencies_ms: Vec<u64>,
    /// Bytes the senders sent on sotto's protocols while sending, per message, and the same
    /// for the members that did not send over the same time (their relaying and fetching:
    /// what a sender's figure holds besides its own messages).
    pub sender_bytes_per_message: u64,
    pub non_sender_bytes_per_message_time: u64,
    /// Cells the senders sent into paths of their own while sending, per message, less
    /// what a member that did not send sent over the same time (its fetch rounds): what the
    /// messages themselves cost their senders, each cell 4,099 bytes.
    pub sender_cells_per_message: f64,
    /// Hosted bytes over every node, after the messages less before, per message.
    pub hosted_bytes_per_message: u64,
    /// Group envelopes each member fetched and refused (from non-members, not opening).
    pub dropped: u64,
    /// From the first message until the senders' group outboxes were empty (every envelope
    /// on its hosts), ms; `None`: not within the drain.
    pub outboxes_empty_ms: Option<u64>,
    /// At the end: members with messages that wait for their sender's key, and those
    /// messages in all.
    pub members_waiting_for_keys: usize,
    pub messages_waiting_for_keys: usize,
}

/// The observer every node of a run shares: it keeps every mailbox request any node answered,
/// so that any set of colluders can be given their share afterwards.
pub struct Recorder {
    events: Mutex<Vec<HostEvent>>,
    relays: Mutex<Relays>,
    /// The most events kept.
    capacity: usize,
    /// Events not kept because the recorder was full (reported with the privacy figures,
    /// which are then computed on part of what the colluders saw).
    dropped: std::sync::atomic::AtomicU64,
}

/// Relay events, kept small: PeerIds are interned as they come (a run has few of them).
#[derive(Default)]
struct Relays {
    ids: std::collections::HashMap<Vec<u8>, u32>,
    names: Vec<Vec<u8>>,
    events: Vec<RawRelay>,
}

struct RawRelay {
    at_ms: u64,
    relay: u32,
    prev: u32,
    hop: Option<u8>,
    step: RawStep,
}

enum RawStep {
    Forward(u32),
    Lookup([u8; 32]),
    Mailbox(u32, Kind, [u8; 32]),
    Part,
}

impl Relays {
    fn id(&mut self, peer: Vec<u8>) -> u32 {
        if let Some(&i) = self.ids.get(&peer) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(peer.clone());
        self.ids.insert(peer, i);
        i
    }
}

/// The most host events a recorder keeps (about 200 bytes each).
pub const MAX_EVENTS: usize = 4_000_000;

impl Observer for Recorder {
    fn host_event(&self, event: HostEvent) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() < self.capacity {
                events.push(event);
            } else {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn relay_event(&self, event: RelayEvent) {
        let Ok(mut r) = self.relays.lock() else {
            return;
        };
        if r.events.len() >= self.capacity {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let relay = r.id(event.relay);
        let prev = r.id(event.prev);
        let step = match event.step {
            RelayStep::Forward { next } => RawStep::Forward(r.id(next)),
            RelayStep::Exit { request: None } => RawStep::Part,
            RelayStep::Exit {
                request: Some(ExitSeen::Hosts { address }),
            } => RawStep::Lookup(address),
            RelayStep::Exit {
                request:
                    Some(ExitSeen::Mailbox {
                        host,
                        kind,
                        address,
                    }),
            } => RawStep::Mailbox(r.id(host), kind.into(), address),
        };
        r.events.push(RawRelay {
            at_ms: event.at_ms,
            relay,
            prev,
            hop: event.hop.and_then(|h| u8::try_from(h).ok()),
            step,
        });
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::with_capacity(MAX_EVENTS)
    }
}

impl Recorder {
    /// A recorder that keeps at most `capacity` events.
    pub fn with_capacity(capacity: usize) -> Self {
        Recorder {
            events: Mutex::default(),
            relays: Mutex::default(),
            capacity,
            dropped: Default::default(),
        }
    }

    /// Events not kept because the recorder was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything recorded, with nodes named by their index in `peers` (PeerId bytes).
    pub fn take(&self, peers: &[Vec<u8>]) -> Vec<Observation> {
        let index: std::collections::HashMap<&[u8], usize> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i))
            .collect();
        let events = match self.events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => return Vec::new(),
        };
        events
            .into_iter()
            .filter_map(|e| {
                let host = *index.get(e.host.as_slice())?;
                let peer = index.get(e.peer.as_slice()).copied();
                let (kind, address, amount, stored) = match e.action {
                    HostAction::Deposit {
                        address,
                        size,
                        stored,
                    } => (Kind::Deposit, address, size, stored),
                    HostAction::Fetch { address, envelopes } => {
                        (Kind::Fetch, address, envelopes, false)
                    }
                    HostAction::Delete { address, count } => (Kind::Delete, address, count, false),
                };
                Some(Observation {
                    at_ms: e.at_ms,
                    host,
                    peer,
                    kind,
                    address,
                    amount,
                    stored,
                })
            })
            .collect()
    }
}

impl Recorder {
    /// How many cells each of `origins` (PeerId bytes) sent into a path of its own between
    /// `from_ms` and `to_ms`: cells its guard took from it as first relay.
    pub fn own_cells(&self, origins: &[Vec<u8>], from_ms: u64, to_ms: u64) -> Vec<u64> {
        let Ok(r) = self.relays.lock() else {
            return vec![0; origins.len()];
        };
        origins
            .iter()
            .map(|o| {
                let Some(&id) = r.ids.get(o) else {
                    return 0;
                };
                r.events
                    .iter()
                    .filter(|e| {
                        e.prev == id && e.hop == Some(0) && (from_ms..=to_ms).contains(&e.at_ms)
                    })
                    .count() as u64
            })
            .collect()
    }

    /// Every relay event recorded, with nodes named by their index in `peers`.
    pub fn take_relays(&self, peers: &[Vec<u8>]) -> Vec<RelayObservation> {
        let index: std::collections::HashMap<&[u8], usize> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i))
            .collect();
        let r = match self.relays.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => return Vec::new(),
        };
        let node = |id: u32| -> Option<usize> {
            r.names
                .get(id as usize)
                .and_then(|p| index.get(p.as_slice()).copied())
        };
        r.events
            .iter()
            .filter_map(|e| {
                Some(RelayObservation {
                    at_ms: e.at_ms,
                    relay: node(e.relay)?,
                    prev: node(e.prev),
                    hop: e.hop.map(usize::from),
                    step: match e.step {
                        RawStep::Forward(next) => Step::Forward { next: node(next) },
                        RawStep::Lookup(address) => Step::Lookup { address },
                        RawStep::Mailbox(host, kind, address) => Step::Mailbox {
                            host: node(host),
                            kind,
                            address,
                        },
                        RawStep::Part => Step::Part,
                    },
                })
            })
            .collect()
    }
}

/// This process's resident memory now and at its peak (VmRSS, VmHWM), KiB, and its threads.
pub fn process_memory() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

/// Open file descriptors of this process.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod recorder_tests {
    use super::*;

    #[test]
    fn a_full_recorder_counts_what_it_drops() {
        let recorder = Recorder::with_capacity(2);
        for i in 0..5u8 {
            recorder.host_event(HostEvent {
                at_ms: u64::from(i),
                host: vec![1],
                peer: vec![2],
                action: HostAction::Fetch {
                    address: [i; 32],
                    envelopes: 0,
                },
            });
        }
        assert_eq!(recorder.dropped(), 3);
        assert_eq!(recorder.take(&[vec![1], vec![2]]).len(), 2);
    }
}
