//! A raw libp2p peer for tests that play a hostile or careless node: it speaks the
//! envelope protocol directly, with whatever frame the test gives it.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{Event, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use sotto_daemon::network::{Behaviour, BehaviourEvent, Frame};
use sotto_protocol::wire::Response;

/// Send `request` to `peer` at `addr` on `/sotto/envelope/1` and wait (at most 30 s) for
/// its answer, or why it failed. The swarm keeps its connection afterwards.
pub async fn ask(
    swarm: &mut Swarm<Behaviour>,
    peer: PeerId,
    addr: &Multiaddr,
    request: Frame,
) -> Result<Response, String> {
    let id = swarm.behaviour_mut().envelope.send_request_with_addresses(
        &peer,
        request,
        vec![addr.clone()],
    );
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::Envelope(Event::Message {
                    message:
                        Message::Response {
                            request_id,
                            response,
                        },
                    ..
                })) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(BehaviourEvent::Envelope(Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                })) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| "timed out".to_owned())?
}
