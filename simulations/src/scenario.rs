//! Scenario files: what one simulation run does, read from TOML.
//!
//! Every key is optional except `name`; unknown keys are refused, and every value is checked
//! with an error that names the file and the key (`churn.offline_share: must be between 0
//! and 1, got 1.5`). The fields and their defaults are documented in `docs/simulations.md`.
//!
//! ```
//! let s = sotto_sim::scenario::Scenario::parse("inline.toml", "name = \"tiny\"\n[network]\nnodes = 4\n")?;
//! assert_eq!(s.network.nodes, 4);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

/// One scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Seeds every random draw of the run: keys, traffic, churn, colluders.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How long the traffic model runs, in seconds.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// How long the run goes on after the last message is sent (every node online), so that
    /// what is on its way can arrive.
    #[serde(default = "default_drain")]
    pub drain_s: f64,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub mailbox: Mailbox,
    #[serde(default)]
    pub churn: Churn,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub adversary: Adversary,
    #[serde(default)]
    pub report: Report,
    #[serde(default)]
    pub groups: Groups,
}

/// One group chat among the nodes (the `groups` scenario): the first honest node after the
/// bootstrap nodes creates it with the next `members - 1` nodes, each of which has it as a
/// contact (so its invitation joins them at once); then `senders` members send
/// `messages_per_sender` messages each, and every member must get every message.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Groups {
    /// Members of the group, its creator included; 0: no group.
    pub members: usize,
    /// Members that send (the creator and the next ones).
    pub senders: usize,
    pub messages_per_sender: usize,
    /// Seconds between two sends, over all senders.
    pub send_interval_s: f64,
    /// How long every member may take to join, seconds.
    pub join_timeout_s: f64,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            members: 0,
            senders: 4,
            messages_per_sender: 5,
            send_interval_s: 1.0,
            join_timeout_s: 300.0,
        }
    }
}

fn default_seed() -> u64 {
    1
}
fn default_duration() -> f64 {
    30.0
}
fn default_drain() -> f64 {
    20.0
}

/// The nodes and their links.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub nodes: usize,
    pub transport: TransportKind,
    /// The first nodes, which the others join through. They never churn.
    pub bootstrap_nodes: usize,
    /// One-way delay of every link, milliseconds.
    pub latency_ms: f64,
    /// Extra delay drawn uniformly from 0 to this, milliseconds.
    pub jitter_ms: f64,
    /// Share of chunks held back one retransmission timeout.
    pub loss: f64,
    /// Nodes started at once while the network is built.
    pub start_batch: usize,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            nodes: 16,
            transport: TransportKind::Memory,
            bootstrap_nodes: 2,
            latency_ms: 0.0,
            jitter_ms: 0.0,
            loss: 0.0,
            start_batch: 16,
        }
    }
}

/// The transport the nodes speak.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// libp2p's in-process memory transport.
    Memory,
    /// TCP on 127.0.0.1.
    Tcp,
}

/// Store-and-forward settings of every node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mailbox {
    /// How long a dead-drop address lasts, seconds (the simulation's start is epoch 0).
    pub epoch_s: f64,
    pub fetch_interval_ms: u64,
    pub replicas: usize,
    /// Never send directly: every message goes through mailboxes.
    pub mailbox_only: bool,
    /// Proof-of-work difficulty of first-contact deposits (leading zero bits).
    pub stamp_difficulty: u8,
    /// How long hosts keep envelopes, seconds.
    pub ttl_s: f64,
    /// Nodes do their mailbox work through private paths (guard, middle, exit), as daemons
    /// do by default; `false`: from their own PeerIds.
    pub private_paths: bool,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            epoch_s: 60.0,
            fetch_interval_ms: 5_000,
            replicas: 3,
            mailbox_only: false,
            stamp_difficulty: 8,
            ttl_s: 3_600.0,
            private_paths: true,
        }
    }
}

/// Nodes going offline and coming back.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Share of the time a churning node is offline (0: no churn).
    pub offline_share: f64,
    /// How long a node stays online, on average, seconds.
    pub session_mean_s: f64,
    pub session: Distribution,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            offline_share: 0.0,
            session_mean_s: 30.0,
            session: Distribution::Exponential,
        }
    }
}

/// How session lengths are drawn around their mean.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Exponential,
    Fixed,
}

/// Who talks to whom, how often, and how much.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Conversations (pairs that added each other); 0 means one per two nodes.
    pub conversations: usize,
    /// Messages per second over the whole network (Poisson), each in a random conversation
    /// and direction.
    pub rate: f64,
    /// Smallest and largest message, bytes of text (drawn uniformly).
    pub size_min: usize,
    pub size_max: usize,
    /// Share of nodes that are offline for the whole traffic phase (they only receive, and
    /// come back for the drain).
    pub offline_recipients: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            conversations: 0,
            rate: 1.0,
            size_min: 20,
            size_max: 400,
            offline_recipients: 0.0,
        }
    }
}

