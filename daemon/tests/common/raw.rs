//! A raw libp2p peer for tests that play a hostile or careless node: it speaks sotto's
//! request-response protocols directly, with whatever frame the test gives it.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{Event, Message, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use sotto_daemon::net::{Behaviour, BehaviourEvent, Frame};
use sotto_protocol::{mailbox, wire};

/// Send `request` to `peer` at `addr` on `/sotto/envelope/1` and wait (at most 30 s) for
/// its answer, or why it failed. The swarm keeps its connection afterwards.
pub async fn ask(
    swarm: &mut Swarm<Behaviour>,
    peer: PeerId,
    addr: &Multiaddr,
    request: Frame,
) -> Result<wire::Response, String> {
    let id = swarm.behaviour_mut().envelope.send_request_with_addresses(
        &peer,
        request,
        vec![addr.clone()],
    );
    answer(swarm, |event| match event {
        BehaviourEvent::Envelope(e) => settle(e, id),
        _ => None,
    })
    .await
}

/// As [`ask`], on `/sotto/mailbox/1`.
pub async fn ask_mailbox(
    swarm: &mut Swarm<Behaviour>,
    peer: PeerId,
    addr: &Multiaddr,
    request: Frame,
) -> Result<mailbox::Response, String> {
    let id = swarm.behaviour_mut().mailbox.send_request_with_addresses(
        &peer,
        request,
        vec![addr.clone()],
    );
    answer(swarm, |event| match event {
        BehaviourEvent::Mailbox(e) => settle(e, id),
        _ => None,
    })
    .await
}

/// The answer to request `id`, or its failure, if `event` is either.
fn settle<Resp>(event: Event<Frame, Resp>, id: OutboundRequestId) -> Option<Result<Resp, String>> {
    match event {
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } if request_id == id => Some(Ok(response)),
        Event::OutboundFailure {
            request_id, error, ..
        } if request_id == id => Some(Err(error.to_string())),
        _ => None,
    }
}

/// Drive `swarm` until `pick` finds the outcome in one of its events (at most 30 s).
async fn answer<T>(
    swarm: &mut Swarm<Behaviour>,
    mut pick: impl FnMut(BehaviourEvent) -> Option<Result<T, String>>,
) -> Result<T, String> {
    let wait = async {
        loop {
            if let SwarmEvent::Behaviour(event) = swarm.select_next_some().await {
                if let Some(outcome) = pick(event) {
                    return outcome;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| "timed out".to_owned())?
}
