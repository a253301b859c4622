//! The run: start the scenario's nodes in this process, join them into one Kademlia
//! network, make the conversations, drive the traffic model, churn nodes, let spammers
//! loose, drain, and collect what happened. Every wait is bounded; every node started is
//! stopped and its directory removed, also when the run fails.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use sotto_daemon::clock::unix_ms as now_ms;
use sotto_daemon::link::{Harness, LinkModel, Transport};
use sotto_daemon::service::Service;
use sotto_protocol::deaddrop::DropKey;
use sotto_protocol::mailbox::{Deposit, DepositAuth, Request, Response};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::peer::{memory_addrs, Peer};
use crate::record::{
    open_fds, process_memory, MessageRecord, NodeRecord, Path, Recorder, Role, Run, Sample,
    SpamRecord, Timing,
};
use crate::scenario::{Distribution, Scenario, TransportKind};

/// How long one send may take to be accepted by the sender's node.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to start or stop.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the run waits for work still in flight after the drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Spam deposits in flight per spammer, at most.
const SPAM_IN_FLIGHT: usize = 32;

/// How the run reports while it goes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Show a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

type Shared = Arc<Mutex<Peer>>;

/// One planned send.
#[derive(Clone, Debug)]
struct Send {
    at_ms: u64,
    conversation: usize,
    /// Which node of the pair writes (0 or 1), if it is online.
    side: usize,
    size: usize,
}

/// A node going offline or coming back.
#[derive(Clone, Debug)]
struct Toggle {
    at_ms: u64,
    node: usize,
    online: bool,
}

/// The seed of node `i`'s keys.
fn node_seed(seed: u64, i: usize) -> u64 {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw of `distribution` with `mean`.
fn draw(rng: &mut StdRng, distribution: Distribution, mean: f64) -> f64 {
    match distribution {
        Distribution::Fixed => mean,
        Distribution::Exponential => -mean * (1.0 - rng.gen::<f64>()).ln(),
    }
}

/// Run `scenario`.
pub async fn run(scenario: &Scenario, options: &Options) -> anyhow::Result<Run> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let recorder = Arc::new(Recorder::default());
    let start_ms = now_ms();
    let n = scenario.network.nodes;
    let setup_budget_ms = (2_000 + 60 * n as u64 + 2 * scenario.mailbox.fetch_interval_ms)
        .max(scenario.mailbox.fetch_interval_ms);
    let epoch_origin_ms = start_ms + setup_budget_ms;
    let peers = build_peers(scenario, seed, epoch_origin_ms, &recorder)?;
    let progress = Progress::new(options.progress, scenario, setup_budget_ms);
    let mut world = World {
        scenario,
        seed,
        peers: peers.clone(),
        recorder,
        epoch_origin_ms,
        start_ms,
        progress,
    };
    let outcome = tokio::select! {
        r = world.run() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    world.progress.finish();
    drop(world);
    let mut problems = Vec::new();
    for chunk in peers.chunks(16) {
        // A few at a time: each flushes its store.
        let mut closing = JoinSet::new();
        for peer in chunk {
            let peer = peer.clone();
            closing.spawn(async move {
                let mut p = peer.lock().await;
                let name = p.name.clone();
                tokio::time::timeout(LIFECYCLE_TIMEOUT, p.close())
                    .await
                    .map_err(|_| anyhow!("{name} did not stop in time"))?
            });
        }
        while let Some(r) = closing.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("{e:#}")),
                Err(e) => problems.push(format!("a task failed: {e}")),
            }
        }
    }
    let run = outcome?;
    if !problems.is_empty() {
        // The run's figures are complete by now: a node that is slow to stop on an
        // overloaded machine must not throw them away (a 28-minute run did).
        tracing::warn!("cleaning up after the run: {}", problems.join("; "));
        eprintln!(
            "sotto-sim: warning: {} node(s) did not stop cleanly after the run; the figures stand",
            problems.len()
        );
    }
    Ok(run)
}

