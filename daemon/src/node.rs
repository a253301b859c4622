//! A whole node: the store, the swarm, the service, the outbox worker and the control
//! socket, started together and stopped together.

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use libp2p::identity::Keypair;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::network::Network;
use crate::service::Service;
use crate::store::{self, Batch, Store, Tree};
use crate::{delivery, mailbox, rpc};

/// A running node.
pub struct Node {
    service: Service,
    socket: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _lock: File,
}

/// Create `dir` (mode 0700) if missing; refuse one that other users can read or enter.
fn private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the {what} {}", dir.display()))?;
    }
    let mode = fs::metadata(dir)
        .with_context(|| format!("cannot read the {what} {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the {what} {} is open to other users (mode {:o}); run `chmod 700 {}` and start again",
            dir.display(),
            mode & 0o777,
            dir.display()
        );
    }
    Ok(())
}

fn transport_key(store: &Store, seed: Option<u64>) -> anyhow::Result<Keypair> {
    if let Some(bytes) = store.get_raw(Tree::Meta, store::META_TRANSPORT_KEY)? {
        return Keypair::from_protobuf_encoding(&bytes)
            .context("the stored transport key is unreadable");
    }
    let key = match seed {
        Some(seed) => {
            use rand::{Rng as _, SeedableRng as _};
            // A stream of its own, apart from the service's draws from the same seed.
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7472_616e_7370_6f72);
            Keypair::ed25519_from_bytes(rng.gen::<[u8; 32]>())?
        }
        None => Keypair::generate_ed25519(),
    };
    let mut batch = Batch::new();
    batch.put_raw(
        Tree::Meta,
        store::META_TRANSPORT_KEY.to_vec(),
        key.to_protobuf_encoding()?,
    );
    store.apply(&batch)?;
    Ok(key)
}

async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    private_dir(parent, "socket directory")?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another sottod is already serving the control socket {}",
                path.display()
            );
        }
        tracing::info!(
            "removing a control socket left behind by a stopped daemon: {}",
            path.display()
        );
        fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl Node {
    /// Start a node with `config`.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        private_dir(&config.data_dir, "data directory")?;
        let lock_path = config.data_dir.join("sottod.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "another sottod is already running with the data directory {}; stop it first, or give this one another --data-dir",
                config.data_dir.display()
            ),
            Err(TryLockError::Error(e)) => return Err(e).context("cannot lock the data directory"),
        }
        let store = Store::open(&config.data_dir.join("store")).context("cannot open the store")?;
        let key = transport_key(&store, config.harness.seed)?;
        let listener = bind_socket(&config.socket).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let now = crate::service::now_ms();
        store::prune_bans(&store, now)?;
        let bans = store::active_bans(&store, now)?;
        let (network, handle, mut receivers) = Network::new(
            key,
            &config.listen,
            &config.bootstrap,
            &config.harness,
            &config.limits,
            &bans,
        )?;
        tracing::info!("peer id {}", handle.peer_id());
        let service = Service::new(
            store,
            handle,
            config.announce.clone(),
            config.mailbox.clone(),
            &config.harness,
        )?;

        let mut tasks = vec![tokio::spawn(network.run(shutdown_rx.clone()))];
        let s = service.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(inbound) = receivers.inbound.recv().await {
                let response = s
                    .receive(&inbound.peer.to_string(), &inbound.envelope)
                    .await;
                let _ = inbound.reply.send(response);
            }
        }));
        let s = service.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(peer) = receivers.connected.recv().await {
                s.fetch_wake().notify_one();
                s.retry_peer(&peer).await;
            }
        }));
        let s = service.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = receivers.bans.recv().await {
                if let Err(e) = s.record_ban(event).await {
                    tracing::error!("cannot record a ban: {e}");
                }
            }
        }));
        let host = service.host().clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = receivers.mailbox.recv().await {
                let response = host.handle(&m.peer.to_bytes(), &m.request).await;
                let _ = m.reply.send(response);
            }
        }));
        tasks.push(tokio::spawn(mailbox::run(
            service.clone(),
            service.host().clone(),
            shutdown_rx.clone(),
        )));
        let period = Duration::from_millis(config.mailbox.fetch_interval_ms.min(60_000));
        tasks.push(tokio::spawn(mailbox::maintain(
            service.clone(),
            service.host().clone(),
            period,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(delivery::run(
            service.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(rpc::serve(
            listener,
            service.clone(),
            shutdown_rx,
        )));
        Ok(Node {
            service,
            socket: config.socket.clone(),
            shutdown,
            tasks,
            _lock: lock,
        })
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stop every task, flush the store and remove the control socket.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a task did not stop within 5 s");
            }
        }
        if let Err(e) = self.service.store().flush().await {
            tracing::error!("cannot flush the store: {e}");
        }
        let _ = fs::remove_file(&self.socket);
        // Let tasks that still hold the service (an outbox attempt in flight) finish, so
        // the store is closed when this returns.
        for _ in 0..100 {
            if self.service.holders() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
