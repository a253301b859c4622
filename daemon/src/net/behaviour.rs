//! The node's libp2p behaviours, one field each, and how they are configured.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identify, kad, ping, StreamProtocol};

use super::codec::{BlobCodec, Codec, FrameCodec, MailboxCodec, OnionCodec, Protocol};
use super::dht;
use super::guard::Guard;
use super::per_ip::PerIp;
use super::traffic::Traffic;
use crate::limits::Limits;
use crate::store::Ban;

/// How long a request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent request streams per connection.
pub const MAX_STREAMS: usize = 64;

/// The node's network behaviours.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Rate limits and bans: banned peers' connections are closed and new ones denied.
    pub guard: Guard,
    pub connection_limits: connection_limits::Behaviour,
    /// A cap on incoming connections per remote IP address.
    pub per_ip: PerIp,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Kademlia, with a rate limit per peer on the requests it answers.
    pub kad: dht::Guarded,
    pub envelope: request_response::Behaviour<Codec>,
    pub mailbox: request_response::Behaviour<MailboxCodec>,
    /// Onion cells of private paths; a node that does not relay only sends them.
    pub onion: request_response::Behaviour<OnionCodec>,
    /// Chunks of blobs (attachments) this node offers.
    pub blob: request_response::Behaviour<BlobCodec>,
}

/// A request-response behaviour for the protocol `P`.
fn exchange<P: Protocol>(traffic: Arc<Traffic>) -> request_response::Behaviour<FrameCodec<P>> {
    exchange_with(traffic, ProtocolSupport::Full)
}

/// … that takes requests only if `support` says so (identify then names the protocol).
fn exchange_with<P: Protocol>(
    traffic: Arc<Traffic>,
    support: ProtocolSupport,
) -> request_response::Behaviour<FrameCodec<P>> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(traffic),
        [(StreamProtocol::new(P::ID), support)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

impl Behaviour {
    /// The behaviours with the default limits and no bans.
    pub fn new(key: &Keypair, traffic: Arc<Traffic>) -> Self {
        Behaviour::with_limits(key, traffic, &Limits::default(), &[])
    }

    /// The behaviours, applying `limits`, with `bans` in force.
    pub fn with_limits(
        key: &Keypair,
        traffic: Arc<Traffic>,
        limits: &Limits,
        bans: &[Ban],
    ) -> Self {
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
            guard: Guard::new(limits, bans),
            connection_limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(limits.max_connections))
                    .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                    .with_max_pending_incoming(Some(limits.max_pending)),
            ),
            per_ip: PerIp::new(limits.max_connections_per_ip),
            identify: identify::Behaviour::new(identify::Config::new(
                "/sotto/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            kad: dht::Guarded::new(kad, limits, traffic.clone()),
            envelope: exchange(traffic.clone()),
            mailbox: exchange(traffic.clone()),
            blob: exchange(traffic.clone()),
            onion: exchange_with(
                traffic,
                if limits.relay {
                    ProtocolSupport::Full
                } else {
                    ProtocolSupport::Outbound
                },
            ),
        }
    }
}
