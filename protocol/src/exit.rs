//! What travels inside onion cells ([`crate::onion`]) between a node and the exit of its
//! path: the mailbox work the exit does in the node's stead, so that no host and no
//! Kademlia peer sees the node's PeerId next to its dead drops.
//!
//! An exit request is one of two: look up the hosts of a dead drop ([`ExitRequest::Hosts`]),
//! or hand a mailbox request to one host ([`ExitRequest::Mailbox`]). Mailbox requests are
//! authorised by what they carry (deposit proofs and stamps, fetch and delete proofs that
//! name the host), never by who sends them, so the exit passes them on unchanged.
//!
//! A request or answer too large for one cell travels in parts: the node sends
//! [`ToExit::Part`]s of one stream, the exit runs the request once it has every part, and an
//! answer too large for a cell waits at the exit for [`ToExit::More`]. A page of fetched
//! envelopes is cut to what fits one cell (at least one envelope) and says `more`, so that
//! a fetch answer is one cell whether the dead drop is empty or full.
//!
//! [`Exit`] is the exit's side, sans-I/O: what it holds between the cells of a stream,
//! bounded in streams, bytes and time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::deaddrop::Address;
use crate::mailbox;
use crate::onion::{MAX_ANSWER, MAX_REQUEST};

/// The version byte of every message to or from an exit.
pub const VERSION: u8 = 1;
/// Hosts an exit names for a dead drop, at most.
pub const MAX_HOSTS: usize = 8;
/// Addresses an exit names for one host (or a node for a host), at most.
pub const MAX_ADDRS: usize = 4;
/// The longest binary multiaddr passed on.
pub const MAX_ADDR_BYTES: usize = 64;
/// Streams an exit holds at once, at most.
pub const MAX_STREAMS: usize = 256;
/// Bytes an exit holds for all streams together, at most.
pub const MAX_HELD_BYTES: usize = 16 << 20;
/// How long an exit keeps a stream it hears nothing more of.
pub const STREAM_TTL_MS: u64 = 60_000;
/// The largest request (encoded) a stream carries: a mailbox request and its envelope.
pub const MAX_STREAM_REQUEST: usize = mailbox::MAX_REQUEST_BYTES + 1024;
/// The largest answer (encoded) a stream carries: one fetched envelope of the largest
/// bucket with its authorisation, or a page of small ones.
pub const MAX_STREAM_ANSWER: usize = 128 * 1024;
/// What a cell's [`ToExit::Part`] and [`FromExit::Part`] leave for the bytes of a part.
const PART_OVERHEAD: usize = 64;
/// The bytes of a request part.
pub const PART_BYTES: usize = MAX_REQUEST - PART_OVERHEAD;
/// The bytes of an answer part.
pub const ANSWER_PART_BYTES: usize = MAX_ANSWER - PART_OVERHEAD;

/// A stream's id, chosen at random by the node.
pub type StreamId = [u8; 16];

/// The work a node asks of an exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitRequest {
    /// Look up the hosts of `address` and name them, closest first (the exit itself too,
    /// when it is one).
    Hosts { address: Address },
    /// Give `request` to the host `host` (a binary PeerId; `addrs` are binary multiaddrs it
    /// may be reached at) and pass back its answer. The exit serves it itself when `host`
    /// is the exit.
    Mailbox {
        host: Vec<u8>,
        addrs: Vec<Vec<u8>>,
        request: mailbox::Request,
    },
}

/// A host, as an exit names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAddrs {
    pub peer: Vec<u8>,
    pub addrs: Vec<Vec<u8>>,
}

/// An exit's answer to an [`ExitRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitAnswer {
    Hosts(Vec<HostAddrs>),
    Mailbox(mailbox::Response),
}

/// Why an exit did not do the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ExitRefusal {
    #[error("the exit could not read the request")]
    Malformed,
    #[error("the exit holds as many streams as it takes; try again later")]
    Busy,
    #[error("the exit knows no such stream (it ran out, or never was)")]
    UnknownStream,
    #[error("the request or its answer is larger than a stream carries")]
    TooLarge,
    #[error("the exit could not reach the host")]
    Unreachable,
    #[error("this node does not act as an exit")]
    NotAnExit,
}

/// The content of a cell's innermost layer: what a node sends its exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToExit {
    /// A request that fits one cell.
    Whole {
        stream: StreamId,
        request: ExitRequest,
    },
    /// Part `index` of `count` of a request's encoding.
    Part {
        stream: StreamId,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
    },
    /// The bytes of the stream's answer from `offset` on.
    More { stream: StreamId, offset: u32 },
}

