//! The swarm task: the one owner of the [`Swarm`]. Its loop waits for a swarm event, a
//! command, a timer or an answer from the node, and hands each to one handler.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, kad, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::codec::{Blobs, Envelopes, Mailbox, Onion, Protocol as _};
use super::exchange::Exchange;
use super::guard::BanEvent;
use super::per_ip::ip_of;
use super::traffic::{count, Traffic};
use super::transport::{build_swarm_with, ensure_port_free};
use super::{
    dht, sort_by_distance, Command, Handle, PeerAddrs, Receivers, Status, COMMAND_QUEUE,
    INBOUND_QUEUE,
};
use crate::clock::Monotonic;
use crate::limits::{Limits, Pacer};
use crate::link::Harness;
use crate::store::Ban;

/// Lookups waiting for the node's own lookup pace, at most; beyond that a lookup finds no
/// peers at once (its caller tries again next round).
pub const WAITING_LOOKUPS: usize = 1_024;
/// Relays remembered, at most (beyond, the one heard of longest ago is forgotten).
pub const MAX_RELAYS: usize = 1_024;
/// Addresses remembered per relay, at most.
const ADDRS_PER_RELAY: usize = 4;
/// How often bans that ran out are lifted.
const BAN_TICK: Duration = Duration::from_secs(5);

/// A lookup waiting to start or to finish.
type Lookup = (Vec<u8>, oneshot::Sender<Vec<PeerAddrs>>);

/// The swarm task's state.
pub struct Network {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    envelopes: Exchange<Envelopes>,
    mailbox: Exchange<Mailbox>,
    onion: Exchange<Onion>,
    blob: Exchange<Blobs>,
    /// Peers that said (in identify) that they relay onion cells: their addresses, when
    /// this node last heard so (by a counter), and whether a connection to them is open.
    relays: HashMap<PeerId, (Vec<Multiaddr>, u64, bool)>,
    relays_heard: u64,
    connected: mpsc::Sender<super::Connected>,
    ban_events: mpsc::Sender<BanEvent>,
    traffic: Arc<Traffic>,
    listen_addrs: Vec<Multiaddr>,
    /// The listeners opened at start, closed when the task ends (an in-memory transport
    /// frees its address only then, so that a node restarted in the same process can
    /// listen on it again).
    listeners: Vec<libp2p::core::transport::ListenerId>,
    /// This node's own lookups, paced (see [`Limits::own_lookups`]), those waiting for the
    /// pace, and those under way.
    lookup_pacer: Pacer,
    clock: Monotonic,
    waiting_lookups: VecDeque<Lookup>,
    pending_lookups: HashMap<kad::QueryId, Lookup>,
    /// The remote IP address of each open connection that has one.
    sources: HashMap<ConnectionId, IpAddr>,
}

