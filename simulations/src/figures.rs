//! The figures of a run: delivery, latency, bytes, storage, lookups and privacy, as the
//! JSON summary carries them.

use serde::Serialize;

use crate::privacy;
use crate::record::{Path, Role, Run};
use crate::scenario::Scenario;

/// The code that ran: the crate version and, if known when it was built, the git commit.
pub fn code_version() -> String {
    format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        option_env!("SOTTO_SIM_GIT_COMMIT").unwrap_or("unknown")
    )
}

/// p50, p90, p99 and the count of a set of latencies, ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Latency {
    pub fn of(mut v: Vec<u64>) -> Latency {
        v.sort_unstable();
        let at = |q: f64| -> u64 {
            if v.is_empty() {
                return 0;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Latency {
            count: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: v.last().copied().unwrap_or(0),
        }
    }
}

/// Delivery within one deadline.
#[derive(Clone, Debug, Serialize)]
pub struct Within {
    pub deadline_s: f64,
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// Messages accepted by their sender's node.
    pub sent: usize,
    pub delivered: usize,
    /// Sends attempted: `sent` and `send_errors` (the denominator of `ratio`).
    pub attempted: usize,
    /// Delivered before the run ended (the hosts' TTL is longer than the run), of those
    /// attempted: a send that failed or timed out counts as not delivered.
    pub ratio: f64,
    pub within: Vec<Within>,
    pub duplicates: usize,
    /// Sent while the recipient's node was offline.
    pub to_offline: usize,
    pub to_offline_delivered: usize,
    pub skipped: usize,
    pub send_errors: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bytes {
    /// Text bytes of the messages sent.
    pub payload: u64,
    /// Bytes all nodes sent on sotto's protocols (envelope and mailbox frames).
    pub on_links: u64,
    /// `on_links / payload`.
    pub amplification: f64,
    pub per_node_mean: f64,
    pub per_node_max: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Storage {
    /// Bytes hosted per node at the end: mean and max; and the most one node held in a sample.
    pub final_mean: f64,
    pub final_max: u64,
    pub peak_max: u64,
    pub envelopes_final: u64,
    /// Deposits refused by hosts.
    pub rejections: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Lookups {
    pub lookups: u64,
    /// Kademlia requests sent per closest-peer lookup (libp2p reports requests and answers
    /// per lookup, not hops).
    pub requests_per_lookup: f64,
    pub successes_per_lookup: f64,
    pub log2_n: f64,
}

/// The JSON summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub code_version: String,
    pub nodes: usize,
    pub conversations: usize,
    pub conversations_ready: usize,
    pub settings: Scenario,
    pub delivery: Delivery,
    pub latency_direct: Latency,
    pub latency_mailbox: Latency,
    pub latency_all: Latency,
    pub bytes: Bytes,
    pub storage: Storage,
    pub lookups: Lookups,
    pub privacy: Vec<privacy::Figures>,
    /// Host events the colluders' recorder could not keep: when not zero, the privacy
    /// figures are computed on part of what the colluders saw.
    pub observations_dropped: u64,
    pub spam: crate::record::SpamRecord,
    /// Honest messages' delivery and latency, for the spam scenario's comparison.
    pub restarts: usize,
    pub failed_restarts: usize,
    pub timing: crate::record::Timing,
    /// The group scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSummary>,
}

/// The group scenario's figures, with its deliveries' latency.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSummary {
    #[serde(flatten)]
    pub run: crate::record::GroupFigures,
    pub latency: Latency,
}

pub fn summarise(scenario: &Scenario, seed: u64, run: &Run) -> Summary {
    let msgs = &run.messages;
    let delivered: Vec<_> = msgs.iter().filter(|m| m.received_at.is_some()).collect();
    let sent = msgs.len();
    let attempted = sent + run.send_errors;
    let ratio = |k: usize| {
        if attempted == 0 {
            0.0
        } else {
            k as f64 / attempted as f64
        }
    };
    let within = scenario
        .report
        .deadlines_s
        .iter()
        .map(|d| Within {
            deadline_s: *d,
            ratio: ratio(
                delivered
                    .iter()
                    .filter(|m| m.latency_ms().is_some_and(|l| l as f64 <= d * 1000.0))
                    .count(),
            ),
        })
        .collect();
    let lat = |p: Option<Path>| {
        Latency::of(
            delivered
                .iter()
                .filter(|m| p.is_none_or(|p| m.path == p))
                .filter_map(|m| m.latency_ms())
                .collect(),
        )
    };
    let payload: u64 = msgs.iter().map(|m| m.size as u64).sum();
    let honest: Vec<_> = run
        .nodes
        .iter()
        .filter(|n| n.role != Role::Spammer)
        .collect();
    let on_links: u64 = honest.iter().map(|n| n.traffic.bytes_out()).sum();
    let hosted: Vec<u64> = honest.iter().map(|n| n.hosted_bytes).collect();
    let lookups: u64 = run.nodes.iter().map(|n| n.traffic.lookups).sum();
    let requests: u64 = run.nodes.iter().map(|n| n.traffic.lookup_requests).sum();
    let successes: u64 = run.nodes.iter().map(|n| n.traffic.lookup_successes).sum();
    let per_lookup = |x: u64| {
        if lookups == 0 {
            0.0
        } else {
            x as f64 / lookups as f64
        }
    };
    let to_offline: Vec<_> = msgs.iter().filter(|m| !m.recipient_online).collect();
    Summary {
        scenario: scenario.name.clone(),
        seed,
        code_version: code_version(),
        nodes: run.nodes.len(),
        conversations: run.conversations.len(),
        conversations_ready: run.conversations_ready,
        settings: scenario.clone(),
        delivery: Delivery {
            sent,
            delivered: delivered.len(),
            attempted,
            ratio: ratio(delivered.len()),
            within,
            duplicates: msgs.iter().map(|m| m.duplicates).sum(),
            to_offline: to_offline.len(),
            to_offline_delivered: to_offline
                .iter()
                .filter(|m| m.received_at.is_some())
                .count(),
            skipped: run.skipped,
            send_errors: run.send_errors,
        },
        latency_direct: lat(Some(Path::Direct)),
        latency_mailbox: lat(Some(Path::Mailbox)),
        latency_all: lat(None),
        bytes: Bytes {
            payload,
            on_links,
            amplification: if payload == 0 {
                0.0
            } else {
                on_links as f64 / payload as f64
            },
            per_node_mean: on_links as f64 / honest.len().max(1) as f64,
            per_node_max: honest
                .iter()
                .map(|n| n.traffic.bytes_out())
                .max()
                .unwrap_or(0),
        },
        storage: Storage {
            final_mean: hosted.iter().sum::<u64>() as f64 / hosted.len().max(1) as f64,
            final_max: hosted.iter().copied().max().unwrap_or(0),
            peak_max: honest.iter().map(|n| n.hosted_bytes_max).max().unwrap_or(0),
            envelopes_final: honest.iter().map(|n| n.hosted_envelopes).sum(),
            rejections: honest.iter().map(|n| n.rejections).sum(),
        },
        lookups: Lookups {
            lookups,
            requests_per_lookup: per_lookup(requests),
            successes_per_lookup: per_lookup(successes),
            log2_n: (run.nodes.len() as f64).log2(),
        },
        privacy: privacy::analyse(
            run,
            seed,
            &scenario.adversary.fractions,
            scenario.mailbox.replicas,
            scenario.epoch_ms(),
            scenario.mailbox.fetch_interval_ms,
        ),
        observations_dropped: run.observations_dropped,
        spam: run.spam.clone(),
        restarts: run.restarts,
        failed_restarts: run.failed_restarts,
        timing: run.timing.clone(),
        group: run.group.clone().map(|g| GroupSummary {
            latency: Latency::of(g.latencies_ms.clone()),
            run: g,
        }),
    }
}
