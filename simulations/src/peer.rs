//! One node of a scenario run: a real sotto daemon ([`Node`]) in a temporary directory, on an
//! in-process memory address (`/memory/N`) or a loopback TCP port, that the run can stop and
//! start again at the same address, with the same store and the same keys.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use sotto_daemon::config::Config;
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use tempfile::TempDir;

/// How long a node may take to report that it listens on its address.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The next `/memory/N` port: memory addresses are global to the process, so runs in one
/// process (tests) never share one.
static NEXT_MEMORY: AtomicU64 = AtomicU64::new(1);

/// `n` fresh `/memory/N` addresses.
pub fn memory_addrs(n: usize) -> Vec<Multiaddr> {
    let first = NEXT_MEMORY.fetch_add(n as u64, Ordering::Relaxed);
    (0..n as u64)
        .map(|i| Multiaddr::empty().with(Protocol::Memory(first + i)))
        .collect()
}

/// A node's traffic counters (see `sotto_daemon::net::Traffic`), summed over restarts.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub envelope_in: u64,
    pub envelope_out: u64,
    pub mailbox_in: u64,
    pub mailbox_out: u64,
    /// Onion cells sent and relayed (requests and replies).
    pub onion_in: u64,
    pub onion_out: u64,
    pub lookups: u64,
    pub lookup_requests: u64,
    pub lookup_successes: u64,
}

impl Totals {
    pub fn read(t: &sotto_daemon::net::Traffic) -> Totals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            envelope_in: get(&t.envelope_in),
            envelope_out: get(&t.envelope_out),
            mailbox_in: get(&t.mailbox_in),
            mailbox_out: get(&t.mailbox_out),
            onion_in: get(&t.onion_in),
            onion_out: get(&t.onion_out),
            lookups: get(&t.lookups),
            lookup_requests: get(&t.lookup_requests),
            lookup_successes: get(&t.lookup_successes),
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.envelope_in += o.envelope_in;
        self.envelope_out += o.envelope_out;
        self.mailbox_in += o.mailbox_in;
        self.mailbox_out += o.mailbox_out;
        self.onion_in += o.onion_in;
        self.onion_out += o.onion_out;
        self.lookups += o.lookups;
        self.lookup_requests += o.lookup_requests;
        self.lookup_successes += o.lookup_successes;
    }

    /// Bytes this node sent on sotto's protocols (frames, onion cells as relay and as
    /// sender included; not Noise, yamux, Kademlia).
    pub fn bytes_out(&self) -> u64 {
        self.envelope_out + self.mailbox_out + self.onion_out
    }
}

/// One node of a run.
pub struct Peer {
    pub name: String,
    listen: Multiaddr,
    config: Config,
    peer_id: Option<PeerId>,
    /// Counters of the sessions that ended (a restarted node counts from zero).
    traffic: Totals,
    // Before `dir`: a node dropped on an error path lets go of its store first.
    node: Option<Node>,
    dir: TempDir,
}

impl Peer {
    /// A stopped node with a new private temporary directory, listening on `listen`
    /// whenever it runs; `configure` sets the rest of its [`Config`].
    pub fn new(
        name: &str,
        listen: Multiaddr,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Peer> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sotto-sim-{name}-"))
            .tempdir()
            .context("cannot create a temporary directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.path().display()))?;
        let mut config = Config {
            data_dir: dir.path().join("data"),
            socket: dir.path().join("s.sock"),
            listen: vec![listen.clone()],
            bootstrap: Vec::new(),
            announce: Vec::new(),
            mailbox: Default::default(),
            harness: Default::default(),
            limits: Default::default(),
            keys: Default::default(),
        };
        configure(&mut config);
        Ok(Peer {
            name: name.to_owned(),
            listen,
            config,
            peer_id: None,
            traffic: Totals::default(),
            node: None,
            dir,
        })
    }

    pub fn peer_id(&self) -> Option<PeerId> {
        self.peer_id
    }

    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// Where others reach this node, once it has started once.
    pub fn dial_addr(&self) -> Option<Multiaddr> {
        self.peer_id
            .map(|p| self.listen.clone().with(Protocol::P2p(p)))
    }

    /// The nodes to join through, from the next start on.
    pub fn set_bootstrap(&mut self, bootstrap: Vec<Multiaddr>) {
        self.config.bootstrap = bootstrap;
    }

    /// Start the daemon (again) and wait until it listens on its address.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.node.is_some() {
            bail!("{} is already running", self.name);
        }
        // A restarted node comes back at a new `/memory/N`, as a real one might come back at
        // a new IP address (the figures in docs/simulations.md were measured so; a stopped
        // node frees its old address, so keeping it would also work). TCP nodes keep their
        // port.
        if self.peer_id.is_some() && is_memory(&self.listen) {
            if let Some(fresh) = memory_addrs(1).pop() {
                self.listen = fresh.clone();
                self.config.listen = vec![fresh];
            }
        }
        let node = Node::start(&self.config)
            .await
            .with_context(|| format!("cannot start {}", self.name))?;
        let network = node.service().network().clone();
        self.peer_id = Some(network.peer_id());
        self.node = Some(node);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let status = network
                .status()
                .await
                .with_context(|| format!("{}'s network task stopped", self.name))?;
            if status
                .listen_addrs
                .iter()
                .any(|a| listens_on(a, &self.listen))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {} within {} s",
                    self.name,
                    self.listen,
                    LISTEN_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the daemon, if it runs, and wait until its store is released.
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            self.traffic
                .add(&Totals::read(node.service().network().traffic()));
            node.shutdown().await;
        }
    }

    /// The running node's service (a cheap handle; do not keep it while the node may stop).
    pub fn service(&self) -> anyhow::Result<Service> {
        self.node
            .as_ref()
            .map(|n| n.service().clone())
            .ok_or_else(|| anyhow!("{} is not running", self.name))
    }

    /// The running node's mailbox host.
    pub fn host(&self) -> anyhow::Result<std::sync::Arc<sotto_daemon::mailbox::Host>> {
        self.node
            .as_ref()
            .map(|n| n.host().clone())
            .ok_or_else(|| anyhow!("{} is not running", self.name))
    }

    /// Traffic counters over every session so far.
    pub fn traffic(&self) -> Totals {
        let mut t = self.traffic;
        if let Some(node) = &self.node {
            t.add(&Totals::read(node.service().network().traffic()));
        }
        t
    }

    /// Stop the node and remove its directory (the node cannot start again).
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let path = self.dir.path();
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

fn is_memory(addr: &Multiaddr) -> bool {
    matches!(addr.iter().next(), Some(Protocol::Memory(_)))
}

/// Does the listen address `reported` stand for `wanted` (TCP port 0 aside, they are equal)?
fn listens_on(reported: &Multiaddr, wanted: &Multiaddr) -> bool {
    reported == wanted
}
