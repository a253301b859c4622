//! The libp2p side of the node: one task owns the [`Swarm`]; the rest of the daemon holds a
//! cloneable [`Handle`] that sends it commands over a bounded channel and gets answers on
//! oneshot channels. Envelopes that arrive are passed to the service as [`Inbound`] requests,
//! and the service's answer goes back to the sender on the same stream.
//!
//! The stack: TCP and QUIC, Noise, yamux, identify, ping, Kademlia, and the request-response
//! protocol `/sotto/envelope/1` with [`Codec`].

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::dht;
use crate::limits::{Ban, Kind, Limiter, Limits, Pacer, Verdict};
use crate::link::{Delayed, Harness, LinkModel, Transport};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, kad, noise, ping, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use sotto_protocol::mailbox;
use sotto_protocol::wire::{self, Refusal, Response};
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the swarm task, at most.
pub const COMMAND_QUEUE: usize = 256;
/// Inbound envelopes waiting for the service, at most; beyond that senders are told `Busy`.
pub const INBOUND_QUEUE: usize = 256;
/// How long a request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent request streams per connection.
pub const MAX_STREAMS: usize = 64;
/// Lookups waiting for the node's own lookup pace, at most; beyond that a lookup finds no
/// peers at once (its caller tries again next round).
pub const WAITING_LOOKUPS: usize = 1_024;

/// A request on either sotto protocol, as read off a stream: the bytes of one frame, or —
/// when its header claims more than the protocol's limit — only that header, so that the
/// reader can refuse it without reading it. Written, `HeaderOnly` is only that header
/// (tests use it to probe a peer's limits).
#[derive(Clone, Debug)]
pub enum Frame {
    Bytes(Vec<u8>),
    HeaderOnly { claimed: u32 },
}

/// Application bytes this node sent and received on each protocol (frames, headers
/// included; Noise, yamux and TCP/QUIC overhead not).
#[derive(Debug, Default)]
pub struct Traffic {
    pub envelope_in: AtomicU64,
    pub envelope_out: AtomicU64,
    pub mailbox_in: AtomicU64,
    pub mailbox_out: AtomicU64,
    /// Kademlia closest-peer lookups this node finished, and how many requests they sent
    /// and how many of those were answered, in all.
    pub lookups: AtomicU64,
    pub lookup_requests: AtomicU64,
    pub lookup_successes: AtomicU64,
    /// Kademlia requests from peers, by kind (as [`dht::REQUESTS`]), answered or refused.
    pub dht_requests: [AtomicU64; 5],
    /// Kademlia requests from peers refused for being over their rate limit.
    pub dht_refused: AtomicU64,
}

impl Traffic {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "envelope_in": get(&self.envelope_in),
            "envelope_out": get(&self.envelope_out),
            "mailbox_in": get(&self.mailbox_in),
            "mailbox_out": get(&self.mailbox_out),
            "lookups": get(&self.lookups),
            "lookup_requests": get(&self.lookup_requests),
            "lookup_successes": get(&self.lookup_successes),
            "dht_requests": {
                "find_node": get(&self.dht_requests[0]),
                "get_providers": get(&self.dht_requests[1]),
                "add_provider": get(&self.dht_requests[2]),
                "get_record": get(&self.dht_requests[3]),
                "put_record": get(&self.dht_requests[4]),
            },
            "dht_refused": get(&self.dht_refused),
        })
    }
}

fn count(counter: &AtomicU64, bytes: usize) {
    counter.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// One of sotto's request-response protocols: its limits, its answers, its counters.
pub trait Protocol: Send + Sync + 'static {
    type Answer: Send + 'static;
    const MAX_REQUEST: usize;
    const MAX_ANSWER: usize;
    fn encode(answer: &Self::Answer) -> io::Result<Vec<u8>>;
    fn decode(bytes: &[u8]) -> io::Result<Self::Answer>;
    /// The (received, sent) counters of this protocol.
    fn counters(traffic: &Traffic) -> (&AtomicU64, &AtomicU64);
}

