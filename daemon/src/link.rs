//! What the simulator (`sotto-sim`) changes about a node, and nothing else does: which
//! transport it speaks (in-process memory, or TCP), the latency, jitter and loss of its
//! links, injected in userspace because the kernel's `netem` is not available, and an
//! [`Observer`] that sees what the node sees as a mailbox host (how the simulator's
//! colluding adversaries record). A daemon started from the command line uses the defaults:
//! TCP and QUIC, no delay, no observer.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, Sleep};

/// Which transport the swarm speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP and QUIC (what a daemon uses).
    #[default]
    Standard,
    /// TCP only, every connection through [`Delayed`].
    Tcp,
    /// libp2p's in-process memory transport (`/memory/N` addresses), every connection
    /// through [`Delayed`].
    Memory,
}

/// The one-way delay and loss of every link of a node. Each side delays what it reads, so
/// each direction of a connection is delayed once.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkModel {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` for each chunk that arrives.
    pub jitter: Duration,
    /// Probability that a chunk is "lost": it is then held back one retransmission timeout,
    /// `max(200 ms, 3 × latency)`, as TCP would retransmit it (and, like TCP, everything
    /// behind it waits: delivery stays in order).
    pub loss: f64,
    /// Seed of the per-connection random draws.
    pub seed: u64,
}

impl LinkModel {
    fn retransmission_timeout(&self) -> Duration {
        (self.latency * 3).max(Duration::from_millis(200))
    }
}

/// What a mailbox host saw one peer do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// A deposit of an envelope of `size` bytes at `address`, and whether it was stored.
    Deposit {
        address: [u8; 32],
        size: usize,
        stored: bool,
    },
    /// A fetch at `address` that returned `envelopes` envelopes.
    Fetch { address: [u8; 32], envelopes: usize },
    /// A delete at `address` of `count` envelopes.
    Delete { address: [u8; 32], count: usize },
}

/// One request a node answered as a mailbox host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// Milliseconds since the Unix epoch, by the host's clock.
    pub at_ms: u64,
    /// The PeerId bytes of the host.
    pub host: Vec<u8>,
    /// The PeerId bytes of the peer that asked.
    pub peer: Vec<u8>,
    pub action: HostAction,
}

/// What a relay did with one onion cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayStep {
    /// Passed it on to the next hop (PeerId bytes).
    Forward { next: Vec<u8> },
    /// Was its exit and had this request done (`None`: one part of a request in parts,
    /// not complete yet).
    Exit { request: Option<ExitSeen> },
}

/// What an exit reads in the request that came out of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitSeen {
    /// A lookup of the hosts of `address`.
    Hosts { address: [u8; 32] },
    /// A mailbox request for `host` (PeerId bytes) at `address`.
    Mailbox {
        host: Vec<u8>,
        kind: MailboxKind,
        address: [u8; 32],
    },
}

/// The kind of a mailbox request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxKind {
    Deposit,
    Fetch,
    Delete,
}

/// One onion cell a node took as a relay: who handed it over, the relay's place on the path
/// (which it reads off the cell's layer), and what it did with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEvent {
    /// Milliseconds since the Unix epoch, by the relay's clock, when the cell was peeled.
    pub at_ms: u64,
    /// The PeerId bytes of the relay and of the hop before it.
    pub relay: Vec<u8>,
    pub prev: Vec<u8>,
    /// 0 for the first relay of a path.
    pub hop: Option<usize>,
    pub step: RelayStep,
}

/// Sees every mailbox request a node answers and every onion cell it relays. Called on the
/// request path; it must return quickly.
pub trait Observer: Send + Sync {
    fn host_event(&self, event: HostEvent);
    fn relay_event(&self, _event: RelayEvent) {}
}

/// A fault injected into a relay: called with each cell (its wire form) this node passes on
/// to a next hop, after its layer is peeled; it may change the bytes (a test's hostile
/// relay flips a bit). Never set for a real node.
pub type Tamper = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// Bytes crossing one raw connection of a node, below Noise: what a wire capture between
/// this node and the other end shows (multistream-select, then Noise frames).
#[derive(Debug)]
pub struct WireBytes<'a> {
    /// The connection's number at this node.
    pub connection: u64,
    /// The address this node dialed; `None` for a connection it accepted.
    pub dialed: Option<&'a libp2p::Multiaddr>,
    /// Written by this node (else read from the other end).
    pub outbound: bool,
    pub bytes: &'a [u8],
}

/// Sees every byte of every raw connection of a node, as a capture on the wire would (a
/// test's capture between two relays). Never set for a real node; only with
/// [`Transport::Tcp`] or [`Transport::Memory`].
pub type WireTap = Arc<dyn Fn(WireBytes<'_>) + Send + Sync>;

/// The simulator's settings for one node.
#[derive(Clone, Default)]
pub struct Harness {
    pub transport: Transport,
    pub link: LinkModel,
    pub observer: Option<Arc<dyn Observer>>,
    pub tamper: Option<Tamper>,
    pub wire_tap: Option<WireTap>,
    /// Draw the node's libp2p key, its account keys and its per-contact inbox secrets from
    /// a generator seeded with this, so that a simulation's PeerIds and dead-drop
    /// addresses are the same on every run. Never set for a real node.
    pub seed: Option<u64>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("transport", &self.transport)
            .field("link", &self.link)
            .field("observer", &self.observer.is_some())
            .field("tamper", &self.tamper.is_some())
            .field("wire_tap", &self.wire_tap.is_some())
            .field("seed", &self.seed)
            .finish()
    }
}