/// Every node, stopped, with its configuration.
fn build_peers(
    scenario: &Scenario,
    seed: u64,
    epoch_origin_ms: u64,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<Vec<Shared>> {
    let n = scenario.network.nodes;
    let listen: Vec<Multiaddr> = match scenario.network.transport {
        TransportKind::Memory => memory_addrs(n),
        TransportKind::Tcp => crate::node::free_ports(n)?
            .into_iter()
            .map(|p| format!("/ip4/127.0.0.1/tcp/{p}").parse())
            .collect::<Result<_, _>>()
            .context("cannot build a loopback address")?,
    };
    let net = &scenario.network;
    let mb = &scenario.mailbox;
    let mut peers = Vec::with_capacity(n);
    for (i, addr) in listen.into_iter().enumerate() {
        let observer: Arc<dyn sotto_daemon::link::Observer> = recorder.clone();
        let peer = Peer::new(&node_name(i), addr, |config| {
            config.mailbox.epoch_ms = scenario.epoch_ms();
            config.mailbox.epoch_origin_ms = epoch_origin_ms;
            config.mailbox.fetch_interval_ms = mb.fetch_interval_ms;
            config.mailbox.replicas = mb.replicas;
            config.mailbox.mailbox_only = mb.mailbox_only;
            config.mailbox.private_paths = mb.private_paths;
            config.mailbox.publish_address = !mb.mailbox_only;
            config.mailbox.policy.stamp_difficulty = mb.stamp_difficulty;
            config.mailbox.policy.ttl_ms = (mb.ttl_s * 1000.0) as u64;
            // Every node of a TCP run is on 127.0.0.1: one address, many hosts.
            config.limits.max_connections_per_ip = u32::MAX;
            config.limits.envelope_per_ip = sotto_daemon::limits::Rate::per_minute(u32::MAX);
            config.harness = Harness {
                transport: match net.transport {
                    TransportKind::Memory => Transport::Memory,
                    TransportKind::Tcp => Transport::Tcp,
                },
                link: LinkModel {
                    latency: Duration::from_secs_f64(net.latency_ms / 1000.0),
                    jitter: Duration::from_secs_f64(net.jitter_ms / 1000.0),
                    loss: net.loss,
                    seed: node_seed(seed ^ 0x6c69_6e6b, i),
                },
                observer: Some(observer),
                wire_tap: None,
                tamper: None,
                seed: Some(node_seed(seed, i)),
            };
        })?;
        peers.push(Arc::new(Mutex::new(peer)));
    }
    Ok(peers)
}

pub fn node_name(i: usize) -> String {
    format!("n{i:04}")
}

/// The run's state.
pub(crate) struct World<'a> {
    pub(crate) scenario: &'a Scenario,
    seed: u64,
    pub(crate) peers: Vec<Shared>,
    pub(crate) recorder: Arc<Recorder>,
    epoch_origin_ms: u64,
    start_ms: u64,
    pub(crate) progress: Progress,
}

/// The plan drawn from the seed: who talks to whom, when, and who goes offline.
struct Plan {
    roles: Vec<Role>,
    conversations: Vec<(usize, usize)>,
    sends: Vec<Send>,
    toggles: Vec<Toggle>,
}

