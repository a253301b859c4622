//! A raw libp2p peer for tests that play a hostile or careless node: it speaks sotto's
//! request-response protocols directly, with whatever frame the test gives it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{Event, Message, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use sotto_daemon::net::{build_swarm, Behaviour, BehaviourEvent, Frame};
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

/// What a flood saw.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FloodReport {
    pub sent: u64,
    pub answered: u64,
    pub rate_limited: u64,
    pub failed: u64,
    /// From the first request to the last answer the victim gave.
    pub served_for: Option<Duration>,
}

/// Send envelopes to `peer` as fast as 64 streams allow, for at most `limit`, until
/// `stop` is set, or until the peer cuts this identity off after telling it to slow down. 512 bytes that open to nothing: each costs the victim a Noise attempt if
/// it lets it through.
pub async fn flood(
    key: Keypair,
    peer: PeerId,
    addr: Multiaddr,
    limit: Duration,
    stop: Arc<AtomicBool>,
) -> FloodReport {
    let mut swarm = build_swarm(key, Default::default()).unwrap();
    let mut junk = vec![0u8; 512];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(5);
    }
    junk[0] = 1;
    let mut report = FloodReport::default();
    let start = Instant::now();
    let mut in_flight = 0u32;
    let mut last_answer = None;
    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
    let deadline = tokio::time::Instant::now() + limit;
    let mut stop_this = false;
    loop {
        while in_flight < 64 && !stop.load(Ordering::Relaxed) && !stop_this {
            swarm.behaviour_mut().envelope.send_request_with_addresses(
                &peer,
                Frame::Bytes(junk.clone()),
                vec![addr.clone()],
            );
            in_flight += 1;
            report.sent += 1;
        }
        if (stop.load(Ordering::Relaxed) || stop_this) && in_flight == 0 {
            break;
        }
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Envelope(Event::Message {
                message: Message::Response { response, .. },
                ..
            })) => {
                in_flight -= 1;
                report.answered += 1;
                last_answer = Some(start.elapsed());
                if matches!(
                    response,
                    wire::Response::Refused(wire::Refusal::SlowDown(_))
                ) {
                    report.rate_limited += 1;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Envelope(Event::OutboundFailure { .. })) => {
                in_flight -= 1;
                report.failed += 1;
                // Cut off (banned): this identity is done. (Dialling again would cost the
                // victim a Noise handshake per attempt before it is refused; see
                // docs/robustness.md.)
                if report.rate_limited > 0 {
                    stop_this = true;
                }
            }
            _ => {}
        }
    }
    report.served_for = last_answer;
    report
}
