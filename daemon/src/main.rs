//! `sottod`: the sotto daemon. Parses its settings, starts a node, runs until SIGINT or
//! SIGTERM. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sotto_daemon::config::{self, Config};
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
        })
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
    runtime.block_on(async {
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
    })
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
