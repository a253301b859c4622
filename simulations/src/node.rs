//! One simulated node: a real sotto daemon — its swarm, its store, its outbox worker and its
//! control socket — in a temporary directory, listening on a fixed loopback TCP port so that
//! it can be stopped and started again at the address its contacts hold from its card.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use libp2p::{Multiaddr, PeerId};
use sotto_daemon::config::Config;
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use tempfile::TempDir;

/// How long a node may take to report that it listens on its address.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A node that the simulation can start, stop and start again.
pub struct SimNode {
    name: String,
    listen: Multiaddr,
    config: Config,
    peer_id: Option<PeerId>,
    // Declared before `dir` so that a node dropped on an error path lets go of its store
    // before the directory is removed.
    node: Option<Node>,
    dir: TempDir,
}

/// `n` distinct TCP ports on 127.0.0.1 that nothing listens on right now.
///
/// All probes stay bound until every port is chosen: a probe dropped at once could be handed
/// out again, and libp2p listens with `SO_REUSEPORT`, so two nodes would then silently share
/// one port.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut probes = Vec::with_capacity(n);
    for _ in 0..n {
        probes.push(
            std::net::TcpListener::bind("127.0.0.1:0")
                .context("cannot bind a TCP port on 127.0.0.1 (is the loopback interface up?)")?,
        );
    }
    probes.iter().map(|p| Ok(p.local_addr()?.port())).collect()
}

impl SimNode {
    /// A stopped node called `name`, with a new temporary directory, that will listen on
    /// `port` of 127.0.0.1 every time it starts (see [`free_ports`]).
    pub fn new(name: &str, port: u16) -> anyhow::Result<SimNode> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sotto-sim-{name}-"))
            .tempdir()
            .context("cannot create a temporary directory")?;
        // The daemon refuses a socket directory that other users can enter.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.path().display()))?;
        let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .context("cannot build a loopback address")?;
        let config = Config {
            data_dir: dir.path().join("data"),
            socket: dir.path().join("sottod.sock"),
            listen: vec![listen.clone()],
            bootstrap: Vec::new(),
            announce: Vec::new(),
            // Cards carry the node's address, so contacts can dial it at once.
            mailbox: sotto_daemon::config::Mailbox {
                publish_address: true,
                ..Default::default()
            },
            harness: Default::default(),
            limits: Default::default(),
            keys: Default::default(),
        };
        Ok(SimNode {
            name: name.to_owned(),
            listen,
            config,
            peer_id: None,
            node: None,
            dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn listen_addr(&self) -> &Multiaddr {
        &self.listen
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The node's transport identity, once it has been started.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.peer_id
    }

    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// Start the daemon (again) and wait until its swarm listens on the node's address.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.node.is_some() {
            bail!("{} is already running", self.name);
        }
        let node = Node::start(&self.config)
            .await
            .with_context(|| format!("cannot start {}'s node", self.name))?;
        let network = node.service().network().clone();
        self.peer_id = Some(network.peer_id());
        self.node = Some(node);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let status = network
                .status()
                .await
                .with_context(|| format!("{}'s network task stopped", self.name))?;
            if status.listen_addrs.contains(&self.listen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not start listening on {} within {} s (is the port taken?)",
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
            node.shutdown().await;
        }
    }

    /// The running node's service.
    pub fn service(&self) -> anyhow::Result<&Service> {
        self.node
            .as_ref()
            .map(Node::service)
            .ok_or_else(|| anyhow!("{} is not running", self.name))
    }

    /// Stop the node and remove its directory.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stop().await;
        let path = self.dir.path().to_owned();
        self.dir
            .close()
            .with_context(|| format!("cannot remove {}", path.display()))
    }
}