/// Bytes a [`Delayed`] stream holds back, at most; beyond that it stops reading, and the
/// sender feels back-pressure as it would from a slow link.
pub const MAX_HELD: usize = 1 << 20;
const CHUNK: usize = 16 * 1024;

/// A byte stream whose reads are delayed by a [`LinkModel`].
pub struct Delayed<S> {
    inner: S,
    model: LinkModel,
    rng: StdRng,
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
    /// Read position in the chunk at the front of `held`.
    offset: usize,
    last_due: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    eof: bool,
    error: Option<io::Error>,
    tap: Option<Tap>,
}

/// A [`WireTap`] and what it is told about the connection.
struct Tap {
    tap: WireTap,
    connection: u64,
    dialed: Option<libp2p::Multiaddr>,
}

impl Tap {
    fn saw(&self, outbound: bool, bytes: &[u8]) {
        (self.tap)(WireBytes {
            connection: self.connection,
            dialed: self.dialed.as_ref(),
            outbound,
            bytes,
        });
    }
}

impl<S> Delayed<S> {
    pub fn new(inner: S, model: LinkModel, stream_seed: u64) -> Self {
        Delayed {
            inner,
            model,
            rng: StdRng::seed_from_u64(model.seed ^ stream_seed.rotate_left(17)),
            held: VecDeque::new(),
            held_bytes: 0,
            offset: 0,
            last_due: None,
            timer: None,
            eof: false,
            error: None,
            tap: None,
        }
    }

    /// Tell `tap` every byte written and read: connection number `connection`, which this
    /// node dialed at `dialed` (`None`: accepted).
    pub fn tapped(
        mut self,
        tap: Option<WireTap>,
        connection: u64,
        dialed: Option<libp2p::Multiaddr>,
    ) -> Self {
        self.tap = tap.map(|tap| Tap {
            tap,
            connection,
            dialed,
        });
        self
    }

    fn due(&mut self, now: Instant) -> Instant {
        let mut delay = self.model.latency;
        if !self.model.jitter.is_zero() {
            let jitter = self.model.jitter.as_micros() as u64;
            delay += Duration::from_micros(self.rng.gen_range(0..=jitter));
        }
        if self.model.loss > 0.0 && self.rng.gen_bool(self.model.loss.min(1.0)) {
            delay += self.model.retransmission_timeout();
        }
        let due = now + delay;
        // In order, like the stream it models.
        let due = self.last_due.map_or(due, |last| due.max(last));
        self.last_due = Some(due);
        due
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Delayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Take in everything that has arrived, stamped with the time it is due.
        let mut chunk = [0u8; CHUNK];
        while !this.eof && this.error.is_none() && this.held_bytes < MAX_HELD {
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => {
                    if let Some(tap) = &this.tap {
                        tap.saw(false, &chunk[..n]);
                    }
                    let due = this.due(Instant::now());
                    this.held.push_back((due, chunk[..n].to_vec()));
                    this.held_bytes += n;
                }
                Poll::Ready(Err(e)) => this.error = Some(e),
                Poll::Pending => break,
            }
        }
        // Hand out what is due.
        loop {
            let Some((due, bytes)) = this.held.front() else {
                if let Some(e) = this.error.take() {
                    return Poll::Ready(Err(e));
                }
                return if this.eof {
                    Poll::Ready(Ok(0))
                } else {
                    Poll::Pending
                };
            };
            if *due <= Instant::now() {
                let n = (bytes.len() - this.offset).min(buf.len());
                buf[..n].copy_from_slice(&bytes[this.offset..this.offset + n]);
                this.offset += n;
                if this.offset == bytes.len() {
                    this.held_bytes -= bytes.len();
                    this.held.pop_front();
                    this.offset = 0;
                }
                this.timer = None;
                return Poll::Ready(Ok(n));
            }
            let due = *due;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Delayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(tap)) = (&written, &this.tap) {
            tap.saw(true, &buf[..*n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use futures::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn reads_arrive_after_the_latency_in_order() {
        let model = LinkModel {
            latency: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            loss: 0.5,
            seed: 7,
        };
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut stream = Delayed::new(Cursor::new(data.clone()), model, 1);
        let start = Instant::now();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data, "bytes arrive whole and in order");
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "nothing arrives before the latency"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_transparent_link_does_not_wait() {
        let mut stream = Delayed::new(Cursor::new(vec![1u8; 10]), LinkModel::default(), 1);
        let start = Instant::now();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, vec![1u8; 10]);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