impl Network {
    /// Listen on `listen`, join via `bootstrap`, with `bans` from an earlier run in force;
    /// return the task state, its handle, and what it hands to the node.
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
        let mut swarm = build_swarm_with(key, traffic.clone(), harness, limits, bans)?;
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
        let (envelopes, envelopes_rx) = Exchange::new(INBOUND_QUEUE);
        let (mailbox, mailbox_rx) = Exchange::new(INBOUND_QUEUE);
        let (onion, onion_rx) = Exchange::new(INBOUND_QUEUE);
        let (blob, blob_rx) = Exchange::new(INBOUND_QUEUE);
        let (connected, connected_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ban_events, bans_rx) = mpsc::channel(COMMAND_QUEUE);
        let network = Network {
            swarm,
            commands,
            envelopes,
            mailbox,
            onion,
            blob,
            relays: HashMap::new(),
            relays_heard: 0,
            connected,
            ban_events,
            traffic: traffic.clone(),
            listen_addrs: Vec::new(),
            listeners,
            lookup_pacer: Pacer::new(limits.own_lookups, 0),
            clock: Monotonic::start(),
            waiting_lookups: VecDeque::new(),
            pending_lookups: HashMap::new(),
            sources: HashMap::new(),
        };
        let handle = Handle {
            tx,
            peer_id,
            traffic,
            throttled: Arc::new(Mutex::new(HashMap::new())),
        };
        let receivers = Receivers {
            envelopes: envelopes_rx,
            mailbox: mailbox_rx,
            onion: onion_rx,
            blob: blob_rx,
            connected: connected_rx,
            bans: bans_rx,
        };
        Ok((network, handle, receivers))
    }

    /// Run until every [`Handle`] is dropped or `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(BAN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.swarm.behaviour_mut().guard.lift_expired(),
                _ = tokio::time::sleep(self.lookup_wait()), if !self.waiting_lookups.is_empty() => {
                    self.start_waiting_lookups()
                }
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.handle_command(c),
                    None => break,
                },
                Some((channel, answer)) = self.envelopes.next_answer() => {
                    if self.swarm.behaviour_mut().envelope.send_response(channel, answer).is_err() {
                        tracing::debug!("a peer went away before its answer was sent");
                    }
                }
                Some((channel, answer)) = self.mailbox.next_answer() => {
                    if self.swarm.behaviour_mut().mailbox.send_response(channel, answer).is_err() {
                        tracing::debug!("a peer went away before its mailbox answer was sent");
                    }
                }
                Some((channel, answer)) = self.onion.next_answer() => {
                    if self.swarm.behaviour_mut().onion.send_response(channel, answer).is_err() {
                        tracing::debug!("a peer went away before its onion answer was sent");
                    }
                }
                Some((channel, answer)) = self.blob.next_answer() => {
                    if self.swarm.behaviour_mut().blob.send_response(channel, answer).is_err() {
                        tracing::debug!("a peer went away before its chunk was sent");
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
            Command::Envelope {
                peer,
                addrs,
                request,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                self.envelopes
                    .send(&mut b.envelope, peer, addrs, request, reply);
            }
            Command::Mailbox {
                peer,
                addrs,
                request,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                self.mailbox
                    .send(&mut b.mailbox, peer, addrs, request, reply);
            }
            Command::Onion {
                peer,
                addrs,
                request,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                self.onion.send(&mut b.onion, peer, addrs, request, reply);
            }
            Command::Blob {
                peer,
                addrs,
                request,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                self.blob.send(&mut b.blob, peer, addrs, request, reply);
            }
            Command::Relays { reply } => {
                let _ = reply.send(
                    self.relays
                        .iter()
                        .map(|(peer, (addrs, _, connected))| super::Relay {
                            peer: *peer,
                            addrs: addrs.clone(),
                            connected: *connected,
                        })
                        .collect(),
                );
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
            Command::Junk { peer } => self.swarm.behaviour_mut().guard.junk_from(peer),
            Command::Strike { peer, reason } => {
                self.swarm.behaviour_mut().guard.strike(peer, reason)
            }
            Command::Contacts { peers } => self.swarm.behaviour_mut().guard.set_contacts(peers),
            Command::Unban { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour_mut().guard.lift(peer));
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
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.sources.insert(connection_id, ip);
                }
                if num_established.get() == 1 {
                    let was_alone = self.swarm.connected_peers().take(2).count() == 1;
                    let _ = self.connected.try_send(super::Connected {
                        peer: peer_id,
                        was_alone,
                    });
                }
                if let Some(relay) = self.relays.get_mut(&peer_id) {
                    relay.2 = true;
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                peer_id,
                num_established,
                ..
            } => {
                self.sources.remove(&connection_id);
                if num_established == 0 {
                    if let Some(relay) = self.relays.get_mut(&peer_id) {
                        relay.2 = false;
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Envelope(event)) => {
                let b = self.swarm.behaviour_mut();
                self.envelopes
                    .on_event(event, &mut b.guard, &mut b.envelope, &self.sources);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(event)) => {
                let b = self.swarm.behaviour_mut();
                self.mailbox
                    .on_event(event, &mut b.guard, &mut b.mailbox, &self.sources);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Onion(event)) => {
                let b = self.swarm.behaviour_mut();
                self.onion
                    .on_event(event, &mut b.guard, &mut b.onion, &self.sources);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blob(event)) => {
                let b = self.swarm.behaviour_mut();
                self.blob
                    .on_event(event, &mut b.guard, &mut b.blob, &self.sources);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Guard(event)) => self.handle_ban(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_dht_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let relays = info.protocols.iter().any(|p| p.as_ref() == Onion::ID);
                if relays {
                    self.heard_relay(peer_id, &info.listen_addrs);
                } else {
                    self.relays.remove(&peer_id);
                }
                for addr in info.listen_addrs.into_iter().take(16) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => {
                // A relay this node cannot reach is no relay to build paths through, until
                // it is heard from again.
                self.relays.remove(&peer);
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

    /// `peer` relays, at `addrs`; remember it (forgetting the one heard of longest ago when
    /// the list is full).
    fn heard_relay(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        self.relays_heard += 1;
        if !self.relays.contains_key(&peer) && self.relays.len() >= MAX_RELAYS {
            if let Some(oldest) = self
                .relays
                .iter()
                .min_by_key(|(_, (_, heard, _))| *heard)
                .map(|(p, _)| *p)
            {
                self.relays.remove(&oldest);
            }
        }
        let addrs = addrs.iter().take(ADDRS_PER_RELAY).cloned().collect();
        let connected = self.swarm.is_connected(&peer);
        self.relays
            .insert(peer, (addrs, self.relays_heard, connected));
    }

    /// Pass a ban made or lifted on to be recorded, in the order they happened.
    fn handle_ban(&mut self, event: BanEvent) {
        if self.ban_events.try_send(event).is_err() {
            tracing::warn!("cannot record a ban: the queue is full");
        }
    }

    fn handle_dht_event(&mut self, event: dht::Event) {
        match event {
            dht::Event::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                stats,
            }) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if step.last {
                    if let Some(took) = stats.duration().filter(|d| d.as_secs() >= 5) {
                        tracing::debug!(
                            "a lookup took {took:?}: {} requests, {} answered, {} failed",
                            stats.num_requests(),
                            stats.num_successes(),
                            stats.num_failures()
                        );
                    }
                    let t = &self.traffic;
                    count(&t.lookups, 1);
                    count(&t.lookup_requests, stats.num_requests() as usize);
                    count(&t.lookup_successes, stats.num_successes() as usize);
                    if let Some((key, reply)) = self.pending_lookups.remove(&id) {
                        let _ = reply.send(sort_by_distance(&key, peers));
                    }
                }
            }
            dht::Event::Ban(peer) => self
                .swarm
                .behaviour_mut()
                .guard
                .ban(peer, "over the Dht rate limit, and kept going".to_string()),
            dht::Event::Kad(_) => {}
        }
    }

    /// How long until the next waiting lookup may start.
    fn lookup_wait(&self) -> Duration {
        Duration::from_millis(self.lookup_pacer.wait_ms(self.clock.ms()).max(1))
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
            if self.waiting_lookups.is_empty() || !self.lookup_pacer.take(self.clock.ms()) {
                return;
            }
            if let Some((key, reply)) = self.waiting_lookups.pop_front() {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(key.clone());
                self.pending_lookups.insert(id, (key, reply));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Transport;

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
