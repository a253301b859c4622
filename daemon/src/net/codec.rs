//! sotto's request-response protocols as the swarm sees them: each is a [`Protocol`] (its
//! limits, how its requests are read and refused, its answers, its counters), and all share
//! one framing, [`FrameCodec`]: a 4-byte big-endian length, then the bytes, the length
//! checked against the protocol's limit before anything is read or allocated.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use sotto_protocol::wire::{self, Refusal, Response};
use sotto_protocol::{blob, mailbox, onion};

use super::traffic::{count, Traffic};
use crate::limits::Kind;

/// A request on one of sotto's protocols, as read off a stream: the bytes of one frame, or
/// — when its header claims more than the protocol's limit — only that header, so that the
/// reader can refuse it without reading it. Written, `HeaderOnly` is only that header
/// (tests use it to probe a peer's limits).
#[derive(Clone, Debug)]
pub enum Frame {
    Bytes(Vec<u8>),
    HeaderOnly { claimed: u32 },
}

/// Why the node's shell refuses a request before the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The frame is longer than the protocol allows.
    TooLarge,
    /// The peer is over its rate limit (or banned), and may go on after `retry_after`.
    RateLimited { retry_after: Duration },
    /// The node's queue for this protocol is full.
    Busy,
    /// The node did not answer (it is stopping).
    Internal,
}

/// One of sotto's request-response protocols.
pub trait Protocol: Send + Sync + 'static {
    /// A request, as the node handles it.
    type Request: Send + 'static;
    type Answer: Send + Clone + std::fmt::Debug + 'static;
    /// The protocol id on the wire.
    const ID: &'static str;
    const MAX_REQUEST: usize;
    const MAX_ANSWER: usize;
    /// Read a request's bytes, or say the answer that refuses them.
    fn read_request(bytes: Vec<u8>) -> Result<Self::Request, Self::Answer>;
    /// The rate-limit bucket a request (`None`: one that did not read) counts against.
    fn kind(request: Option<&Self::Request>) -> Kind;
    /// The answer that refuses a request for `why`.
    fn refusal(why: Why) -> Self::Answer;
    /// How long the peer that gave this answer asked to be left alone, if it did.
    fn slow_down(answer: &Self::Answer) -> Option<Duration>;
    fn encode(answer: &Self::Answer) -> io::Result<Vec<u8>>;
    fn decode(bytes: &[u8]) -> io::Result<Self::Answer>;
    /// The (received, sent) byte counters of this protocol.
    fn counters(traffic: &Traffic) -> (&AtomicU64, &AtomicU64);
}

/// How long this node leaves a peer alone after it said `RateLimited`: long enough for its
/// buckets to refill well beyond a burst's worth of refusals.
pub const RATE_LIMITED_FOR: Duration = Duration::from_secs(10);
/// … and after it said `Busy` (its queue was full for a moment).
pub const BUSY_FOR: Duration = Duration::from_secs(1);
/// The longest pause a peer's `SlowDown` is taken at its word for (a banned sender is told
/// the rest of its ban).
pub const MAX_SLOW_DOWN: Duration = Duration::from_secs(3_600);

/// `/sotto/envelope/1`: one sealed envelope (opened by the node), one [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Envelopes;

impl Protocol for Envelopes {
    type Request = Vec<u8>;
    type Answer = Response;
    const ID: &'static str = wire::ENVELOPE_PROTOCOL;
    const MAX_REQUEST: usize = wire::MAX_REQUEST_BYTES;
    const MAX_ANSWER: usize = wire::MAX_RESPONSE_BYTES;
    fn read_request(bytes: Vec<u8>) -> Result<Vec<u8>, Response> {
        Ok(bytes)
    }
    fn kind(_: Option<&Vec<u8>>) -> Kind {
        Kind::Envelope
    }
    fn refusal(why: Why) -> Response {
        Response::Refused(match why {
            Why::TooLarge => Refusal::TooLarge,
            Why::RateLimited { retry_after } => {
                Refusal::SlowDown(u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX))
            }
            Why::Busy => Refusal::Busy,
            Why::Internal => Refusal::Internal,
        })
    }
    fn slow_down(answer: &Response) -> Option<Duration> {
        match answer {
            Response::Refused(Refusal::SlowDown(ms)) => {
                Some(Duration::from_millis(u64::from(*ms)).min(MAX_SLOW_DOWN))
            }
            Response::Refused(Refusal::RateLimited) => Some(RATE_LIMITED_FOR),
            Response::Refused(Refusal::Busy) => Some(BUSY_FOR),
            _ => None,
        }
    }
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