/// What an exit sends back in its reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromExit {
    /// A part of the request arrived; send the next.
    Taken,
    /// The whole answer.
    Whole(ExitAnswer),
    /// The answer's encoding is `total` bytes; these start at `offset`.
    Part {
        total: u32,
        offset: u32,
        bytes: Vec<u8>,
    },
    Refused(ExitRefusal),
}

fn to_bytes<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    codec::encode_versioned(VERSION, value, limit)
}

fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    codec::decode_versioned(VERSION, "exit message", bytes, limit)
}

impl ToExit {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        to_bytes(self, MAX_REQUEST - 1)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        from_bytes(bytes, MAX_REQUEST)
    }
}

impl FromExit {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        to_bytes(self, MAX_ANSWER - 1)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        from_bytes(bytes, MAX_ANSWER)
    }
}

impl ExitRequest {
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode_limited(self, MAX_STREAM_REQUEST as u64)
    }
}

impl ExitAnswer {
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode_limited(self, MAX_STREAM_ANSWER as u64)
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_limited(bytes, MAX_STREAM_ANSWER as u64)
    }
}

/// The cells' contents that carry `request` on `stream`: one [`ToExit::Whole`] if it fits,
/// else its encoding in [`ToExit::Part`]s. Each result encodes within one cell's request.
pub fn parts(stream: StreamId, request: &ExitRequest) -> Result<Vec<ToExit>, CodecError> {
    let whole = ToExit::Whole {
        stream,
        request: request.clone(),
    };
    if whole.to_bytes().is_ok() {
        return Ok(vec![whole]);
    }
    let bytes = request.encode()?;
    let chunks: Vec<&[u8]> = bytes.chunks(PART_BYTES).collect();
    let count = u16::try_from(chunks.len()).map_err(|_| CodecError::TooLarge {
        limit: MAX_STREAM_REQUEST as u64,
        got: bytes.len() as u64,
    })?;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToExit::Part {
            stream,
            index: i as u16,
            count,
            bytes: c.to_vec(),
        })
        .collect())
}

/// Gathers an answer that comes back in parts, on the node's side.
#[derive(Debug, Default)]
pub struct Gather {
    bytes: Vec<u8>,
    total: Option<u32>,
}

/// Where a node is with an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered {
    /// Ask for more from this offset.
    More(u32),
    Done(ExitAnswer),
}

impl Gather {
    /// Take the exit's reply to a `Whole` request or the last part, or to a `More`.
    pub fn take(&mut self, from: FromExit) -> Result<Gathered, GatherError> {
        match from {
            FromExit::Whole(answer) if self.total.is_none() => Ok(Gathered::Done(answer)),
            FromExit::Part {
                total,
                offset,
                bytes,
            } => {
                if total as usize > MAX_STREAM_ANSWER
                    || self.total.is_some_and(|t| t != total)
                    || offset as usize != self.bytes.len()
                    || bytes.is_empty()
                    || self.bytes.len() + bytes.len() > total as usize
                {
                    return Err(GatherError::Inconsistent);
                }
                self.total = Some(total);
                self.bytes.extend_from_slice(&bytes);
                if self.bytes.len() == total as usize {
                    return ExitAnswer::decode(&self.bytes)
                        .map(Gathered::Done)
                        .map_err(|_| GatherError::Inconsistent);
                }
                Ok(Gathered::More(self.bytes.len() as u32))
            }
            FromExit::Refused(r) => Err(GatherError::Refused(r)),
            FromExit::Whole(_) | FromExit::Taken => Err(GatherError::Inconsistent),
        }
    }
}

/// Why an answer could not be gathered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    #[error("the exit refused: {0}")]
    Refused(ExitRefusal),
    #[error("the exit's answer parts do not fit together")]
    Inconsistent,
}

/// What an exit is to do with a cell's content.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this back.
    Reply(FromExit),
    /// Do the work, then pass its answer to [`Exit::answered`] for the reply.
    Run {
        stream: StreamId,
        request: ExitRequest,
    },
}

struct Stream {
    touched_ms: u64,
    count: u16,
    parts: Vec<Option<Vec<u8>>>,
    answer: Option<Vec<u8>>,
}

impl Stream {
    fn bytes(&self) -> usize {
        self.parts.iter().flatten().map(Vec::len).sum::<usize>()
            + self.answer.as_ref().map_or(0, Vec::len)
    }
}

