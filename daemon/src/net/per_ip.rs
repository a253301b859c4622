//! A cap on the incoming connections one IP address may hold open to this node.
//!
//! PeerIds cost nothing to make, so a host that floods with fresh identities meets every
//! per-peer limit afresh; what it cannot change as easily is its address. [`PerIp`] refuses
//! an incoming connection once its remote IP address already holds
//! [`Limits::max_connections_per_ip`](crate::limits::Limits) established ones, so that one
//! host cannot take all of the node's incoming connection slots. Connections this node
//! dials, and transports without an IP address (the simulator's in-memory one), are not
//! counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::{
    behaviour::ConnectionEstablished, dummy, ConnectionClosed, ConnectionDenied, ConnectionId,
    FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already holds {max} incoming connections to this node")]
pub struct TooManyFromIp {
    pub ip: IpAddr,
    pub max: u32,
}

/// The behaviour: counts established incoming connections per remote IP address.
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    established: HashMap<IpAddr, u32>,
}

impl PerIp {
    pub fn new(max: u32) -> Self {
        PerIp {
            max,
            established: HashMap::new(),
        }
    }

    /// Incoming connections `ip` holds now.
    pub fn connections_from(&self, ip: &IpAddr) -> u32 {
        self.established.get(ip).copied().unwrap_or(0)
    }
}

/// The address that stands for `ip` in per-address limits and quotas: an IPv4 address as
/// it is (also when it comes IPv4-mapped in IPv6), an IPv6 address by its /64 prefix (one
/// host commonly holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

/// The IP address a multiaddress begins with, if any.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

fn incoming_ip(endpoint: &ConnectedPoint) -> Option<IpAddr> {
    match endpoint {
        ConnectedPoint::Listener { send_back_addr, .. } => ip_of(send_back_addr),
        ConnectedPoint::Dialer { .. } => None,
    }
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Only checked here: the count goes up when the swarm reports the connection
        // established, which it does only if no behaviour denied it.
        if let Some(ip) = ip_of(remote_addr) {
            if self.connections_from(&ip) >= self.max {
                return Err(ConnectionDenied::new(TooManyFromIp { ip, max: self.max }));
            }
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { endpoint, .. }) => {
                if let Some(ip) = incoming_ip(endpoint) {
                    *self.established.entry(ip).or_insert(0) += 1;
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { endpoint, .. }) => {
                if let Some(ip) = incoming_ip(endpoint) {
                    if let Some(n) = self.established.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.established.remove(&ip);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_by_ipv4_or_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
    }

    #[test]
    fn the_ip_is_read_from_tcp_and_quic_addresses_only() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
        assert_eq!(ip_of(&a), Some("10.1.2.3".parse().unwrap()));
        let b: Multiaddr = "/ip6/::1/udp/4001/quic-v1".parse().unwrap();
        assert_eq!(ip_of(&b), Some("::1".parse().unwrap()));
        let m: Multiaddr = "/memory/7".parse().unwrap();
        assert_eq!(ip_of(&m), None);
        assert_eq!(ip_of(&Multiaddr::empty()), None);
    }
}