/// Colluding observers and spammers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adversary {
    /// Shares of colluding nodes to report the privacy figures for (each from the same run).
    pub fractions: Vec<f64>,
    /// Nodes that deposit junk, `spam_rate` a second each.
    pub spammers: usize,
    /// Deposits per second per spammer.
    pub spam_rate: f64,
}

impl Default for Adversary {
    fn default() -> Self {
        Adversary {
            fractions: vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.4],
            spammers: 0,
            spam_rate: 0.0,
        }
    }
}

/// What the report measures.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Report {
    /// Delivery within these deadlines, seconds.
    pub deadlines_s: Vec<f64>,
    /// How often hosted storage is sampled, seconds.
    pub sample_s: f64,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            deadlines_s: vec![5.0, 30.0],
            sample_s: 2.0,
        }
    }
}

/// The most nodes a scenario may ask for.
pub const MAX_NODES: usize = 5_000;

impl Scenario {
    /// Read and check the scenario file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parse and check a scenario; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => anyhow!("{origin}: {key}: {}", e.message().trim_end()),
                None => anyhow!("{origin}: {}", e.message().trim_end()),
            }
        })?;
        scenario.check().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(scenario)
    }

    /// Check every value; the error names the key.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.name.trim().is_empty() {
            bail!("name: must not be empty");
        }
        positive("duration_s", self.duration_s)?;
        non_negative("drain_s", self.drain_s)?;
        let n = &self.network;
        if n.nodes < 2 || n.nodes > MAX_NODES {
            bail!(
                "network.nodes: must be between 2 and {MAX_NODES}, got {}",
                n.nodes
            );
        }
        if n.bootstrap_nodes < 1 || n.bootstrap_nodes > n.nodes {
            bail!(
                "network.bootstrap_nodes: must be between 1 and network.nodes ({}), got {}",
                n.nodes,
                n.bootstrap_nodes
            );
        }
        if n.start_batch < 1 {
            bail!("network.start_batch: must be at least 1, got 0");
        }
        non_negative("network.latency_ms", n.latency_ms)?;
        non_negative("network.jitter_ms", n.jitter_ms)?;
        share("network.loss", n.loss)?;
        let m = &self.mailbox;
        positive("mailbox.epoch_s", m.epoch_s)?;
        if m.epoch_s < 1.0 {
            bail!("mailbox.epoch_s: must be at least 1, got {}", m.epoch_s);
        }
        if m.fetch_interval_ms < 100 {
            bail!(
                "mailbox.fetch_interval_ms: must be at least 100, got {}",
                m.fetch_interval_ms
            );
        }
        if m.replicas < 1 || m.replicas > 20 {
            bail!(
                "mailbox.replicas: must be between 1 and 20, got {}",
                m.replicas
            );
        }
        if m.stamp_difficulty > 32 {
            bail!(
                "mailbox.stamp_difficulty: must be at most 32, got {}",
                m.stamp_difficulty
            );
        }
        positive("mailbox.ttl_s", m.ttl_s)?;
        let c = &self.churn;
        share("churn.offline_share", c.offline_share)?;
        if c.offline_share >= 1.0 {
            bail!(
                "churn.offline_share: must be below 1, got {}",
                c.offline_share
            );
        }
        positive("churn.session_mean_s", c.session_mean_s)?;
        let t = &self.traffic;
        non_negative("traffic.rate", t.rate)?;
        if t.size_min < 1 || t.size_min > t.size_max {
            bail!(
                "traffic.size_min: must be at least 1 and at most traffic.size_max ({}), got {}",
                t.size_max,
                t.size_min
            );
        }
        if t.size_max > sotto_protocol::content::MAX_TEXT_BYTES {
            bail!(
                "traffic.size_max: must be at most {}, got {}",
                sotto_protocol::content::MAX_TEXT_BYTES,
                t.size_max
            );
        }
        share("traffic.offline_recipients", t.offline_recipients)?;
        let a = &self.adversary;
        for f in &a.fractions {
            share("adversary.fractions", *f)?;
        }
        non_negative("adversary.spam_rate", a.spam_rate)?;
        if a.spammers + n.bootstrap_nodes >= n.nodes {
            bail!(
                "adversary.spammers: leaves no honest node besides the bootstrap nodes ({} of {})",
                a.spammers,
                n.nodes
            );
        }
        let honest = self.honest_nodes();
        if self.conversations() > honest * (honest - 1) / 2 {
            bail!(
                "traffic.conversations: at most {} pairs among {honest} honest nodes, got {}",
                honest * (honest - 1) / 2,
                t.conversations
            );
        }
        for d in &self.report.deadlines_s {
            positive("report.deadlines_s", *d)?;
        }
        positive("report.sample_s", self.report.sample_s)?;
        let g = &self.groups;
        if g.members > 0 {
            if g.members < 2 || g.members > sotto_protocol::group::MAX_MEMBERS {
                bail!(
                    "groups.members: must be between 2 and {}, got {}",
                    sotto_protocol::group::MAX_MEMBERS,
                    g.members
                );
            }
            if g.members > honest.saturating_sub(n.bootstrap_nodes) {
                bail!(
                    "groups.members: at most the {} honest nodes besides the bootstrap nodes, got {}",
                    honest.saturating_sub(n.bootstrap_nodes),
                    g.members
                );
            }
            if g.senders < 1 || g.senders > g.members {
                bail!(
                    "groups.senders: must be between 1 and groups.members ({}), got {}",
                    g.members,
                    g.senders
                );
            }
            non_negative("groups.send_interval_s", g.send_interval_s)?;
            positive("groups.join_timeout_s", g.join_timeout_s)?;
        }
        Ok(())
    }

    /// Nodes that are neither spammers (the last ones).
    pub fn honest_nodes(&self) -> usize {
        self.network.nodes - self.adversary.spammers
    }

    /// How many conversations the run makes.
    pub fn conversations(&self) -> usize {
        if self.traffic.conversations == 0 {
            (self.honest_nodes() / 2).max(1)
        } else {
            self.traffic.conversations
        }
    }

    pub fn epoch_ms(&self) -> u64 {
        (self.mailbox.epoch_s * 1000.0) as u64
    }
}