/// The exit's side: the streams it holds between cells.
#[derive(Default)]
pub struct Exit {
    streams: HashMap<StreamId, Stream>,
    held: usize,
}

impl Exit {
    pub fn new() -> Self {
        Exit::default()
    }

    /// Streams held now.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Forget streams not heard of for [`STREAM_TTL_MS`].
    fn expire(&mut self, now_ms: u64) {
        let before = self.streams.len();
        if before == 0 {
            return;
        }
        self.streams
            .retain(|_, s| now_ms.saturating_sub(s.touched_ms) < STREAM_TTL_MS);
        if self.streams.len() != before {
            self.held = self.streams.values().map(Stream::bytes).sum();
        }
    }

    /// Take the content of a cell that came out of a path at this exit.
    pub fn receive(&mut self, now_ms: u64, bytes: &[u8]) -> Step {
        self.expire(now_ms);
        let Ok(message) = ToExit::from_bytes(bytes) else {
            return Step::Reply(FromExit::Refused(ExitRefusal::Malformed));
        };
        match message {
            ToExit::Whole { stream, request } => Step::Run { stream, request },
            ToExit::Part {
                stream,
                index,
                count,
                bytes,
            } => self.part(now_ms, stream, index, count, bytes),
            ToExit::More { stream, offset } => self.more(now_ms, stream, offset),
        }
    }

    fn part(&mut self, now_ms: u64, id: StreamId, index: u16, count: u16, bytes: Vec<u8>) -> Step {
        let max_parts = MAX_STREAM_REQUEST.div_ceil(PART_BYTES);
        if count == 0 || usize::from(count) > max_parts || index >= count || bytes.is_empty() {
            return Step::Reply(FromExit::Refused(ExitRefusal::Malformed));
        }
        if !self.streams.contains_key(&id) {
            if self.streams.len() >= MAX_STREAMS {
                return Step::Reply(FromExit::Refused(ExitRefusal::Busy));
            }
            self.streams.insert(
                id,
                Stream {
                    touched_ms: now_ms,
                    count,
                    parts: vec![None; usize::from(count)],
                    answer: None,
                },
            );
        }
        if self.held + bytes.len() > MAX_HELD_BYTES {
            return Step::Reply(FromExit::Refused(ExitRefusal::Busy));
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Step::Reply(FromExit::Refused(ExitRefusal::UnknownStream));
        };
        if stream.count != count || stream.answer.is_some() {
            return Step::Reply(FromExit::Refused(ExitRefusal::Malformed));
        }
        stream.touched_ms = now_ms;
        let slot = &mut stream.parts[usize::from(index)];
        if let Some(old) = slot.take() {
            self.held -= old.len();
        }
        self.held += bytes.len();
        *slot = Some(bytes);
        if stream.parts.iter().any(Option::is_none) {
            return Step::Reply(FromExit::Taken);
        }
        let whole: Vec<u8> = stream
            .parts
            .iter_mut()
            .flat_map(|p| p.take().unwrap_or_default())
            .collect();
        self.held -= whole.len();
        match codec::decode_limited::<ExitRequest>(&whole, MAX_STREAM_REQUEST as u64) {
            Ok(request) => Step::Run {
                stream: id,
                request,
            },
            Err(_) => {
                self.streams.remove(&id);
                Step::Reply(FromExit::Refused(ExitRefusal::Malformed))
            }
        }
    }

    fn more(&mut self, now_ms: u64, id: StreamId, offset: u32) -> Step {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Step::Reply(FromExit::Refused(ExitRefusal::UnknownStream));
        };
        let Some(answer) = &stream.answer else {
            return Step::Reply(FromExit::Refused(ExitRefusal::UnknownStream));
        };
        stream.touched_ms = now_ms;
        let total = answer.len();
        let from = offset as usize;
        if from >= total {
            return Step::Reply(FromExit::Refused(ExitRefusal::Malformed));
        }
        let to = (from + ANSWER_PART_BYTES).min(total);
        let reply = FromExit::Part {
            total: total as u32,
            offset,
            bytes: answer[from..to].to_vec(),
        };
        if to == total {
            // The node has it all now.
            self.held -= total;
            self.streams.remove(&id);
        }
        Step::Reply(reply)
    }

    /// The reply to the request of `stream`, now that the work gave `answer`: the whole
    /// answer if it fits one cell (a page of envelopes cut to fit, saying `more`), else its
    /// first part, the rest held for [`ToExit::More`].
    pub fn answered(&mut self, now_ms: u64, stream: StreamId, answer: ExitAnswer) -> FromExit {
        let answer = fit(answer);
        let whole = FromExit::Whole(answer.clone());
        if whole.to_bytes().is_ok() {
            self.streams.remove(&stream);
            return whole;
        }
        let Ok(bytes) = answer.encode() else {
            self.streams.remove(&stream);
            return FromExit::Refused(ExitRefusal::TooLarge);
        };
        if self.held + bytes.len() > MAX_HELD_BYTES
            || (!self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS)
        {
            self.streams.remove(&stream);
            return FromExit::Refused(ExitRefusal::Busy);
        }
        let first = bytes[..ANSWER_PART_BYTES.min(bytes.len())].to_vec();
        let total = bytes.len() as u32;
        self.held += bytes.len();
        self.streams.insert(
            stream,
            Stream {
                touched_ms: now_ms,
                count: 0,
                parts: Vec::new(),
                answer: Some(bytes),
            },
        );
        FromExit::Part {
            total,
            offset: 0,
            bytes: first,
        }
    }
}

