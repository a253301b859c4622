//! `sottod`: the sotto daemon. Parses its settings, starts a node, runs until SIGINT or
//! SIGTERM. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sotto_daemon::config::{self, Config};
use sotto_daemon::limits::{Limits, Rate};
use sotto_daemon::node::Node;

/// The sotto daemon: a peer-to-peer, end-to-end encrypted messenger node.
///
/// Drive it with `sotto` over the control socket. Every setting may also come from an
/// environment variable or from the config file.
#[derive(Debug, Parser)]
#[command(name = "sottod", version)]
struct Args {
    /// Config file [default: ~/.config/sotto/config.toml]
    #[arg(long, env = "SOTTO_CONFIG")]
    config: Option<PathBuf>,
    /// Where the node keeps its data [default: ~/.local/share/sotto]
    #[arg(long, env = "SOTTO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The control socket [default: $XDG_RUNTIME_DIR/sotto/sottod.sock]
    #[arg(long, env = "SOTTO_SOCKET")]
    socket: Option<PathBuf>,
    /// Multiaddress to listen on; repeat or separate with commas
    /// [default: /ip4/0.0.0.0/tcp/4690 and /ip4/0.0.0.0/udp/4690/quic-v1]
    #[arg(long, env = "SOTTO_LISTEN", num_args = 1..)]
    listen: Vec<String>,
    /// Peer to join the network through (a multiaddress ending in /p2p/PEERID); repeatable
    #[arg(long, env = "SOTTO_BOOTSTRAP", num_args = 1..)]
    bootstrap: Vec<String>,
    /// Address to print in the contact card instead of the listen addresses; repeatable
    #[arg(long, env = "SOTTO_ANNOUNCE", num_args = 1..)]
    announce: Vec<String>,
    /// Print this node's PeerId and addresses in the contact card, so that contacts can
    /// reach it directly before the first exchange
    #[arg(long, env = "SOTTO_PUBLISH_ADDRESS")]
    publish_address: bool,
    /// Never send straight to a contact's node, and never tell contacts this node's
    /// addresses: everything goes through mailboxes
    #[arg(long, env = "SOTTO_MAILBOX_ONLY")]
    mailbox_only: bool,
    /// Do this node's own mailbox work from its own PeerId instead of through private paths
    /// (faster; every mailbox host then sees whose dead drops these are)
    #[arg(long, env = "SOTTO_NO_PRIVATE_PATHS")]
    no_private_paths: bool,
    /// Whose invitation to a group joins you at once; the others wait for `sotto group join`
    /// [default: contacts]
    #[arg(long, env = "SOTTO_GROUPS_FROM", value_enum)]
    groups_from: Option<config::GroupsFrom>,
    /// Send no read receipts, and take none from contacts
    #[arg(long, env = "SOTTO_NO_READ_RECEIPTS")]
    no_read_receipts: bool,
    /// Download attachments up to this many bytes when they arrive [default: 16777216]
    #[arg(long, env = "SOTTO_AUTO_DOWNLOAD_BYTES")]
    auto_download_bytes: Option<u64>,
    /// The largest attachment sent or downloaded, in bytes [default: 104857600; at most
    /// 117964800]
    #[arg(long, env = "SOTTO_MAX_ATTACHMENT_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_attachment_bytes: Option<u64>,
    /// Do not relay onion cells of others' private paths (this node still uses paths)
    #[arg(long, env = "SOTTO_NO_RELAY")]
    no_relay: bool,
    /// Onion cells a minute one peer may send this node to relay [default: 12000]
    #[arg(long, env = "SOTTO_RATE_ONION", value_parser = clap::value_parser!(u32).range(1..))]
    rate_onion: Option<u32>,
    /// Seconds a dead-drop address lasts [default: 86400]
    #[arg(long, env = "SOTTO_EPOCH_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    epoch_secs: Option<u64>,
    /// Seconds between fetches of this node's dead drops [default: 60]
    #[arg(long, env = "SOTTO_FETCH_INTERVAL_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    fetch_interval_secs: Option<u64>,
    /// Mailbox hosts per envelope [default: 3]
    #[arg(long, env = "SOTTO_REPLICAS", value_parser = clap::value_parser!(u64).range(1..=20))]
    replicas: Option<u64>,
    /// Proof-of-work difficulty (leading zero bits) this node asks of first-contact
    /// deposits it hosts [default: 20]
    #[arg(long, env = "SOTTO_STAMP_DIFFICULTY", value_parser = clap::value_parser!(u8).range(0..=32))]
    stamp_difficulty: Option<u8>,
    /// Seconds this node keeps an envelope it hosts [default: 1209600, 14 days]
    #[arg(long, env = "SOTTO_MAILBOX_TTL_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    mailbox_ttl_secs: Option<u64>,
    /// Envelopes a minute one peer that is not a contact's node may send straight to this
    /// node [default: 300]
    #[arg(long, env = "SOTTO_RATE_ENVELOPE", value_parser = clap::value_parser!(u32).range(1..))]
    rate_envelope: Option<u32>,
    /// Envelopes a minute a contact's node may send straight to this node; beyond it the
    /// node is told to slow down, never banned [default: 60000]
    #[arg(long, env = "SOTTO_RATE_CONTACT_ENVELOPE", value_parser = clap::value_parser!(u32).range(1..))]
    rate_contact_envelope: Option<u32>,
    /// Deposits a minute one peer may make at this node as a mailbox host [default: 600]
    #[arg(long, env = "SOTTO_RATE_DEPOSIT", value_parser = clap::value_parser!(u32).range(1..))]
    rate_deposit: Option<u32>,
    /// Fetches and deletes a minute one peer may make at this node [default: 1200]
    #[arg(long, env = "SOTTO_RATE_FETCH", value_parser = clap::value_parser!(u32).range(1..))]
    rate_fetch: Option<u32>,
    /// Kademlia requests a minute one peer may make of this node [default: 1200]
    #[arg(long, env = "SOTTO_RATE_DHT", value_parser = clap::value_parser!(u32).range(1..))]
    rate_dht: Option<u32>,
    /// Refusals for being over a rate limit, within a minute, after which a peer is
    /// disconnected and banned [default: 300]
    #[arg(long, env = "SOTTO_BAN_AFTER", value_parser = clap::value_parser!(u32).range(1..))]
    ban_after: Option<u32>,
    /// Seconds a ban lasts [default: 3600]
    #[arg(long, env = "SOTTO_BAN_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    ban_secs: Option<u64>,
    /// Incoming connections this node keeps open in all [default: 512]
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Connections one peer may hold open to this node [default: 4]
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS_PER_PEER", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_peer: Option<u32>,
    /// Incoming connections one IP address may hold open to this node [default: 32]
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS_PER_IP", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_ip: Option<u32>,
    /// Seconds between replacements of the fallback key printed in the card; the replaced
    /// one keeps working until the next [default: 2592000, 30 days]
    #[arg(long, env = "SOTTO_FALLBACK_ROTATION_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    fallback_rotation_secs: Option<u64>,
    /// Seconds each admin of a group waits, per admin before it (by account key), to rekey
    /// after a member left, in case those before it are offline; the first rekeys at once
    /// [default: 600]
    #[arg(long, env = "SOTTO_GROUP_REKEY_GRACE_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    group_rekey_grace_secs: Option<u64>,
    /// The largest sender-key bundle (in bytes) this node leaves at a group's own dead
    /// drop, where every member fetches it; a larger one is split among the group's 16 key
    /// dead drops, each fetched only by the members it has keys for; 0 always splits
    /// [default: 8192]
    #[arg(long, env = "SOTTO_GROUP_SHARED_BUNDLE_BYTES", value_parser = clap::value_parser!(u32).range(0..=65_535))]
    group_shared_bundle_bytes: Option<u32>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => config::File::load(path, true)?,
            None => match config::default_config_file() {
                Some(path) => config::File::load(&path, false)?,
                None => config::File::default(),
            },
        };
        let limits = self.limits(&file)?;
        let mut keys = config::Keys::default();
        if let Some(s) = self.fallback_rotation_secs.or(file.fallback_rotation_secs) {
            keys.fallback_rotation_ms = config::positive_secs("fallback_rotation_secs", s)?;
        }
        if let Some(s) = self.group_rekey_grace_secs.or(file.group_rekey_grace_secs) {
            keys.group_rekey_grace_ms = config::positive_secs("group_rekey_grace_secs", s)?;
        }
        if let Some(b) = self
            .group_shared_bundle_bytes
            .or(file.group_shared_bundle_bytes)
        {
            if b > 65_535 {
                anyhow::bail!("group_shared_bundle_bytes is at most 65535 (got {b})");
            }
            keys.group_shared_bundle_bytes = b as usize;
        }
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .or_else(config::default_data_dir)
            .ok_or(config::ConfigError::NoHome)?;
        let socket = self
            .socket
            .or(file.socket)
            .unwrap_or_else(config::default_socket);
        let pick = |flag: Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let listen = config::parse_addrs("listen", &pick(self.listen, file.listen))?;
        let mut mailbox = config::Mailbox::default();
        if let Some(s) = self.epoch_secs.or(file.epoch_secs) {
            mailbox.epoch_ms = config::positive_secs("epoch_secs", s)?;
        }
        if let Some(s) = self.fetch_interval_secs.or(file.fetch_interval_secs) {
            mailbox.fetch_interval_ms = config::positive_secs("fetch_interval_secs", s)?;
        }
        if let Some(r) = self.replicas.map(|r| r as usize).or(file.replicas) {
            if !(1..=20).contains(&r) {
                return Err(config::ConfigError::OutOfRange {
                    key: "replicas",
                    value: r.to_string(),
                    range: "1 to 20",
                }
                .into());
            }
            mailbox.replicas = r;
        }
        if let Some(d) = self.stamp_difficulty.or(file.stamp_difficulty) {
            if d > sotto_protocol::pow::MAX_DIFFICULTY {
                return Err(config::ConfigError::OutOfRange {
                    key: "stamp_difficulty",
                    value: d.to_string(),
                    range: "0 to 32",
                }
                .into());
            }
            mailbox.policy.stamp_difficulty = d;
        }
        if let Some(s) = self.mailbox_ttl_secs.or(file.mailbox_ttl_secs) {
            mailbox.policy.ttl_ms = config::positive_secs("mailbox_ttl_secs", s)?;
        }
        mailbox.mailbox_only = self.mailbox_only || file.mailbox_only.unwrap_or(false);
        mailbox.publish_address = self.publish_address || file.publish_address.unwrap_or(false);
        mailbox.private_paths = !self.no_private_paths && file.private_paths.unwrap_or(true);
        mailbox.groups_from = self.groups_from.or(file.groups_from).unwrap_or_default();
        mailbox.read_receipts = !self.no_read_receipts && file.read_receipts.unwrap_or(true);
        if let Some(b) = self.max_attachment_bytes.or(file.max_attachment_bytes) {
            if b == 0 || b > sotto_protocol::blob::MAX_BLOB_BYTES {
                return Err(config::ConfigError::OutOfRange {
                    key: "max_attachment_bytes",
                    value: b.to_string(),
                    range: "1 to 117964800",
                }
                .into());
            }
            mailbox.max_attachment_bytes = b;
        }
        mailbox.auto_download_bytes = self
            .auto_download_bytes
            .or(file.auto_download_bytes)
            .unwrap_or(config::AUTO_DOWNLOAD_BYTES);
        Ok(Config {
            data_dir,
            socket,
            listen: if listen.is_empty() {
                config::default_listen()
            } else {
                listen
            },
            bootstrap: config::parse_addrs("bootstrap", &pick(self.bootstrap, file.bootstrap))?,
            announce: config::parse_addrs("announce", &pick(self.announce, file.announce))?,
            mailbox,
            harness: Default::default(),
            limits,
            keys,
        })
    }

    /// The limits from flags, then the config file, then the defaults.
    fn limits(&self, file: &config::File) -> anyhow::Result<Limits> {
        let mut limits = Limits::default();
        let positive = |key: &'static str, v: Option<u32>| -> anyhow::Result<Option<u32>> {
            match v {
                Some(0) => Err(anyhow::anyhow!("{key}: must be at least 1, got 0")),
                v => Ok(v),
            }
        };
        if let Some(r) = positive("rate_envelope", self.rate_envelope.or(file.rate_envelope))? {
            limits.envelope = Rate::per_minute(r);
        }
        if let Some(r) = positive(
            "rate_contact_envelope",
            self.rate_contact_envelope.or(file.rate_contact_envelope),
        )? {
            limits.contact_envelope = Rate {
                per_minute: r,
                burst: r.min(limits.contact_envelope.burst).max(1),
            };
        }
        if let Some(r) = positive("rate_deposit", self.rate_deposit.or(file.rate_deposit))? {
            limits.deposit = Rate::per_minute(r);
        }
        if let Some(r) = positive("rate_fetch", self.rate_fetch.or(file.rate_fetch))? {
            limits.fetch = Rate::per_minute(r);
        }
        if let Some(r) = positive("rate_dht", self.rate_dht.or(file.rate_dht))? {
            limits.dht = Rate::per_minute(r);
        }
        if let Some(r) = positive("rate_onion", self.rate_onion.or(file.rate_onion))? {
            limits.onion = Rate {
                per_minute: r,
                burst: r.min(limits.onion.burst).max(1),
            };
        }
        limits.relay = !self.no_relay && file.relay.unwrap_or(true);
        if let Some(n) = positive("ban_after", self.ban_after.or(file.ban_after))? {
            limits.ban_after = n;
        }
        if let Some(s) = self.ban_secs.or(file.ban_secs) {
            limits.ban_for =
                std::time::Duration::from_millis(config::positive_secs("ban_secs", s)?);
        }
        if let Some(n) = positive(
            "max_connections",
            self.max_connections.or(file.max_connections),
        )? {
            limits.max_connections = n;
        }
        if let Some(n) = positive(
            "max_connections_per_peer",
            self.max_connections_per_peer
                .or(file.max_connections_per_peer),
        )? {
            limits.max_connections_per_peer = n;
        }
        if let Some(n) = positive(
            "max_connections_per_ip",
            self.max_connections_per_ip.or(file.max_connections_per_ip),
        )? {
            limits.max_connections_per_ip = n;
        }
        Ok(limits)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sottod: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let node = Node::start(&config).await?;
        println!(
            "sottod {} running; peer id {}; control socket {}; data in {}",
            env!("CARGO_PKG_VERSION"),
            node.service().network().peer_id(),
            node.socket().display(),
            config.data_dir.display()
        );
        wait_for_signal().await?;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    });
    // Work on blocking threads (a proof-of-work stamp being minted) is abandoned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