impl World<'_> {
    fn plan(&self) -> Plan {
        let s = self.scenario;
        let n = s.network.nodes;
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x706c_616e);
        let honest = s.honest_nodes();
        let mut roles: Vec<Role> = (0..n)
            .map(|i| {
                if i < s.network.bootstrap_nodes {
                    Role::Bootstrap
                } else if i >= honest {
                    Role::Spammer
                } else {
                    Role::Honest
                }
            })
            .collect();
        // Conversations: a random matching of the honest nodes, then random extra pairs.
        let mut order: Vec<usize> = (0..honest).collect();
        order.shuffle(&mut rng);
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut seen: HashSet<(usize, usize)> = HashSet::new();
        let wanted = s.conversations();
        for chunk in order.chunks(2) {
            if let [a, b] = chunk {
                if pairs.len() < wanted && seen.insert(((*a).min(*b), (*a).max(*b))) {
                    pairs.push((*a, *b));
                }
            }
        }
        let mut tries = 0;
        while pairs.len() < wanted && tries < wanted * 100 {
            tries += 1;
            let a = rng.gen_range(0..honest);
            let b = rng.gen_range(0..honest);
            if a != b && seen.insert((a.min(b), a.max(b))) {
                pairs.push((a, b));
            }
        }
        // Offline recipients: one non-bootstrap node in that share of the conversations.
        let offline_count = (s.traffic.offline_recipients * pairs.len() as f64).round() as usize;
        let mut picks: Vec<usize> = (0..pairs.len()).collect();
        picks.shuffle(&mut rng);
        for &c in picks.iter().take(offline_count) {
            let (a, b) = pairs[c];
            let node = if roles[b] == Role::Honest { b } else { a };
            if roles[node] == Role::Honest {
                roles[node] = Role::OfflineRecipient;
            }
        }
        // Sends: a Poisson process over the whole network, moved away from epoch
        // boundaries so that every deposit of a message lands in the epoch it was sent in.
        let duration_ms = (s.duration_s * 1000.0) as u64;
        let epoch = s.epoch_ms();
        let guard = (epoch / 5).min(2_000);
        let mut sends = Vec::new();
        if s.traffic.rate > 0.0 {
            let mut t = 0.0f64;
            loop {
                t += draw(&mut rng, Distribution::Exponential, 1000.0 / s.traffic.rate);
                if t >= duration_ms as f64 || sends.len() >= 10_000_000 {
                    break;
                }
                let mut at = t as u64;
                let into = at % epoch;
                if into < guard {
                    at += guard - into;
                } else if into > epoch - guard {
                    at += epoch - into + guard;
                }
                if at >= duration_ms {
                    continue;
                }
                sends.push(Send {
                    at_ms: at,
                    conversation: rng.gen_range(0..pairs.len().max(1)),
                    side: rng.gen_range(0..2),
                    size: rng.gen_range(s.traffic.size_min..=s.traffic.size_max),
                });
            }
            sends.sort_by_key(|x| x.at_ms);
        }
        // Churn: alternate sessions and absences so that a node is offline the given share
        // of the time.
        let mut toggles = Vec::new();
        let share = s.churn.offline_share;
        if share > 0.0 {
            let away_mean = s.churn.session_mean_s * share / (1.0 - share);
            for (node, role) in roles.iter().enumerate() {
                if *role != Role::Honest {
                    continue;
                }
                // Start at a random point of an on/off cycle.
                let mut online = rng.gen::<f64>() >= share;
                let mut t = 1000.0
                    * if online {
                        draw(&mut rng, s.churn.session, s.churn.session_mean_s)
                    } else {
                        draw(&mut rng, s.churn.session, away_mean)
                    };
                if !online {
                    toggles.push(Toggle {
                        at_ms: 0,
                        node,
                        online: false,
                    });
                }
                while t < duration_ms as f64 {
                    online = !online;
                    toggles.push(Toggle {
                        at_ms: t as u64,
                        node,
                        online,
                    });
                    let mean = if online {
                        s.churn.session_mean_s
                    } else {
                        away_mean
                    };
                    t += 1000.0 * draw(&mut rng, s.churn.session, mean).max(0.5);
                }
            }
            toggles.sort_by_key(|x| x.at_ms);
        }
        Plan {
            roles,
            conversations: pairs,
            sends,
            toggles,
        }
    }

    async fn run(&mut self) -> anyhow::Result<Run> {
        let plan = self.plan();
        let mut steps = Vec::new();
        let setup_start = now_ms();
        // Each step's time: since the setup began, less the steps before it.
        let step = |name: &str, steps: &mut Vec<(String, u64)>| {
            let before: u64 = steps.iter().map(|(_, ms)| ms).sum();
            let since = now_ms().saturating_sub(setup_start);
            steps.push((name.to_owned(), since.saturating_sub(before)));
        };
        self.progress.phase("starting nodes");
        self.start_network(&plan.roles, &mut steps).await?;
        step("self-lookups", &mut steps);
        self.progress.phase("accounts and cards");
        let cards = self.create_accounts().await?;
        step("accounts", &mut steps);
        self.make_conversations(&plan.conversations, &cards).await?;
        step("contacts", &mut steps);
        let group_setup = if self.scenario.groups.members > 0 {
            self.progress.phase("making the group");
            let setup = self.group_setup(&cards).await?;
            step("group joined", &mut steps);
            Some(setup)
        } else {
            None
        };
        self.progress.phase("presence exchange");
        let ready = self.await_presence(&plan.conversations).await;
        step("presence", &mut steps);
        let setup_done = now_ms();
        // Traffic begins at an epoch boundary: the planned one, or the next one if the
        // setup overran its budget.
        let epoch = self.scenario.epoch_ms();
        let traffic_start = if setup_done <= self.epoch_origin_ms {
            self.epoch_origin_ms
        } else {
            let late = setup_done - self.epoch_origin_ms;
            self.epoch_origin_ms + late.div_ceil(epoch) * epoch
        };
        tokio::time::sleep(Duration::from_millis(
            traffic_start.saturating_sub(now_ms()),
        ))
        .await;
        let mut timing = Timing {
            start_ms: self.start_ms,
            setup_ms: setup_done - self.start_ms,
            setup_overrun_ms: traffic_start - self.epoch_origin_ms,
            setup_steps: steps,
            ..Default::default()
        };

        self.progress.phase("traffic");
        let traffic = self.traffic(&plan, traffic_start).await?;
        let group = match &group_setup {
            Some(setup) => {
                self.progress.phase("group messages");
                Some(self.group_traffic(setup).await?)
            }
            None => None,
        };
        let (_, _, threads) = process_memory();
        timing.threads = threads;
        timing.fds = open_fds();
        timing.traffic_ms = now_ms() - traffic_start;

        self.progress.phase("drain");
        let drain_start = now_ms();
        // A group's messages were waited for already (at most the drain).
        let drain_until = if group.is_some() {
            drain_start
        } else {
            drain_start + (self.scenario.drain_s * 1000.0) as u64
        };
        let mut restarts = traffic.restarts;
        let mut failed_restarts = traffic.failed_restarts;
        for (i, peer) in self.peers.iter().enumerate() {
            let mut p = peer.lock().await;
            if !p.is_running() {
                match tokio::time::timeout(LIFECYCLE_TIMEOUT, p.start()).await {
                    Ok(Ok(())) => restarts += 1,
                    Ok(Err(e)) => {
                        failed_restarts += 1;
                        tracing::warn!("{}: {e:#}", node_name(i));
                    }
                    Err(_) => failed_restarts += 1,
                }
            }
        }
        let sampler = self.spawn_sampler(
            traffic_start,
            traffic.samples.clone(),
            traffic.hosted_max.clone(),
        );
        tokio::time::sleep(Duration::from_millis(drain_until.saturating_sub(now_ms()))).await;
        sampler.abort();
        timing.drain_ms = now_ms() - drain_start;

        self.progress.phase("collecting");
        let collect_start = now_ms();
        let (messages, nodes) = self
            .collect(
                &plan,
                traffic.sent,
                &traffic.restarts_by_node,
                &traffic.hosted_max,
            )
            .await?;
        timing.collect_ms = now_ms() - collect_start;
        let peer_ids: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for p in &self.peers {
                v.push(
                    p.lock()
                        .await
                        .peer_id()
                        .map(|p| p.to_bytes())
                        .unwrap_or_default(),
                );
            }
            v
        };
        let observations = self.recorder.take(&peer_ids);
        let relay_observations = self.recorder.take_relays(&peer_ids);
        let (_, peak, _) = process_memory();
        timing.peak_rss_kib = peak;
        timing.wall_ms = now_ms() - self.start_ms;
        let samples = traffic
            .samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let spam = traffic.spam.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(Run {
            nodes,
            conversations: plan.conversations.clone(),
            conversations_ready: ready,
            messages,
            skipped: traffic.skipped,
            send_errors: traffic.send_errors,
            observations,
            relay_observations,
            observations_dropped: self.recorder.dropped(),
            samples,
            spam,
            restarts,
            failed_restarts,
            epoch_origin_ms: self.epoch_origin_ms,
            traffic_start_ms: traffic_start,
            timing,
            group,
        })
    }

    /// Start the bootstrap nodes one by one, then the rest in batches, then let every node
    /// look itself up once so that routing tables fill.
    async fn start_network(
        &mut self,
        roles: &[Role],
        steps: &mut Vec<(String, u64)>,
    ) -> anyhow::Result<()> {
        let started = now_ms();
        let b = self.scenario.network.bootstrap_nodes;
        let mut bootstrap: Vec<Multiaddr> = Vec::new();
        for peer in self.peers.iter().take(b) {
            let mut p = peer.lock().await;
            p.set_bootstrap(bootstrap.clone());
            tokio::time::timeout(LIFECYCLE_TIMEOUT, p.start())
                .await
                .map_err(|_| anyhow!("{} did not start in time", p.name))??;
            bootstrap.extend(p.dial_addr());
            self.progress.tick();
        }
        let batch = self.scenario.network.start_batch;
        for chunk in self.peers[b..].chunks(batch) {
            let mut set = JoinSet::new();
            for peer in chunk {
                let peer = peer.clone();
                let bootstrap = bootstrap.clone();
                set.spawn(async move {
                    let mut p = peer.lock().await;
                    p.set_bootstrap(bootstrap);
                    tokio::time::timeout(LIFECYCLE_TIMEOUT, p.start())
                        .await
                        .map_err(|_| anyhow!("{} did not start in time", p.name))?
                });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| anyhow!("a start task failed: {e}"))??;
            }
            self.progress.tick();
        }
        let _ = roles;
        steps.push(("nodes started".to_owned(), now_ms() - started));
        // One self-lookup per node, a few at a time (what Kademlia's bootstrap does).
        for chunk in self.peers.chunks(32) {
            let mut set = JoinSet::new();
            for peer in chunk {
                let service = peer.lock().await.service()?;
                set.spawn(async move {
                    let me = service.network().peer_id().to_bytes();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(20),
                        service.network().closest_peers(&me),
                    )
                    .await;
                });
            }
            while set.join_next().await.is_some() {}
            self.progress.tick();
        }
        Ok(())
    }

    async fn create_accounts(&mut self) -> anyhow::Result<Vec<String>> {
        let mut cards = Vec::with_capacity(self.peers.len());
        for (i, peer) in self.peers.iter().enumerate() {
            let service = peer.lock().await.service()?;
            let account = service
                .create_account(&node_name(i))
                .await
                .with_context(|| format!("{}: cannot create the account", node_name(i)))?;
            cards.push(account.card);
        }
        Ok(cards)
    }

    /// Each pair adds each other, in the plan's order (so that the seeded inbox secrets
    /// are the same on every run).
    async fn make_conversations(
        &mut self,
        conversations: &[(usize, usize)],
        cards: &[String],
    ) -> anyhow::Result<()> {
        for &(a, b) in conversations {
            for (me, other) in [(a, b), (b, a)] {
                let service = self.peers[me].lock().await.service()?;
                service
                    .add_contact(&cards[other], Some(&node_name(other)))
                    .await
                    .with_context(|| {
                        format!("{} cannot add {}", node_name(me), node_name(other))
                    })?;
            }
        }
        Ok(())
    }

    /// Wait until both nodes of every conversation know the other's inbox secret (their
    /// presences crossed), at most a bounded time. Returns how many are ready.
    async fn await_presence(&mut self, conversations: &[(usize, usize)]) -> usize {
        let limit = Duration::from_millis(
            30_000 + 4 * self.scenario.mailbox.fetch_interval_ms + 100 * conversations.len() as u64,
        );
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending: Vec<(usize, usize)> = conversations.to_vec();
        loop {
            let mut still = Vec::new();
            for &(a, b) in &pending {
                if !(self.knows_inbox(a, b).await && self.knows_inbox(b, a).await) {
                    still.push((a, b));
                }
            }
            pending = still;
            self.progress.tick();
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !pending.is_empty() {
            tracing::warn!(
                "{} conversations had not exchanged presence when traffic began",
                pending.len()
            );
        }
        conversations.len() - pending.len()
    }

    async fn knows_inbox(&self, me: usize, other: usize) -> bool {
        let Ok(service) = self.peers[me].lock().await.service() else {
            return false;
        };
        service
            .resolve(&node_name(other))
            .map(|(_, c)| c.their_inbox.is_some())
            .unwrap_or(false)
    }

    /// Sample hosted storage and memory every `report.sample_s` into `samples`.
    fn spawn_sampler(
        &self,
        traffic_start: u64,
        samples: Arc<StdMutex<Vec<Sample>>>,
        hosted_max: Arc<StdMutex<Vec<u64>>>,
    ) -> tokio::task::JoinHandle<()> {
        let peers = self.peers.clone();
        let every = Duration::from_secs_f64(self.scenario.report.sample_s);
        tokio::spawn(async move {
            loop {
                let sample = sample(&peers, traffic_start, &hosted_max).await;
                if let Ok(mut s) = samples.lock() {
                    s.push(sample);
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// The traffic phase: sends, churn and spam, in time order.
    async fn traffic(&mut self, plan: &Plan, start: u64) -> anyhow::Result<Traffic> {
        let n = self.peers.len();
        let mut online = vec![true; n];
        let mut out = Traffic {
            samples: Arc::default(),
            spam: Arc::default(),
            hosted_max: Arc::new(StdMutex::new(vec![0u64; n])),
            restarts_by_node: Arc::new(StdMutex::new(vec![0u64; n])),
            ..Default::default()
        };
        // Offline recipients go away now.
        let mut lifecycle: JoinSet<bool> = JoinSet::new();
        for (i, role) in plan.roles.iter().enumerate() {
            if *role == Role::OfflineRecipient {
                online[i] = false;
                let peer = self.peers[i].clone();
                lifecycle.spawn(async move {
                    let _ = tokio::time::timeout(LIFECYCLE_TIMEOUT, peer.lock().await.stop()).await;
                    true
                });
            }
        }
        let sampler = self.spawn_sampler(start, out.samples.clone(), out.hosted_max.clone());
        // Spammers.
        let mut spam_tasks = Vec::new();
        let a = &self.scenario.adversary;
        if a.spammers > 0 && a.spam_rate > 0.0 {
            for (i, role) in plan.roles.iter().enumerate() {
                if *role == Role::Spammer {
                    let service = self.peers[i].lock().await.service()?;
                    spam_tasks.push(tokio::spawn(spam(
                        service,
                        a.spam_rate,
                        (self.scenario.mailbox.ttl_s * 1000.0) as u64,
                        node_seed(self.seed ^ 0x7370_616d, i),
                        out.spam.clone(),
                    )));
                }
            }
        }
        // Sends and toggles in time order.
        let mut sends: JoinSet<Option<MessageRecord>> = JoinSet::new();
        let mut text_rng = StdRng::seed_from_u64(self.seed ^ 0x7465_7874);
        let (mut si, mut ti) = (0, 0);
        loop {
            let next_send = plan.sends.get(si).map(|s| s.at_ms);
            let next_toggle = plan.toggles.get(ti).map(|t| t.at_ms);
            let (at, is_send) = match (next_send, next_toggle) {
                (None, None) => break,
                (Some(s), Some(t)) if t <= s => (t, false),
                (Some(s), _) => (s, true),
                (None, Some(t)) => (t, false),
            };
            let due = start + at;
            tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await;
            self.progress.set_traffic(at);
            if is_send {
                let send = &plan.sends[si];
                si += 1;
                let (a, b) = plan.conversations[send.conversation];
                let (mut from, mut to) = if send.side == 0 { (a, b) } else { (b, a) };
                if plan.roles[from] == Role::OfflineRecipient || !online[from] {
                    std::mem::swap(&mut from, &mut to);
                }
                if !online[from] {
                    out.skipped += 1;
                    continue;
                }
                let text: String = (0..send.size)
                    .map(|_| char::from(b'a' + text_rng.gen_range(0..26u8)))
                    .collect();
                let peer = self.peers[from].clone();
                let record = MessageRecord {
                    conversation: send.conversation,
                    from,
                    to,
                    size: send.size,
                    at_ms: at,
                    recipient_online: online[to],
                    id: String::new(),
                    sent_at: 0,
                    received_at: None,
                    path: Path::None,
                    duplicates: 0,
                };
                sends.spawn(async move {
                    let service = peer.lock().await.service().ok()?;
                    let sent = tokio::time::timeout(
                        SEND_TIMEOUT,
                        service.send(&node_name(record.to), &text),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    Some(MessageRecord {
                        id: sent.id,
                        sent_at: sent.sent_at,
                        ..record
                    })
                });
            } else {
                let toggle = plan.toggles[ti].clone();
                ti += 1;
                if online[toggle.node] == toggle.online {
                    continue;
                }
                online[toggle.node] = toggle.online;
                let peer = self.peers[toggle.node].clone();
                let counts = out.restarts_by_node.clone();
                lifecycle.spawn(async move {
                    let mut p = peer.lock().await;
                    if toggle.online {
                        let ok = matches!(
                            tokio::time::timeout(LIFECYCLE_TIMEOUT, p.start()).await,
                            Ok(Ok(()))
                        );
                        if ok {
                            if let Ok(mut c) = counts.lock() {
                                c[toggle.node] += 1;
                            }
                        }
                        ok
                    } else {
                        let _ = tokio::time::timeout(LIFECYCLE_TIMEOUT, p.stop()).await;
                        true
                    }
                });
            }
        }
        let end = start + (self.scenario.duration_s * 1000.0) as u64;
        tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms()))).await;
        for t in &spam_tasks {
            t.abort();
        }
        sampler.abort();
        let settle = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while let Ok(Some(r)) = tokio::time::timeout_at(settle, sends.join_next()).await {
            match r {
                Ok(Some(m)) => out.sent.push(m),
                _ => out.send_errors += 1,
            }
        }
        while let Ok(Some(r)) = tokio::time::timeout_at(settle, lifecycle.join_next()).await {
            match r {
                Ok(true) => {}
                _ => out.failed_restarts += 1,
            }
        }
        out.restarts = out
            .restarts_by_node
            .lock()
            .map(|c| c.iter().sum::<u64>() as usize)
            .unwrap_or(0);
        out.sent.sort_by_key(|m| m.at_ms);
        Ok(out)
    }

    /// Read every node's messages, events and hosting figures.
    async fn collect(
        &mut self,
        plan: &Plan,
        mut sent: Vec<MessageRecord>,
        restarts: &Arc<StdMutex<Vec<u64>>>,
        hosted_max: &Arc<StdMutex<Vec<u64>>>,
    ) -> anyhow::Result<(Vec<MessageRecord>, Vec<NodeRecord>)> {
        // By recipient and message id: a copy of an id at another node is not a delivery.
        let mut received: HashMap<(usize, String), (u64, usize)> = HashMap::new();
        let mut on_hosts: HashSet<String> = HashSet::new();
        let mut nodes = Vec::with_capacity(self.peers.len());
        let restarts = restarts.lock().map(|r| r.clone()).unwrap_or_default();
        let hosted_max = hosted_max.lock().map(|r| r.clone()).unwrap_or_default();
        for (i, peer) in self.peers.iter().enumerate() {
            let p = peer.lock().await;
            let mut record = NodeRecord {
                name: p.name.clone(),
                peer_id: p.peer_id().map(|p| p.to_string()).unwrap_or_default(),
                role: plan.roles[i],
                traffic: p.traffic(),
                hosted_envelopes: 0,
                hosted_bytes: 0,
                hosted_bytes_max: hosted_max.get(i).copied().unwrap_or(0),
                rejections: 0,
                restarts: restarts.get(i).copied().unwrap_or(0),
                connections: 0,
            };
            if let Ok(service) = p.service() {
                if let Ok(status) = service.network().status().await {
                    record.connections = status.connected_peers.len();
                }
                for m in service.messages(None, None)? {
                    if m.direction == "in" {
                        let e = received.entry((i, m.id)).or_insert((u64::MAX, 0));
                        e.0 = e.0.min(m.received_at.unwrap_or(u64::MAX));
                        e.1 += 1;
                    }
                }
                for event in service.events().since(0, sotto_daemon::store::MAX_EVENTS)? {
                    if event["kind"] == "message.on_hosts" {
                        if let Some(id) = event["message"]["id"].as_str() {
                            on_hosts.insert(id.to_owned());
                        }
                    }
                }
                let stats = p.host()?.stats()?;
                record.hosted_envelopes = stats.envelopes;
                record.hosted_bytes = stats.bytes;
                record.rejections = stats.rejections;
                record.hosted_bytes_max = record.hosted_bytes_max.max(record.hosted_bytes);
            }
            nodes.push(record);
        }
        for m in &mut sent {
            if let Some((at, copies)) = received.get(&(m.to, m.id.clone())) {
                if *at != u64::MAX {
                    m.received_at = Some(*at);
                }
                m.duplicates = copies.saturating_sub(1);
                m.path = if on_hosts.contains(&m.id) {
                    Path::Mailbox
                } else {
                    Path::Direct
                };
            }
        }
        Ok((sent, nodes))
    }
}

/// What the traffic phase produced.
#[derive(Default)]
struct Traffic {
    sent: Vec<MessageRecord>,
    skipped: usize,
    send_errors: usize,
    restarts: usize,
    failed_restarts: usize,
    samples: Arc<StdMutex<Vec<Sample>>>,
    spam: Arc<StdMutex<SpamRecord>>,
    hosted_max: Arc<StdMutex<Vec<u64>>>,
    restarts_by_node: Arc<StdMutex<Vec<u64>>>,
}

/// One sample of hosted storage over the running nodes.
async fn sample(peers: &[Shared], start: u64, hosted_max: &Arc<StdMutex<Vec<u64>>>) -> Sample {
    let mut s = Sample {
        t_s: now_ms().saturating_sub(start) as f64 / 1000.0,
        ..Default::default()
    };
    for (i, peer) in peers.iter().enumerate() {
        let Ok(p) = tokio::time::timeout(Duration::from_millis(200), peer.lock()).await else {
            continue;
        };
        let Ok(host) = p.host() else {
            continue;
        };
        drop(p);
        s.online += 1;
        if let Ok(stats) = host.stats() {
            let bytes = stats.bytes;
            s.hosted_bytes += bytes;
            s.hosted_envelopes += stats.envelopes;
            s.hosted_bytes_max = s.hosted_bytes_max.max(bytes);
            if let Ok(mut m) = hosted_max.lock() {
                if let Some(v) = m.get_mut(i) {
                    *v = (*v).max(bytes);
                }
            }
        }
    }
    s.rss_kib = process_memory().0;
    s
}

/// A spammer: deposits of random junk at random (valid) dead drops, `rate` a second, each at
/// a peer it is connected to, through the real `/sotto/mailbox/1` protocol.
async fn spam(
    service: Service,
    rate: f64,
    ttl_ms: u64,
    seed: u64,
    record: Arc<StdMutex<SpamRecord>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let slots = Arc::new(tokio::sync::Semaphore::new(SPAM_IN_FLIGHT));
    let mut targets: Vec<libp2p::PeerId> = Vec::new();
    let mut refreshed = tokio::time::Instant::now() - Duration::from_secs(10);
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next += gap;
        if refreshed.elapsed() >= Duration::from_secs(1) {
            if let Ok(status) = service.network().status().await {
                targets = status.connected_peers;
            }
            refreshed = tokio::time::Instant::now();
        }
        let Some(target) = targets.get(rng.gen_range(0..targets.len().max(1))).copied() else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Every slot busy: the hosts are slower than the spammer; count it as dropped.
            if let Ok(mut r) = record.lock() {
                r.attempts += 1;
                r.failed += 1;
            }
            continue;
        };
        let mut envelope = vec![0u8; 512];
        rng.fill(envelope.as_mut_slice());
        let key = DropKey::generate(&mut rng);
        let expires_at = now_ms() + ttl_ms;
        let digest = sotto_protocol::envelope::digest(&envelope);
        let deposit = Deposit {
            address: key.address(),
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
            envelope,
            expires_at,
        };
        let service = service.clone();
        let record = record.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                service
                    .network()
                    .mailbox(target, Vec::new(), &Request::Deposit(deposit)),
            )
            .await;
            drop(permit);
            if let Ok(mut r) = record.lock() {
                r.attempts += 1;
                match answer {
                    Ok(Ok(Response::Stored | Response::AlreadyStored)) => r.stored += 1,
                    Ok(Ok(Response::Refused(why))) => {
                        r.refused += 1;
                        *r.refusals.entry(format!("{why:?}")).or_default() += 1;
                    }
                    Ok(Ok(_)) | Ok(Err(_)) | Err(_) => r.failed += 1,
                }
            }
        });
    }
}

/// The progress bar (on a terminal only).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    duration_ms: u64,
}

impl Progress {
    fn new(enabled: bool, scenario: &Scenario, _setup_ms: u64) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new((scenario.duration_s * 1000.0) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:40}] {percent:>3}% {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            duration_ms: (scenario.duration_s * 1000.0) as u64,
        }
    }

    fn phase(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_owned());
        }
    }

    pub(crate) fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.tick();
        }
    }

    fn set_traffic(&self, at_ms: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(at_ms.min(self.duration_ms));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