/// A page of envelopes cut to fit one cell (keeping at least one), saying `more` if cut.
fn fit(answer: ExitAnswer) -> ExitAnswer {
    let ExitAnswer::Mailbox(mailbox::Response::Envelopes { envelopes, more }) = answer else {
        return answer;
    };
    // What the page costs around its envelopes: tags, the list's length, `more`.
    const AROUND: usize = 32;
    let budget = MAX_ANSWER - 1 - AROUND;
    let total = envelopes.len();
    let mut used = 0usize;
    let mut kept = Vec::new();
    for fetched in envelopes {
        let size = codec::encode(&fetched).map_or(usize::MAX, |b| b.len());
        if !kept.is_empty() && used.saturating_add(size) > budget {
            break;
        }
        used = used.saturating_add(size);
        kept.push(fetched);
    }
    let cut = kept.len() < total;
    ExitAnswer::Mailbox(mailbox::Response::Envelopes {
        envelopes: kept,
        more: more || cut,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deaddrop::Secret;
    use crate::mailbox::{DepositAuth, Fetched, Request, Response};

    fn deposit(len: usize) -> ExitRequest {
        let key = Secret::from_bytes([3; 32]).drop_key(1);
        ExitRequest::Mailbox {
            host: vec![1; 38],
            addrs: vec![vec![2; 8]],
            request: Request::Deposit(mailbox::Deposit {
                address: key.address(),
                envelope: vec![7; len],
                expires_at: 5,
                auth: DepositAuth::Proof(key.sign(b"x")),
            }),
        }
    }

    fn page(n: usize, len: usize) -> ExitAnswer {
        ExitAnswer::Mailbox(Response::Envelopes {
            envelopes: (0..n)
                .map(|i| Fetched {
                    envelope: vec![i as u8; len],
                    expires_at: 9,
                    auth: DepositAuth::Stamp {
                        intro: [1; 32],
                        nonce: 2,
                    },
                })
                .collect(),
            more: false,
        })
    }

    /// Carry `request` to an exit cell by cell, answer it with `answer`, gather the reply.
    fn round_trip(exit: &mut Exit, request: &ExitRequest, answer: ExitAnswer) -> ExitAnswer {
        let stream = [9; 16];
        let cells = parts(stream, request).unwrap();
        let mut reply = None;
        for (i, cell) in cells.iter().enumerate() {
            let bytes = cell.to_bytes().unwrap();
            assert!(bytes.len() <= MAX_REQUEST, "each part fits a cell");
            match exit.receive(0, &bytes) {
                Step::Reply(FromExit::Taken) => assert!(i + 1 < cells.len()),
                Step::Run {
                    stream: s,
                    request: r,
                } => {
                    assert_eq!(i + 1, cells.len(), "runs once every part is in");
                    assert_eq!(s, stream);
                    assert_eq!(&r, request);
                    reply = Some(exit.answered(0, s, answer.clone()));
                }
                other => panic!("{other:?}"),
            }
        }
        let mut gather = Gather::default();
        let mut from = reply.unwrap();
        loop {
            assert!(
                from.to_bytes().unwrap().len() <= MAX_ANSWER,
                "each reply fits a cell"
            );
            match gather.take(from).unwrap() {
                Gathered::Done(a) => return a,
                Gathered::More(offset) => {
                    let more = ToExit::More { stream, offset }.to_bytes().unwrap();
                    match exit.receive(0, &more) {
                        Step::Reply(f) => from = f,
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_small_request_and_answer_take_one_cell_each() {
        let mut exit = Exit::new();
        let request = deposit(512);
        assert_eq!(parts([1; 16], &request).unwrap().len(), 1);
        let got = round_trip(&mut exit, &request, ExitAnswer::Mailbox(Response::Stored));
        assert_eq!(got, ExitAnswer::Mailbox(Response::Stored));
        assert_eq!(exit.streams(), 0);
    }

    #[test]
    fn the_largest_envelope_travels_in_parts_both_ways() {
        let mut exit = Exit::new();
        let request = deposit(65_535);
        assert!(parts([1; 16], &request).unwrap().len() > 10);
        let big = page(1, 65_535);
        let got = round_trip(&mut exit, &request, big.clone());
        assert_eq!(got, big);
        assert_eq!(
            (exit.streams(), exit.held_bytes()),
            (0, 0),
            "nothing left behind"
        );
    }

    #[test]
    fn a_page_of_envelopes_is_cut_to_one_cell_and_says_more() {
        let mut exit = Exit::new();
        let request = deposit(512);
        let got = round_trip(&mut exit, &request, page(100, 512));
        let ExitAnswer::Mailbox(Response::Envelopes { envelopes, more }) = got else {
            panic!("a page");
        };
        assert!(more);
        assert!((2..100).contains(&envelopes.len()), "{}", envelopes.len());
        // An empty page and a full one are one cell each.
        let empty = exit.answered(0, [2; 16], page(0, 512));
        let full = exit.answered(0, [3; 16], page(100, 512));
        assert!(matches!(empty, FromExit::Whole(_)));
        assert!(matches!(full, FromExit::Whole(_)));
    }

    #[test]
    fn streams_are_bounded_and_run_out() {
        let mut exit = Exit::new();
        let part = |stream: StreamId| {
            ToExit::Part {
                stream,
                index: 0,
                count: 2,
                bytes: vec![1; 100],
            }
            .to_bytes()
            .unwrap()
        };
        for i in 0..MAX_STREAMS {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert_eq!(exit.receive(0, &part(id)), Step::Reply(FromExit::Taken));
        }
        assert_eq!(
            exit.receive(0, &part([0xff; 16])),
            Step::Reply(FromExit::Refused(ExitRefusal::Busy))
        );
        // A minute later the stale streams are gone.
        assert_eq!(
            exit.receive(STREAM_TTL_MS, &part([0xff; 16])),
            Step::Reply(FromExit::Taken)
        );
        assert_eq!(exit.streams(), 1);
        assert_eq!(exit.held_bytes(), 100);
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        let mut exit = Exit::new();
        let refused = |r| Step::Reply(FromExit::Refused(r));
        assert_eq!(exit.receive(0, b""), refused(ExitRefusal::Malformed));
        assert_eq!(exit.receive(0, &[9, 1, 2]), refused(ExitRefusal::Malformed));
        let bad_part = |index, count| {
            ToExit::Part {
                stream: [1; 16],
                index,
                count,
                bytes: vec![1],
            }
            .to_bytes()
            .unwrap()
        };
        assert_eq!(
            exit.receive(0, &bad_part(2, 2)),
            refused(ExitRefusal::Malformed)
        );
        assert_eq!(
            exit.receive(0, &bad_part(0, 0)),
            refused(ExitRefusal::Malformed)
        );
        assert_eq!(
            exit.receive(0, &bad_part(0, u16::MAX)),
            refused(ExitRefusal::Malformed)
        );
        // Parts that do not make a request.
        assert_eq!(
            exit.receive(0, &bad_part(0, 1)),
            refused(ExitRefusal::Malformed)
        );
        let more = ToExit::More {
            stream: [4; 16],
            offset: 0,
        };
        assert_eq!(
            exit.receive(0, &more.to_bytes().unwrap()),
            refused(ExitRefusal::UnknownStream)
        );
        // Inconsistent parts of an answer are caught by the node.
        let mut gather = Gather::default();
        assert_eq!(
            gather.take(FromExit::Part {
                total: 10,
                offset: 4,
                bytes: vec![1],
            }),
            Err(GatherError::Inconsistent)
        );
        assert_eq!(
            Gather::default().take(FromExit::Part {
                total: u32::MAX,
                offset: 0,
                bytes: vec![1],
            }),
            Err(GatherError::Inconsistent)
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut exit = Exit::new();
            let mut with_version = vec![VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = exit.receive(0, &bytes);
            let _ = exit.receive(0, &with_version);
            let _ = FromExit::from_bytes(&with_version).map(|f| Gather::default().take(f));
        }
    }
}
