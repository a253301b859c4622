//! The transport stack under the swarm: TCP and QUIC with Noise and yamux for a daemon, or,
//! for the simulator, TCP or libp2p's in-memory transport with every connection delayed by
//! a [`LinkModel`] (see [`crate::link`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};

use super::behaviour::Behaviour;
use super::traffic::Traffic;
use crate::limits::Limits;
use crate::link::{Delayed, Harness, Transport};
use crate::store::Ban;

/// How long a connection with no open stream is kept.
const IDLE_CONNECTION: Duration = Duration::from_secs(120);

/// Build a swarm with the full transport stack, the default limits and no bans.
pub fn build_swarm(key: Keypair, traffic: Arc<Traffic>) -> anyhow::Result<Swarm<Behaviour>> {
    build_swarm_with(key, traffic, &Harness::default(), &Limits::default(), &[])
}

/// A transport as the swarm builder takes it.
type Stack = libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Noise and yamux over `transport`, every raw connection delayed by `link`.
///
/// Each connection draws its delays from a generator seeded by the link's seed, this node's
/// PeerId and the connection's number at this node, so that a run's draws do not depend on
/// what other nodes in the same process do.
fn delayed<T>(transport: T, key: &Keypair, harness: &Harness) -> Result<Stack, BoxError>
where
    T: libp2p::Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    use libp2p::core::muxing::StreamMuxerBox;
    use libp2p::core::upgrade::Version;
    use libp2p::Transport as _;
    let salt = key
        .public()
        .to_peer_id()
        .to_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    let links = Arc::new(AtomicU64::new(0));
    let (link, tap) = (harness.link, harness.wire_tap.clone());
    Ok(transport
        .map(move |stream, endpoint| {
            use libp2p::core::ConnectedPoint;
            let n = links.fetch_add(1, Ordering::Relaxed);
            let dialed = match endpoint {
                ConnectedPoint::Dialer { address, .. } => Some(address),
                ConnectedPoint::Listener { .. } => None,
            };
            Delayed::new(stream, link, salt ^ n).tapped(tap.clone(), n, dialed)
        })
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Build a swarm on the transport `harness` names, applying `limits`, with `bans` in force.
pub fn build_swarm_with(
    key: Keypair,
    traffic: Arc<Traffic>,
    harness: &Harness,
    limits: &Limits,
    bans: &[Ban],
) -> anyhow::Result<Swarm<Behaviour>> {
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(IDLE_CONNECTION);
    let behaviour = |key: &Keypair| Behaviour::with_limits(key, traffic, limits, bans);
    Ok(match harness.transport {
        Transport::Standard => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_behaviour(behaviour)?
            .with_swarm_config(idle)
            .build(),
        Transport::Tcp => builder
            .with_other_transport(|key| {
                delayed(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
                    key,
                    harness,
                )
            })?
            .with_behaviour(behaviour)?
            .with_swarm_config(idle)
            .build(),
        Transport::Memory => builder
            .with_other_transport(|key| {
                delayed(
                    libp2p::core::transport::MemoryTransport::default(),
                    key,
                    harness,
                )
            })?
            .with_behaviour(behaviour)?
            .with_swarm_config(idle)
            .build(),
    })
}

/// libp2p listens with `SO_REUSEPORT`, so a second node on the same TCP port would start
/// without complaint and the kernel would split connections between the two. Binding the
/// port plainly first fails if anyone holds it.
pub fn ensure_port_free(addr: &Multiaddr) -> anyhow::Result<()> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    if let (Some(ip), Some(port)) = (ip, port.filter(|p| *p != 0)) {
        std::net::TcpListener::bind((ip, port)).map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr}: {e}; is another sottod using port {port}?")
        })?;
    }
    Ok(())
}
