//! A whole node, wired together: the store, the swarm task, the service, the mailbox host,
//! the outbox worker, the mailbox fetcher and maintenance, and the control socket — started
//! together and stopped together. The node owns what it wires: each task gets the handles
//! it needs and nothing else.

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use libp2p::identity::Keypair;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::unix_ms;
use crate::config::Config;
use crate::mailbox::{self, Host};
use crate::net::{self, Network};
use crate::paths::{self, Paths, RelayNode};
use crate::service::Service;
use crate::store::{Batch, Store};
use crate::{delivery, rpc};
use sotto_protocol::wire::{Refusal, Response};

/// A running node.
pub struct Node {
    service: Service,
    host: Arc<Host>,
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
    if let Some(bytes) = store.transport_key()? {
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
    batch.put_transport_key(key.to_protobuf_encoding()?);
    store.apply(&batch)?;
    Ok(key)
}

/// The node's onion key: its transport (identity) key in X25519 form.
fn relay_key(key: &Keypair) -> anyhow::Result<sotto_protocol::onion::RelayKey> {
    let ed25519 = key
        .clone()
        .try_into_ed25519()
        .context("the transport key is not Ed25519")?;
    let seed: [u8; 32] = ed25519
        .secret()
        .as_ref()
        .try_into()
        .context("an Ed25519 secret key is 32 bytes")?;
    Ok(sotto_protocol::onion::RelayKey::from_ed25519_seed(&seed))
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
        let relay_key = relay_key(&key)?;
        let listener = bind_socket(&config.socket).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let now = unix_ms();
        store.prune_bans(now)?;
        let bans = store.active_bans(now)?;
        let (network, handle, receivers) = Network::new(
            key,
            &config.listen,
            &config.bootstrap,
            &config.harness,
            &config.limits,
            &bans,
        )?;
        tracing::info!("peer id {}", handle.peer_id());
        let (service, signals) = Service::new(
            store.clone(),
            handle.clone(),
            config.announce.clone(),
            config.mailbox.clone(),
            config.keys.clone(),
            config.harness.seed,
        )?;
        service.share_contact_nodes().await?;
        let counters = Arc::new(paths::Counters::default());
        let private_paths = Paths::new(
            handle.clone(),
            store.clone(),
            counters.clone(),
            config.limits.relay,
        )?;
        let host = Arc::new(
            Host::new(store, config.mailbox.policy.clone(), &handle.peer_id())
                .with_observer(config.harness.observer.clone()),
        );
        let mut client = mailbox::Client::new(service.clone(), host.clone());
        if config.mailbox.private_paths {
            client = client.with_paths(private_paths.clone());
        }
        let relay = RelayNode::new(relay_key, handle.clone(), client.as_exit(), counters)
            .with_observer(config.harness.observer.clone())
            .with_tamper(config.harness.tamper.clone());
        let host_for_node = host.clone();
        let net::Receivers {
            mut envelopes,
            mailbox: mut requests,
            mut onion,
            mut blob,
            connected,
            mut bans,
        } = receivers;

        let mut tasks = vec![tokio::spawn(network.run(shutdown_rx.clone()))];
        let s = service.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(inbound) = envelopes.recv().await {
                let answer = s.receive(&inbound.peer.to_string(), &inbound.request).await;
                let junk = matches!(
                    answer,
                    Response::Refused(Refusal::Unopenable | Refusal::Malformed)
                );
                let _ = inbound.reply.send(answer);
                if junk {
                    s.network().junk_from(inbound.peer).await;
                }
            }
        }));
        let h = host.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(inbound) = requests.recv().await {
                let answer = h
                    .handle(&inbound.peer, inbound.source, inbound.request)
                    .await;
                let _ = inbound.reply.send(answer);
            }
        }));
        tasks.push(tokio::spawn(async move {
            while let Some(inbound) = onion.recv().await {
                relay.serve(inbound);
            }
        }));
        let blobs_dir = service.store().blobs_dir();
        tasks.push(tokio::spawn(async move {
            // A few chunks read at once: each is a 60 KiB read from disk.
            let reads = Arc::new(tokio::sync::Semaphore::new(8));
            while let Some(inbound) = blob.recv().await {
                let Ok(permit) = reads.clone().acquire_owned().await else {
                    break;
                };
                let dir = blobs_dir.clone();
                tokio::spawn(async move {
                    let answer =
                        crate::service::attachments::serve_chunk(dir, inbound.request).await;
                    let _ = inbound.reply.send(answer);
                    drop(permit);
                });
            }
        }));
        tasks.push(tokio::spawn(
            service
                .clone()
                .run_downloads(Arc::new(client.clone()), shutdown_rx.clone()),
        ));
        let s = service.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = bans.recv().await {
                if let Err(e) = s.record_ban(event).await {
                    tracing::error!("cannot record a ban: {e}");
                }
            }
        }));
        tasks.push(tokio::spawn(delivery::run(
            client.clone(),
            signals,
            connected,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(
            client.clone().run_fetcher(shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(
            client.clone().run_group_outbox(shutdown_rx.clone()),
        ));
        let period = Duration::from_millis(config.mailbox.fetch_interval_ms.min(60_000));
        tasks.push(tokio::spawn(
            client.run_maintenance(period, shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(
            service.clone().run_key_rotation(shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(
            service.clone().run_group_rekeys(shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(
            service.clone().run_expiry(shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(rpc::serve(
            listener,
            service.clone(),
            host,
            (private_paths, config.mailbox.private_paths),
            shutdown_rx,
        )));
        Ok(Node {
            service,
            host: host_for_node,
            socket: config.socket.clone(),
            shutdown,
            tasks,
            _lock: lock,
        })
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The node's mailbox host.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
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