/// The dotted key (`traffic.rate`) of the line that holds byte `at` of `text`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || !line.contains('=') {
        return None;
    }
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_owned(),
    })
}

fn non_negative(key: &str, v: f64) -> anyhow::Result<()> {
    if !v.is_finite() || v < 0.0 {
        bail!("{key}: must be ≥ 0, got {v}");
    }
    Ok(())
}

fn positive(key: &str, v: f64) -> anyhow::Result<()> {
    if !v.is_finite() || v <= 0.0 {
        bail!("{key}: must be > 0, got {v}");
    }
    Ok(())
}

fn share(key: &str, v: f64) -> anyhow::Result<()> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        bail!("{key}: must be between 0 and 1, got {v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Scenario::parse("bad.toml", text) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} scenarios in {}", dir.display());
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = err("name = \"x\"\n[traffic]\nrate = 1\nratio = 2\n");
        assert!(
            e.starts_with("bad.toml: traffic.ratio: unknown field `ratio`"),
            "{e}"
        );
        let e = err("name = \"x\"\nnodes = 3\n");
        assert!(
            e.starts_with("bad.toml: nodes: unknown field `nodes`"),
            "{e}"
        );
    }

    #[test]
    fn a_negative_rate_is_refused_by_key() {
        let e = err("name = \"x\"\n[traffic]\nrate = -1\n");
        assert_eq!(e, "bad.toml: traffic.rate: must be ≥ 0, got -1");
    }

    #[test]
    fn a_colluding_fraction_above_one_is_refused_by_key() {
        let e = err("name = \"x\"\n[adversary]\nfractions = [0.1, 1.5]\n");
        assert_eq!(
            e,
            "bad.toml: adversary.fractions: must be between 0 and 1, got 1.5"
        );
    }

    #[test]
    fn other_bad_values_name_their_key() {
        for (text, key) in [
            ("[churn]\noffline_share = 1.0", "churn.offline_share"),
            ("[network]\nloss = 2", "network.loss"),
            ("[network]\nnodes = 1", "network.nodes"),
            ("[mailbox]\nreplicas = 0", "mailbox.replicas"),
            (
                "[traffic]\nsize_min = 500\nsize_max = 10",
                "traffic.size_min",
            ),
            ("duration_s = 0", "duration_s"),
            ("[report]\ndeadlines_s = [-5]", "report.deadlines_s"),
        ] {
            let e = err(&format!("name = \"x\"\n{text}\n"));
            assert!(e.contains(&format!(" {key}: ")), "{text}: {e}");
        }
        // A value of the wrong type is named by serde with its key.
        let e = err("name = \"x\"\n[network]\ntransport = \"carrier-pigeon\"\n");
        assert!(e.contains("transport"), "{e}");
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let s = Scenario::parse("ok.toml", "name = \"x\"\n").unwrap();
        assert_eq!(s.network.nodes, 16);
        assert_eq!(s.conversations(), 8);
        assert_eq!(s.epoch_ms(), 60_000);
    }
}