/// `/sotto/mailbox/1`: one [`mailbox::Request`], one [`mailbox::Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Mailbox;

impl Protocol for Mailbox {
    type Request = mailbox::Request;
    type Answer = mailbox::Response;
    const ID: &'static str = mailbox::PROTOCOL;
    const MAX_REQUEST: usize = mailbox::MAX_REQUEST_BYTES;
    const MAX_ANSWER: usize = mailbox::MAX_RESPONSE_BYTES;
    fn read_request(bytes: Vec<u8>) -> Result<mailbox::Request, mailbox::Response> {
        mailbox::Request::from_bytes(&bytes).map_err(|e| {
            tracing::debug!("malformed mailbox request: {e}");
            mailbox::Response::Refused(mailbox::Refusal::Malformed)
        })
    }
    fn kind(request: Option<&mailbox::Request>) -> Kind {
        match request {
            Some(mailbox::Request::Fetch(_) | mailbox::Request::Delete(_)) => Kind::Fetch,
            Some(mailbox::Request::Deposit(_)) | None => Kind::Deposit,
        }
    }
    fn refusal(why: Why) -> mailbox::Response {
        mailbox::Response::Refused(match why {
            Why::TooLarge => mailbox::Refusal::Malformed,
            Why::RateLimited { .. } => mailbox::Refusal::RateLimited,
            Why::Busy => mailbox::Refusal::Busy,
            Why::Internal => mailbox::Refusal::Internal,
        })
    }
    fn slow_down(answer: &mailbox::Response) -> Option<Duration> {
        match answer {
            mailbox::Response::Refused(mailbox::Refusal::RateLimited) => Some(RATE_LIMITED_FOR),
            mailbox::Response::Refused(mailbox::Refusal::Busy) => Some(BUSY_FOR),
            _ => None,
        }
    }
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

/// `/sotto/onion/1`: one onion cell to relay, one [`onion::Answer`]: the reply cell, or a
/// refusal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Onion;

impl Protocol for Onion {
    type Request = onion::Cell;
    type Answer = onion::Answer;
    const ID: &'static str = onion::PROTOCOL;
    const MAX_REQUEST: usize = onion::FRAME_BYTES;
    const MAX_ANSWER: usize = onion::MAX_ANSWER_BYTES;
    fn read_request(bytes: Vec<u8>) -> Result<onion::Cell, onion::Answer> {
        onion::Cell::from_bytes(&bytes).map_err(|e| {
            tracing::debug!("malformed onion cell: {e}");
            onion::Answer::Refused(onion::Refusal::Malformed)
        })
    }
    fn kind(_: Option<&onion::Cell>) -> Kind {
        Kind::Onion
    }
    fn refusal(why: Why) -> onion::Answer {
        onion::Answer::Refused(match why {
            Why::TooLarge => onion::Refusal::Malformed,
            Why::RateLimited { retry_after } => {
                onion::Refusal::SlowDown(u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX))
            }
            Why::Busy => onion::Refusal::Busy,
            Why::Internal => onion::Refusal::Internal,
        })
    }
    fn slow_down(answer: &onion::Answer) -> Option<Duration> {
        match answer {
            onion::Answer::Refused(onion::Refusal::SlowDown(ms)) => {
                Some(Duration::from_millis(u64::from(*ms)).min(MAX_SLOW_DOWN))
            }
            onion::Answer::Refused(onion::Refusal::Busy) => Some(BUSY_FOR),
            _ => None,
        }
    }
    fn encode(answer: &onion::Answer) -> io::Result<Vec<u8>> {
        Ok(answer.to_bytes())
    }
    fn decode(bytes: &[u8]) -> io::Result<onion::Answer> {
        onion::Answer::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn counters(t: &Traffic) -> (&AtomicU64, &AtomicU64) {
        (&t.onion_in, &t.onion_out)
    }
}

/// `/sotto/blob/1`: one [`blob::ChunkRequest`], one [`blob::ChunkAnswer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Blobs;

impl Protocol for Blobs {
    type Request = blob::ChunkRequest;
    type Answer = blob::ChunkAnswer;
    const ID: &'static str = blob::PROTOCOL;
    const MAX_REQUEST: usize = blob::MAX_REQUEST_BYTES;
    const MAX_ANSWER: usize = blob::MAX_ANSWER_BYTES;
    fn read_request(bytes: Vec<u8>) -> Result<blob::ChunkRequest, blob::ChunkAnswer> {
        blob::ChunkRequest::from_bytes(&bytes).map_err(|e| {
            tracing::debug!("malformed chunk request: {e}");
            blob::ChunkAnswer::Refused(blob::ChunkRefusal::Malformed)
        })
    }
    fn kind(_: Option<&blob::ChunkRequest>) -> Kind {
        Kind::Chunk
    }
    fn refusal(why: Why) -> blob::ChunkAnswer {
        blob::ChunkAnswer::Refused(match why {
            Why::TooLarge => blob::ChunkRefusal::Malformed,
            Why::RateLimited { retry_after } => blob::ChunkRefusal::SlowDown(
                u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
            ),
            Why::Busy => blob::ChunkRefusal::Busy,
            Why::Internal => blob::ChunkRefusal::Internal,
        })
    }
    fn slow_down(answer: &blob::ChunkAnswer) -> Option<Duration> {
        match answer {
            blob::ChunkAnswer::Refused(blob::ChunkRefusal::SlowDown(ms)) => {
                Some(Duration::from_millis(u64::from(*ms)).min(MAX_SLOW_DOWN))
            }
            blob::ChunkAnswer::Refused(blob::ChunkRefusal::Busy) => Some(BUSY_FOR),
            _ => None,
        }
    }
    fn encode(answer: &blob::ChunkAnswer) -> io::Result<Vec<u8>> {
        answer
            .to_bytes()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn decode(bytes: &[u8]) -> io::Result<blob::ChunkAnswer> {
        blob::ChunkAnswer::from_bytes(bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    fn counters(t: &Traffic) -> (&AtomicU64, &AtomicU64) {
        (&t.blob_in, &t.blob_out)
    }
}

/// The framing of one of sotto's protocols.
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
pub type Codec = FrameCodec<Envelopes>;
/// The codec of `/sotto/mailbox/1`.
pub type MailboxCodec = FrameCodec<Mailbox>;
/// The codec of `/sotto/onion/1`.
pub type OnionCodec = FrameCodec<Onion>;
/// The codec of `/sotto/blob/1`.
pub type BlobCodec = FrameCodec<Blobs>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::mailbox::Request;

    #[test]
    fn mailbox_requests_count_by_their_decoded_kind() {
        assert_eq!(Mailbox::kind(None), Kind::Deposit);
        let refused = Mailbox::read_request(vec![1, 2, 3]).unwrap_err();
        assert_eq!(
            refused,
            mailbox::Response::Refused(mailbox::Refusal::Malformed)
        );
        let secret = sotto_protocol::deaddrop::Secret::from_bytes([3; 32]);
        let key = secret.drop_key(1);
        let fetch = Request::Fetch(mailbox::Fetch {
            address: key.address(),
            timestamp: 1,
            after: None,
            proof: key.sign(&mailbox::Fetch::signed_bytes(1, b"h")),
        });
        let read = Mailbox::read_request(fetch.to_bytes().unwrap()).unwrap();
        assert_eq!(Mailbox::kind(Some(&read)), Kind::Fetch);
    }
}