/// `/sotto/envelope/1`: one sealed envelope, one [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvelopeProtocol;

impl Protocol for EnvelopeProtocol {
    type Answer = Response;
    const MAX_REQUEST: usize = wire::MAX_REQUEST_BYTES;
    const MAX_ANSWER: usize = wire::MAX_RESPONSE_BYTES;
    fn encode(answer: &Response) -> io::Result<Vec<u8>> {
        Ok(answer.to_bytes())
    }
    fn decode(bytes: &[u8]) -> io::Result<Response> {
        Response::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn counters(t: &Traffic) -> (&AtomicU64, &AtomicU64) {
        (&t.envelope_in, &t.envelope_out)
    }
}

/// `/sotto/mailbox/1`: one `mailbox::Request` (decoded by the host, so that a malformed
/// one gets an answer), one `mailbox::Response`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MailboxProtocol;

impl Protocol for MailboxProtocol {
    type Answer = mailbox::Response;
    const MAX_REQUEST: usize = mailbox::MAX_REQUEST_BYTES;
    const MAX_ANSWER: usize = mailbox::MAX_RESPONSE_BYTES;
    fn encode(answer: &mailbox::Response) -> io::Result<Vec<u8>> {
        answer
            .to_bytes()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn decode(bytes: &[u8]) -> io::Result<mailbox::Response> {
        mailbox::Response::from_bytes(bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn counters(t: &Traffic) -> (&AtomicU64, &AtomicU64) {
        (&t.mailbox_in, &t.mailbox_out)
    }
}

/// The framing of sotto's protocols: a 4-byte big-endian length, then the bytes; the
/// length is checked against the protocol's limit before anything is read or allocated.
#[derive(Debug)]
pub struct FrameCodec<P> {
    pub traffic: Arc<Traffic>,
    protocol: std::marker::PhantomData<fn() -> P>,
}

impl<P> FrameCodec<P> {
    pub fn new(traffic: Arc<Traffic>) -> Self {
        FrameCodec {
            traffic,
            protocol: std::marker::PhantomData,
        }
    }
}

impl<P> Clone for FrameCodec<P> {
    fn clone(&self) -> Self {
        Self::new(self.traffic.clone())
    }
}

impl<P> Default for FrameCodec<P> {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

/// The codec of `/sotto/envelope/1`.
pub type Codec = FrameCodec<EnvelopeProtocol>;
/// The codec of `/sotto/mailbox/1`.
pub type MailboxCodec = FrameCodec<MailboxProtocol>;

async fn read_header<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u32> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    Ok(u32::from_be_bytes(len))
}

async fn read_body<T: AsyncRead + Unpin>(io: &mut T, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl<P: Protocol> request_response::Codec for FrameCodec<P> {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = P::Answer;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Frame> {
        let len = read_header(io).await?;
        if len as usize > P::MAX_REQUEST {
            return Ok(Frame::HeaderOnly { claimed: len });
        }
        let body = read_body(io, len).await?;
        count(P::counters(&self.traffic).0, 4 + body.len());
        Ok(Frame::Bytes(body))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<P::Answer> {
        let len = read_header(io).await?;
        if len as usize > P::MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer of {len} bytes exceeds the limit"),
            ));
        }
        let body = read_body(io, len).await?;
        count(P::counters(&self.traffic).0, 4 + body.len());
        P::decode(&body)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()> {
        match req {
            Frame::Bytes(bytes) => {
                count(P::counters(&self.traffic).1, 4 + bytes.len());
                write_frame(io, &bytes).await
            }
            Frame::HeaderOnly { claimed } => {
                io.write_all(&claimed.to_be_bytes()).await?;
                io.close().await
            }
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: P::Answer,
    ) -> io::Result<()> {
        let bytes = P::encode(&res)?;
        count(P::counters(&self.traffic).1, 4 + bytes.len());
        write_frame(io, &bytes).await
    }
}

/// The node's network behaviours.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Banned peers: their connections are closed and new ones denied.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub connection_limits: connection_limits::Behaviour,
    /// A cap on incoming connections per remote IP address.
    pub per_ip: crate::per_ip::PerIp,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Kademlia, with a rate limit per peer on the requests it answers.
    pub kad: dht::Guarded,
    pub envelope: request_response::Behaviour<Codec>,
    pub mailbox: request_response::Behaviour<MailboxCodec>,
}

impl Behaviour {
    pub fn new(key: &Keypair, traffic: Arc<Traffic>) -> Self {
        Behaviour::with_limits(key, traffic, &Limits::default())
    }

    /// The behaviours, with `limits` on connections.
    pub fn with_limits(key: &Keypair, traffic: Arc<Traffic>, limits: &Limits) -> Self {
        let peer_id = key.public().to_peer_id();
        let mut config = kad::Config::new(StreamProtocol::new("/sotto/kad/1"));
        // The node bootstraps itself when it is given peers (see `Network::new`); without
        // any, periodic bootstrap would only warn every few minutes.
        config.set_periodic_bootstrap_interval(None);
        // sotto keeps no records in the DHT: what peers PUT is dropped, not stored (the
        // inbound request is only reported), so they cannot fill this node's memory.
        config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
        kad.set_mode(Some(kad::Mode::Server));
        Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            connection_limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(limits.max_connections))
                    .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                    .with_max_pending_incoming(Some(limits.max_pending)),
            ),
            per_ip: crate::per_ip::PerIp::new(limits.max_connections_per_ip),
            identify: identify::Behaviour::new(identify::Config::new(
                "/sotto/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            kad: dht::Guarded::new(kad, limits, traffic.clone()),
            envelope: request_response::Behaviour::with_codec(
                Codec::new(traffic.clone()),
                [(
                    StreamProtocol::new(wire::ENVELOPE_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
            mailbox: request_response::Behaviour::with_codec(
                MailboxCodec::new(traffic),
                [(
                    StreamProtocol::new(mailbox::PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
        }
    }
}

/// Build a swarm with the full transport stack.
pub fn build_swarm(key: Keypair, traffic: Arc<Traffic>) -> anyhow::Result<Swarm<Behaviour>> {
    build_swarm_with(key, traffic, &Harness::default(), &Limits::default())
}

/// A transport as the swarm builder takes it.
type Stack = libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Noise and yamux over `transport`, every raw connection delayed by `link`.
///
/// Each connection draws its delays from a generator seeded by the link's seed, this node's
/// PeerId and the connection's number at this node, so that a run's draws do not depend on
/// what other nodes in the same process do.
fn delayed<T>(transport: T, key: &Keypair, link: LinkModel) -> Result<Stack, BoxError>
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
    Ok(transport
        .map(move |stream, _| {
            let n = links.fetch_add(1, Ordering::Relaxed);
            Delayed::new(stream, link, salt ^ n)
        })
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Build a swarm on the transport `harness` names (see [`crate::link`]).
pub fn build_swarm_with(
    key: Keypair,
    traffic: Arc<Traffic>,
    harness: &Harness,
    limits: &Limits,
) -> anyhow::Result<Swarm<Behaviour>> {
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(120));
    let link = harness.link;
    Ok(match harness.transport {
        Transport::Standard => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_behaviour(|key| Behaviour::with_limits(key, traffic, limits))?
            .with_swarm_config(idle)
            .build(),
        Transport::Tcp => builder
            .with_other_transport(|key| {
                delayed(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
                    key,
                    link,
                )
            })?
            .with_behaviour(|key| Behaviour::with_limits(key, traffic, limits))?
            .with_swarm_config(idle)
            .build(),
        Transport::Memory => builder
            .with_other_transport(|key| {
                delayed(
                    libp2p::core::transport::MemoryTransport::default(),
                    key,
                    link,
                )
            })?
            .with_behaviour(|key| Behaviour::with_limits(key, traffic, limits))?
            .with_swarm_config(idle)
            .build(),
    })
}

/// The requests this node sent on one request-response protocol, waiting for answers.
type Pending<Resp> = HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<Resp, SendError>>)>;

/// Settle an answer or a failure of a request this node sent; hand back a request that
/// arrived, for the protocol to handle.
fn settle<Req, Resp>(
    pending: &mut Pending<Resp>,
    event: request_response::Event<Req, Resp>,
) -> Option<(PeerId, Req, ResponseChannel<Resp>)> {
    use request_response::{Event, Message};
    match event {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            return Some((peer, request, channel));
        }
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some((_, reply)) = pending.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
        }
        Event::OutboundFailure {
            request_id,
            error,
            peer,
            ..
        } => {
            if let Some((_, reply)) = pending.remove(&request_id) {
                let _ = reply.send(Err(SendError::Failed {
                    peer,
                    reason: error.to_string(),
                }));
            }
        }
        Event::InboundFailure { peer, error, .. } => {
            tracing::debug!("inbound request from {peer} failed: {error}");
        }
        Event::ResponseSent { .. } => {}
    }
    None
}

/// Peers sorted by XOR distance of their Kademlia key to `key`, closest first.
fn sort_by_distance(key: &[u8], peers: Vec<kad::PeerInfo>) -> Vec<PeerAddrs> {
    let target = kad::KBucketKey::new(key.to_vec());
    let mut peers: Vec<_> = peers
        .into_iter()
        .map(|p| (target.distance(&kad::KBucketKey::from(p.peer_id)), p))
        .collect();
    peers.sort_by_key(|p| p.0);
    peers
        .into_iter()
        .map(|(_, p)| (p.peer_id, p.addrs))
        .collect()
}

/// Is `candidate` closer to `key` than `other` in Kademlia's XOR metric?
pub fn closer(key: &[u8], candidate: &PeerId, other: &PeerId) -> bool {
    let target = kad::KBucketKey::new(key.to_vec());
    target.distance(&kad::KBucketKey::from(*candidate))
        < target.distance(&kad::KBucketKey::from(*other))
}

/// libp2p listens with `SO_REUSEPORT`, so a second node on the same TCP port would start
/// without complaint and the kernel would split connections between the two. Binding the
/// port plainly first fails if anyone holds it.
fn ensure_port_free(addr: &Multiaddr) -> anyhow::Result<()> {
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

/// An envelope that arrived, waiting for the service's answer.
pub struct Inbound {
    pub peer: PeerId,
    pub envelope: Vec<u8>,
    pub reply: oneshot::Sender<Response>,
}

/// A mailbox request that arrived, waiting for the host's answer.
pub struct InboundMailbox {
    pub peer: PeerId,
    pub request: Vec<u8>,
    pub reply: oneshot::Sender<mailbox::Response>,
}

/// A peer and the addresses it is known at.
pub type PeerAddrs = (PeerId, Vec<Multiaddr>);

/// What the network looks like right now.
#[derive(Clone, Debug)]
pub struct Status {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub connected_peers: Vec<PeerId>,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("the network task has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
}

enum Command {
    Send {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: oneshot::Sender<Result<Response, SendError>>,
    },
    Mailbox {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: oneshot::Sender<Result<mailbox::Response, SendError>>,
    },
    Closest {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerAddrs>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Unban {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
}

/// A ban the network made or lifted, for the store to record, in the order they happened.
#[derive(Clone, Debug)]
pub enum BanEvent {
    /// A new ban, and whether to announce it to clients (not when very many are in force,
    /// so that a Sybil flood cannot push everything else out of the event log).
    Banned(Ban, bool),
    /// The ban ran out or was lifted.
    Lifted(PeerId),
}

/// Bans in force at most; beyond, the one that ends soonest is lifted early.
pub const MAX_BANS: usize = 10_000;
/// Bans in force beyond which new ones are recorded but not announced as events.
pub const ANNOUNCED_BANS: usize = 100;

/// A cloneable handle on the swarm task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    traffic: Arc<Traffic>,
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Bytes sent and received on the sotto protocols so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Hand the swarm task a command built around a reply channel, and wait for the reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)
    }

    /// Send a request to `peer`, dialling `addrs` if not connected, and wait for its answer.
    pub async fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
    ) -> Result<Response, SendError> {
        self.ask(|reply| Command::Send {
            peer,
            addrs,
            request,
            reply,
        })
        .await?
    }

    /// Send a mailbox request to `peer` and wait for its answer.
    pub async fn mailbox(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: &mailbox::Request,
    ) -> Result<mailbox::Response, SendError> {
        let bytes = request.to_bytes().map_err(|e| SendError::Failed {
            peer,
            reason: e.to_string(),
        })?;
        self.mailbox_frame(peer, addrs, Frame::Bytes(bytes)).await
    }

    /// Send a raw mailbox frame (tests use this to send malformed ones).
    pub async fn mailbox_frame(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
    ) -> Result<mailbox::Response, SendError> {
        self.ask(|reply| Command::Mailbox {
            peer,
            addrs,
            request,
            reply,
        })
        .await?
    }

    /// The peers closest to `key` that a Kademlia lookup finds (not this node), closest
    /// first.
    pub async fn closest_peers(&self, key: &[u8]) -> Result<Vec<PeerAddrs>, SendError> {
        self.ask(|reply| Command::Closest {
            key: key.to_vec(),
            reply,
        })
        .await
    }

    pub async fn status(&self) -> Result<Status, SendError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Lift the ban on `peer`; false if it was not banned.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, SendError> {
        self.ask(|reply| Command::Unban { peer, reply }).await
    }
}

/// What the network hands to the rest of the node.
pub struct Receivers {
    /// Envelopes that arrived.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Peers a new connection was made with (dropped when the queue is full).
    pub connected: mpsc::Receiver<PeerId>,
    /// Mailbox requests that arrived.
    pub mailbox: mpsc::Receiver<InboundMailbox>,
    /// Bans made and run out, to be recorded.
    pub bans: mpsc::Receiver<BanEvent>,
}

/// The swarm task's state.
pub struct Network {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    connected: mpsc::Sender<PeerId>,
    mailbox_in: mpsc::Sender<InboundMailbox>,
    pending: Pending<Response>,
    pending_mailbox: Pending<mailbox::Response>,
    pending_closest: HashMap<kad::QueryId, (Vec<u8>, oneshot::Sender<Vec<PeerAddrs>>)>,
    answers: FuturesUnordered<BoxFuture<'static, (ResponseChannel<Response>, Response)>>,
    mailbox_answers: FuturesUnordered<
        BoxFuture<'static, (ResponseChannel<mailbox::Response>, mailbox::Response)>,
    >,
    listen_addrs: Vec<Multiaddr>,
    traffic: Arc<Traffic>,
    limiter: Limiter,
    /// This node's own lookups, paced (see [`Limits::own_lookups`]), and those waiting.
    lookup_pacer: Pacer,
    waiting_lookups: std::collections::VecDeque<(Vec<u8>, oneshot::Sender<Vec<PeerAddrs>>)>,
    /// The limiter's clock: monotonic, so that a clock step cannot starve or flood buckets.
    clock: std::time::Instant,
    /// Banned peers and when their bans end (ms since the Unix epoch).
    banned: HashMap<PeerId, u64>,
    ban_events: mpsc::Sender<BanEvent>,
    /// The listeners opened at start, closed when the task ends (an in-memory transport
    /// frees its address only then, so that a node restarted in the same process can
    /// listen on it again).
    listeners: Vec<libp2p::core::transport::ListenerId>,
}

impl Network {
    /// Listen on `listen`, join via `bootstrap`, and return the task state, its handle, and
    /// the receiver of inbound envelopes.
    pub fn new(
        key: Keypair,
        listen: &[Multiaddr],
        bootstrap: &[Multiaddr],
        harness: &Harness,
        limits: &Limits,
        bans: &[Ban],
    ) -> anyhow::Result<(Network, Handle, Receivers)> {
        let peer_id = key.public().to_peer_id();
        let traffic = Arc::new(Traffic::default());
        let mut swarm = build_swarm_with(key, traffic.clone(), harness, limits)?;
        let mut banned = HashMap::new();
        for ban in bans {
            if let Ok(peer) = PeerId::from_bytes(&ban.peer) {
                swarm.behaviour_mut().blocked.block_peer(peer);
                banned.insert(peer, ban.until_ms);
            }
        }
        let mut listeners = Vec::with_capacity(listen.len());
        for addr in listen {
            ensure_port_free(addr)?;
            listeners.push(
                swarm
                    .listen_on(addr.clone())
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            );
        }
        for addr in bootstrap {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                anyhow::bail!("bootstrap address {addr} must end in /p2p/<PeerId>");
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!("cannot dial bootstrap peer {addr}: {e}");
            }
        }
        if !bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (connected, connected_rx) = mpsc::channel(COMMAND_QUEUE);
        let (mailbox_in, mailbox_rx) = mpsc::channel(INBOUND_QUEUE);
        let (ban_events, bans_rx) = mpsc::channel(COMMAND_QUEUE);
        let network = Network {
            swarm,
            commands,
            inbound,
            connected,
            mailbox_in,
            pending: HashMap::new(),
            pending_mailbox: HashMap::new(),
            pending_closest: HashMap::new(),
            answers: FuturesUnordered::new(),
            mailbox_answers: FuturesUnordered::new(),
            listen_addrs: Vec::new(),
            listeners,
            traffic: traffic.clone(),
            limiter: Limiter::new(limits.clone()),
            lookup_pacer: Pacer::new(limits.own_lookups, 0),
            waiting_lookups: Default::default(),
            clock: std::time::Instant::now(),
            banned,
            ban_events,
        };
        Ok((
            network,
            Handle {
                tx,
                peer_id,
                traffic,
            },
            Receivers {
                inbound: inbound_rx,
                connected: connected_rx,
                mailbox: mailbox_rx,
                bans: bans_rx,
            },
        ))
    }

    /// Run until every [`Handle`] is dropped or `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.lift_expired_bans(),
                _ = tokio::time::sleep(self.lookup_wait()), if !self.waiting_lookups.is_empty() => {
                    self.start_waiting_lookups()
                }
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.handle_command(c),
                    None => break,
                },
                Some((channel, response)) = self.mailbox_answers.next(), if !self.mailbox_answers.is_empty() => {
                    if self.swarm.behaviour_mut().mailbox.send_response(channel, response).is_err() {
                        tracing::debug!("a peer went away before its mailbox answer was sent");
                    }
                }
                Some((channel, response)) = self.answers.next(), if !self.answers.is_empty() => {
                    if self.swarm.behaviour_mut().envelope.send_response(channel, response).is_err() {
                        tracing::debug!("a peer went away before its answer was sent");
                    }
                }
            }
        }
        for id in self.listeners.drain(..) {
            self.swarm.remove_listener(id);
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Send {
                peer,
                addrs,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .envelope
                    .send_request_with_addresses(&peer, request, addrs);
                self.pending.insert(id, (peer, reply));
            }
            Command::Mailbox {
                peer,
                addrs,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_request_with_addresses(&peer, request, addrs);
                self.pending_mailbox.insert(id, (peer, reply));
            }
            Command::Closest { key, reply } => {
                if self.waiting_lookups.len() >= WAITING_LOOKUPS {
                    tracing::debug!("too many lookups waiting; one finds no peers");
                    let _ = reply.send(Vec::new());
                } else {
                    self.waiting_lookups.push_back((key, reply));
                    self.start_waiting_lookups();
                }
            }
            Command::Unban { peer, reply } => {
                let was = self.banned.remove(&peer).is_some();
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                // After any `Banned` of this peer still queued, so the record goes last.
                if self.ban_events.try_send(BanEvent::Lifted(peer)).is_err() {
                    tracing::warn!("cannot record lifting the ban of {peer}: the queue is full");
                }
                let _ = reply.send(was);
            }
            Command::Status { reply } => {
                let _ = reply.send(Status {
                    peer_id: *self.swarm.local_peer_id(),
                    listen_addrs: self.listen_addrs.clone(),
                    connected_peers: self.swarm.connected_peers().copied().collect(),
                });
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}/p2p/{}", self.swarm.local_peer_id());
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let _ = self.connected.try_send(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Envelope(event)) => {
                self.handle_envelope_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(event)) => {
                self.handle_mailbox_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(dht::Event::Kad(
                kad::Event::OutboundQueryProgressed {
                    id,
                    result: kad::QueryResult::GetClosestPeers(result),
                    step,
                    stats,
                },
            ))) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if step.last {
                    let t = &self.traffic;
                    count(&t.lookups, 1);
                    count(&t.lookup_requests, stats.num_requests() as usize);
                    count(&t.lookup_successes, stats.num_successes() as usize);
                    if let Some((key, reply)) = self.pending_closest.remove(&id) {
                        let _ = reply.send(sort_by_distance(&key, peers));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(dht::Event::Ban(peer)))
                if !self.banned.contains_key(&peer) =>
            {
                self.ban(peer, "over the Dht rate limit, and kept going".to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs.into_iter().take(16) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!("incoming connection from {send_back_addr} failed: {error}");
            }
            _ => {}
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// How long until the next waiting lookup may start.
    fn lookup_wait(&self) -> Duration {
        Duration::from_millis(self.lookup_pacer.wait_ms(self.now_ms()).max(1))
    }

    /// Start the waiting lookups the pace allows now.
    fn start_waiting_lookups(&mut self) {
        loop {
            // Callers that gave up (stopped nodes) cost no lookup.
            while self
                .waiting_lookups
                .front()
                .is_some_and(|(_, reply)| reply.is_closed())
            {
                self.waiting_lookups.pop_front();
            }
            if self.waiting_lookups.is_empty() || !self.lookup_pacer.take(self.now_ms()) {
                return;
            }
            if let Some((key, reply)) = self.waiting_lookups.pop_front() {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(key.clone());
                self.pending_closest.insert(id, (key, reply));
            }
        }
    }

    /// Check `peer`'s request of `kind` against its bucket; ban it if it keeps going.
    /// Returns whether the request may be served.
    fn admit(&mut self, peer: PeerId, kind: Kind) -> bool {
        // Requests read before a banned peer's connections closed are not served.
        if self.banned.contains_key(&peer) {
            return false;
        }
        let now = self.clock.elapsed().as_millis() as u64;
        match self.limiter.check(&peer, kind, now) {
            Verdict::Allow => true,
            Verdict::Refuse => false,
            Verdict::Ban => {
                self.ban(
                    peer,
                    format!("over the {kind:?} rate limit, and kept going"),
                );
                false
            }
        }
    }

    fn ban(&mut self, peer: PeerId, reason: String) {
        if self.banned.len() >= MAX_BANS {
            if let Some(first) = self.banned.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p) {
                self.banned.remove(&first);
                self.swarm.behaviour_mut().blocked.unblock_peer(first);
                let _ = self.ban_events.try_send(BanEvent::Lifted(first));
            }
        }
        let now = crate::service::now_ms();
        let until = now.saturating_add(self.limiter.limits().ban_for.as_millis() as u64);
        tracing::warn!("banned peer {peer} until {until} (ms): {reason}");
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.banned.insert(peer, until);
        let ban = Ban {
            peer: peer.to_bytes(),
            since_ms: now,
            until_ms: until,
            reason,
        };
        let announce = self.banned.len() <= ANNOUNCED_BANS;
        if self
            .ban_events
            .try_send(BanEvent::Banned(ban, announce))
            .is_err()
        {
            tracing::warn!("cannot record the ban of {peer}: the queue is full");
        }
    }

    fn lift_expired_bans(&mut self) {
        let now = crate::service::now_ms();
        let expired: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.banned.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            tracing::info!("the ban of {peer} ran out");
            let _ = self.ban_events.try_send(BanEvent::Lifted(peer));
        }
    }

    fn handle_envelope_event(&mut self, event: request_response::Event<Frame, Response>) {
        if let Some((peer, request, channel)) = settle(&mut self.pending, event) {
            self.handle_request(peer, request, channel);
        }
    }

    fn handle_mailbox_event(&mut self, event: request_response::Event<Frame, mailbox::Response>) {
        let Some((peer, request, channel)) = settle(&mut self.pending_mailbox, event) else {
            return;
        };
        let kind = match &request {
            // The request's variant: after the version byte, bincode's varint tag.
            Frame::Bytes(b) if matches!(b.get(1), Some(1 | 2)) => Kind::Fetch,
            _ => Kind::Deposit,
        };
        if !self.admit(peer, kind) {
            let refusal = mailbox::Response::Refused(mailbox::Refusal::RateLimited);
            let _ = self
                .swarm
                .behaviour_mut()
                .mailbox
                .send_response(channel, refusal);
            return;
        }
        let bytes = match request {
            Frame::Bytes(b) => b,
            Frame::HeaderOnly { claimed } => {
                tracing::warn!(
                    "peer {peer} sent a mailbox frame of {claimed} bytes, over the limit; refused"
                );
                let refusal = mailbox::Response::Refused(mailbox::Refusal::Malformed);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_response(channel, refusal);
                return;
            }
        };
        let (reply, rx) = oneshot::channel();
        match self.mailbox_in.try_send(InboundMailbox {
            peer,
            request: bytes,
            reply,
        }) {
            Ok(()) => {
                let internal = mailbox::Response::Refused(mailbox::Refusal::Internal);
                self.mailbox_answers
                    .push(rx.map(move |r| (channel, r.unwrap_or(internal))).boxed());
            }
            Err(_) => {
                let busy = mailbox::Response::Refused(mailbox::Refusal::Busy);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_response(channel, busy);
            }
        }
    }

    fn handle_request(&mut self, peer: PeerId, request: Frame, channel: ResponseChannel<Response>) {
        if !self.admit(peer, Kind::Envelope) {
            let _ = self
                .swarm
                .behaviour_mut()
                .envelope
                .send_response(channel, Response::Refused(Refusal::RateLimited));
            return;
        }
        let envelope = match request {
            Frame::Bytes(envelope) => envelope,
            Frame::HeaderOnly { claimed } => {
                tracing::warn!(
                    "peer {peer} sent a frame of {claimed} bytes, over the limit; refused"
                );
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .envelope
                    .send_response(channel, Response::Refused(Refusal::TooLarge));
                return;
            }
        };
        let (reply, rx) = oneshot::channel();
        match self.inbound.try_send(Inbound {
            peer,
            envelope,
            reply,
        }) {
            Ok(()) => self.answers.push(
                rx.map(move |r| (channel, r.unwrap_or(Response::Refused(Refusal::Internal))))
                    .boxed(),
            ),
            Err(_) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .envelope
                    .send_response(channel, Response::Refused(Refusal::Busy));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node stopped and started again in the same process (as the simulator does) gets
    /// its in-memory address back.
    #[tokio::test]
    async fn a_stopped_node_frees_its_in_memory_address() {
        let addr: Multiaddr = format!("/memory/{}", rand::random::<u32>() as u64 + (1 << 33))
            .parse()
            .unwrap();
        let harness = Harness {
            transport: Transport::Memory,
            ..Harness::default()
        };
        for run in 0..2 {
            let (net, handle, _receivers) = Network::new(
                Keypair::generate_ed25519(),
                std::slice::from_ref(&addr),
                &[],
                &harness,
                &Limits::default(),
                &[],
            )
            .unwrap_or_else(|e| panic!("start {run}: {e}"));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(net.run(stopped));
            let mut listening = false;
            for _ in 0..1_000 {
                listening = handle.status().await.unwrap().listen_addrs.contains(&addr);
                if listening {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(listening, "run {run} listens on {addr}");
            stop.send(true).unwrap();
            task.await.unwrap();
        }
    }
}
