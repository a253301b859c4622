//! One request-response protocol as the swarm task handles it, the same for every protocol:
//! requests this node sent, waiting for their answers; and requests that arrived, each
//! admitted by the [`Guard`], read by the protocol, handed to the node over a bounded queue,
//! and answered on its stream when the node's answer comes back.

use std::collections::HashMap;
use std::net::IpAddr;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::codec::{Frame, FrameCodec, Protocol, Why};
use super::guard::Guard;
use super::SendError;

/// A request that arrived, waiting for the node's answer.
pub struct Inbound<P: Protocol> {
    pub peer: PeerId,
    /// The IP address of the connection it came on (none for in-memory transports).
    pub source: Option<IpAddr>,
    pub request: P::Request,
    pub reply: oneshot::Sender<P::Answer>,
}

/// The requests that arrived on one protocol, as the node takes them: those from contacts'
/// nodes first, so that a contact's envelope never waits behind a stranger's flood. Each
/// lane holds at most the exchange's capacity; beyond, its senders are told `Busy`.
pub struct Inbox<P: Protocol> {
    contacts: mpsc::Receiver<Inbound<P>>,
    others: mpsc::Receiver<Inbound<P>>,
}

impl<P: Protocol> Inbox<P> {
    /// The next request, a contact's first; `None` once the swarm task has stopped.
    pub async fn recv(&mut self) -> Option<Inbound<P>> {
        tokio::select! {
            biased;
            Some(inbound) = self.contacts.recv() => Some(inbound),
            Some(inbound) = self.others.recv() => Some(inbound),
            else => None,
        }
    }
}

/// Where a request this node sends on `P` reports its answer.
pub type Reply<P> = oneshot::Sender<Result<<P as Protocol>::Answer, SendError>>;

/// The node's answer to a request, with the stream to send it on.
type Answered<P> = (
    ResponseChannel<<P as Protocol>::Answer>,
    <P as Protocol>::Answer,
);

type Behaviour<P> = request_response::Behaviour<FrameCodec<P>>;

/// The task's state for one protocol.
pub struct Exchange<P: Protocol> {
    pending: HashMap<OutboundRequestId, Reply<P>>,
    /// Requests for the node: from contacts' nodes, and from everyone else.
    inbound: [mpsc::Sender<Inbound<P>>; 2],
    answers: FuturesUnordered<BoxFuture<'static, Answered<P>>>,
}

impl<P: Protocol> Exchange<P> {
    /// An exchange that hands requests to the node over a queue of `capacity`; beyond that,
    /// senders are told `Busy`.
    pub fn new(capacity: usize) -> (Self, Inbox<P>) {
        let (contacts, contacts_rx) = mpsc::channel(capacity);
        let (others, others_rx) = mpsc::channel(capacity);
        let inbound = [contacts, others];
        let rx = Inbox {
            contacts: contacts_rx,
            others: others_rx,
        };
        (
            Exchange {
                pending: HashMap::new(),
                inbound,
                answers: FuturesUnordered::new(),
            },
            rx,
        )
    }

    /// Send `request` to `peer`, dialling `addrs` if not connected; the answer goes to `reply`.
    pub fn send(
        &mut self,
        behaviour: &mut Behaviour<P>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Frame,
        reply: Reply<P>,
    ) {
        let id = behaviour.send_request_with_addresses(&peer, request, addrs);
        self.pending.insert(id, reply);
    }

    /// Handle what the protocol's behaviour reported.
    pub fn on_event(
        &mut self,
        event: request_response::Event<Frame, P::Answer>,
        guard: &mut Guard,
        behaviour: &mut Behaviour<P>,
        sources: &HashMap<ConnectionId, IpAddr>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => {
                let source = sources.get(&connection_id).copied();
                let answer = match admit::<P>(peer, source, request, guard) {
                    Ok(request) => {
                        let (reply, answer) = oneshot::channel();
                        let lane = usize::from(!guard.is_contact(&peer));
                        match self.inbound[lane].try_send(Inbound {
                            peer,
                            source,
                            request,
                            reply,
                        }) {
                            Ok(()) => {
                                let internal = P::refusal(Why::Internal);
                                self.answers.push(
                                    answer
                                        .map(move |a| (channel, a.unwrap_or(internal)))
                                        .boxed(),
                                );
                                return;
                            }
                            Err(_) => P::refusal(Why::Busy),
                        }
                    }
                    Err(refusal) => refusal,
                };
                if behaviour.send_response(channel, answer).is_err() {
                    tracing::debug!("{peer} went away before its {} answer was sent", P::ID);
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(SendError::Failed {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!("inbound {} request from {peer} failed: {error}", P::ID);
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

impl<P: Protocol> Exchange<P> {
    /// The node's next answer to a request that arrived, with the stream to send it on.
    pub async fn next_answer(&mut self) -> Option<Answered<P>> {
        if self.answers.is_empty() {
            return std::future::pending().await;
        }
        self.answers.next().await
    }
}

/// Check a request from `peer` against its limit and read it: the request, or the answer
/// that refuses it.
fn admit<P: Protocol>(
    peer: PeerId,
    source: Option<IpAddr>,
    frame: Frame,
    guard: &mut Guard,
) -> Result<P::Request, P::Answer> {
    let read = match frame {
        Frame::Bytes(bytes) => P::read_request(bytes),
        Frame::HeaderOnly { claimed } => {
            if let Err(retry_after) = guard.admit(peer, source, P::kind(None)) {
                return Err(P::refusal(Why::RateLimited { retry_after }));
            }
            tracing::warn!(
                "{peer} sent a {} frame of {claimed} bytes, over the limit; refused",
                P::ID
            );
            return Err(P::refusal(Why::TooLarge));
        }
    };
    if let Err(retry_after) = guard.admit(peer, source, P::kind(read.as_ref().ok())) {
        return Err(P::refusal(Why::RateLimited { retry_after }));
    }
    read
}
