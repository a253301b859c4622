//! Onion cells for private paths: a request wrapped in one Noise `N` layer per relay of a
//! path, so that each relay learns only the hop before it and the hop after it, and the
//! last relay (the *exit*) learns the request but not who sent it.
//!
//! Every cell is [`CELL`] bytes on the wire, in both directions, whatever the path length,
//! the request inside, or the hop's place on the path: each relay removes its layer and
//! fills the cell up again with random bytes. A layer is a Noise `N` handshake message
//! (`Noise_N_25519_ChaChaPoly_BLAKE2s`: `-> e, es`) to the relay's static onion key, so
//! tampering with a cell is detected by the next honest relay (the layer does not open).
//! Each layer also gives its relay a fresh random key for its part of the reply: the exit
//! encrypts its answer (ChaCha20-Poly1305), and every relay on the way back encrypts what
//! it got once more; the sender removes the layers in path order.
//!
//! A relay's onion key is its libp2p Ed25519 identity key in its X25519 form
//! ([`RelayKey::from_ed25519_seed`], [`onion_key_of`]): a sender learns it from the relay's
//! PeerId alone, and nobody can give it another.
//!
//! Each layer names the time it was made ([`Layer::created_at`]): a relay refuses a layer
//! from too far in the past or the future and keeps the replay tags of the layers it peeled
//! for that long, so that a cell cannot be sent through it twice.
//!
//! A relay learns its place on a path from the size of its layer (each layer is smaller by
//! what it wraps), as Tor's relays and the layers of a stratified mix net know theirs; on
//! the wire between two hops every cell, request and reply, is [`FRAME_BYTES`].
//!
//! Sans-I/O: randomness and time come in as arguments; nothing here reads a clock or a
//! socket.
//!
//! ```
//! use sotto_protocol::onion::{self, Hop, RelayKey, Peeled};
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! let mut rng = StdRng::seed_from_u64(1);
//! let keys: Vec<RelayKey> = (0..3).map(|_| RelayKey::generate(&mut rng)).collect();
//! let path: Vec<Hop> = keys
//!     .iter()
//!     .enumerate()
//!     .map(|(i, k)| Hop { peer: vec![i as u8; 38], addr: vec![], key: k.public() })
//!     .collect();
//! let (mut cell, pending) = onion::build(&path, b"a request", 1_000, &mut rng).unwrap();
//! let mut layers = Vec::new();
//! for key in &keys {
//!     let layer = onion::peel(key, &cell, &mut rng).unwrap();
//!     assert_eq!(layer.created_at, 1_000);
//!     match layer.peeled {
//!         Peeled::Forward { cell: ref inner, .. } => cell = inner.clone(),
//!         Peeled::Exit { ref request } => assert_eq!(request, b"a request"),
//!     }
//!     layers.push(layer);
//! }
//! // Back along the path: the exit answers, each relay wraps what it got.
//! let mut reply = onion::exit_reply(&layers[2], b"an answer").unwrap();
//! for layer in layers[..2].iter().rev() {
//!     reply = onion::wrap_reply(layer, &reply).unwrap();
//! }
//! assert_eq!(onion::open_reply(&pending, &reply).unwrap(), b"an answer");
//! ```

use curve25519_dalek::edwards::CompressedEdwardsY;
use rand::RngCore;
use sha2::{Digest, Sha512};
use snow::params::CipherChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey};
use zeroize::Zeroizing;

/// The protocol id of onion cells between relays.
pub const PROTOCOL: &str = "/sotto/onion/1";
/// The cell format this code writes and reads.
pub const VERSION: u8 = 1;
/// The Noise protocol name of one layer.
pub const NOISE_PARAMS: &str = "Noise_N_25519_ChaChaPoly_BLAKE2s";
/// Bound into every layer's handshake, so that a layer is never valid in another protocol.
const PROLOGUE: &[u8] = b"sotto/onion/v1";
/// The bytes of a cell's body: what every request and every reply carries between two hops.
pub const CELL: usize = 4096;
/// A cell on the wire: version, the length of the part that is not padding, the body.
pub const FRAME_BYTES: usize = 1 + 2 + CELL;
/// Relays on a path, at most.
pub const MAX_HOPS: usize = 3;
/// What a Noise `N` message adds to its payload: the ephemeral key and the payload's tag.
pub const LAYER_OVERHEAD: usize = 32 + 16;
/// A relay's instructions in its layer: kind (1 byte: 0 exit, 1 forward), the time the layer
/// was made (u32 seconds, big endian), its reply key (32 bytes), the next hop's PeerId (a
/// length byte, then up to [`MAX_PEER_BYTES`]) and one of its addresses (a length byte, then
/// up to [`MAX_ADDR_BYTES`] of a binary multiaddr), zeros after each.
pub const HOP_BYTES: usize = 112;
/// The longest PeerId a hop can name.
pub const MAX_PEER_BYTES: usize = 42;
/// The longest address (binary multiaddr) a hop can name.
pub const MAX_ADDR_BYTES: usize = HOP_BYTES - AT_ADDR - 1;
/// The tag each relay adds to a reply.
const TAG: usize = 16;
/// The largest request a path of [`MAX_HOPS`] relays carries to its exit.
pub const MAX_REQUEST: usize = CELL - MAX_HOPS * (LAYER_OVERHEAD + HOP_BYTES) - 2;
/// The largest answer an exit sends back along a path of [`MAX_HOPS`] relays.
pub const MAX_ANSWER: usize = CELL - MAX_HOPS * TAG - TAG - 2;

/// Why a cell could not be built, read, peeled or answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnionError {
    #[error("a path has 1 to {MAX_HOPS} relays; got {got}")]
    PathLength { got: usize },
    #[error("a PeerId of {got} bytes is longer than a hop can name ({MAX_PEER_BYTES})")]
    PeerTooLong { got: usize },
    #[error("an address of {got} bytes is longer than a hop can name ({MAX_ADDR_BYTES})")]
    AddrTooLong { got: usize },
    #[error("the request is too large for a cell: limit {limit} bytes, got {got}")]
    RequestTooLarge { limit: usize, got: usize },
    #[error("the answer is too large for a cell: limit {limit} bytes, got {got}")]
    AnswerTooLarge { limit: usize, got: usize },
    #[error("a cell is {FRAME_BYTES} bytes; got {got}")]
    BadSize { got: usize },
    #[error("cell version {got} is not one this sotto understands ({VERSION})")]
    UnsupportedVersion { got: u8 },
    #[error("the cell's length field {got} is out of range")]
    BadLength { got: usize },
    #[error("the layer does not open with this relay's key (tampered with, or not for it)")]
    Unopenable,
    #[error("the layer's instructions are malformed")]
    BadHop,
    #[error("the reply does not open: it was tampered with on the way back")]
    BadReply,
    #[error("not a relay's answer")]
    BadAnswer,
    #[error("noise: {0}")]
    Noise(String),
}

/// A relay's static onion key (X25519). Neither `Debug` nor `Serialize`.
pub struct RelayKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl RelayKey {
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let public = Curve25519PublicKey::from(&Curve25519SecretKey::from_slice(secret)).to_bytes();
        RelayKey {
            secret: Zeroizing::new(*secret),
            public,
        }
    }

    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        Self::from_secret(&secret)
    }

    /// The onion key of the node whose Ed25519 identity key has the secret `seed`: the
    /// X25519 form of the same key (the clamped first half of SHA-512 of the seed, the
    /// scalar Ed25519 signs with), whose public key is [`onion_key_of`] the Ed25519 one.
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Self {
        let hash = Sha512::digest(seed);
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&hash[..32]);
        scalar[0] &= 248;
        scalar[31] &= 127;
        scalar[31] |= 64;
        Self::from_secret(&scalar)
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }
}

/// The onion key of the relay whose Ed25519 identity public key is `ed25519`: the same
/// point in Montgomery form. `None` if the bytes are not a point.
pub fn onion_key_of(ed25519: &[u8; 32]) -> Option<[u8; 32]> {
    CompressedEdwardsY(*ed25519)
        .decompress()
        .map(|point| point.to_montgomery().to_bytes())
}

/// A relay on a path: its PeerId (binary form), an address to reach it at (a binary
/// multiaddr; empty: the hop before finds one itself), and its onion key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub peer: Vec<u8>,
    pub addr: Vec<u8>,
    pub key: [u8; 32],
}

/// A cell: its body ([`CELL`] bytes) and how much of it is not padding.
#[derive(Clone, PartialEq, Eq)]
pub struct Cell {
    len: usize,
    body: Vec<u8>,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// `content` followed by random bytes up to [`CELL`].
    fn padded(content: &[u8], rng: &mut impl RngCore) -> Result<Cell, OnionError> {
        if content.len() > CELL {
            return Err(OnionError::BadLength { got: content.len() });
        }
        let mut body = vec![0u8; CELL];
        body[..content.len()].copy_from_slice(content);
        rng.fill_bytes(&mut body[content.len()..]);
        Ok(Cell {
            len: content.len(),
            body,
        })
    }

    fn content(&self) -> &[u8] {
        &self.body[..self.len]
    }

    /// The place on its path of the relay that receives this cell (0 = the first), which
    /// that relay reads off the size of its layer (see the module documentation); `None`
    /// for a cell no sender builds.
    pub fn hop_index(&self) -> Option<usize> {
        (0..MAX_HOPS).find(|&i| layer_len(i) == self.len)
    }

    /// The cell as it goes on the wire: always [`FRAME_BYTES`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&(self.len as u16).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Cell, OnionError> {
        if bytes.len() != FRAME_BYTES {
            return Err(OnionError::BadSize { got: bytes.len() });
        }
        if bytes[0] != VERSION {
            return Err(OnionError::UnsupportedVersion { got: bytes[0] });
        }
        let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        if len > CELL {
            return Err(OnionError::BadLength { got: len });
        }
        Ok(Cell {
            len,
            body: bytes[3..].to_vec(),
        })
    }
}

/// A relay's answer on [`PROTOCOL`]: the reply cell, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Reply(Cell),
    Refused(Refusal),
}

/// Why a relay did not carry a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a cell")]
    Malformed,
    #[error("the layer does not open with the relay's key")]
    Unopenable,
    #[error("the relay carried this cell before")]
    Replayed,
    #[error("the layer was made too long ago, or in the future")]
    Stale,
    #[error("the next hop did not answer")]
    NextHopFailed,
    #[error("the relay is busy")]
    Busy,
    #[error("the relay asks for a pause of {0} ms")]
    SlowDown(u32),
    #[error("this node does not relay")]
    NotARelay,
    #[error("the relay failed")]
    Internal,
}

/// The longest answer on the wire: a tag and a cell.
pub const MAX_ANSWER_BYTES: usize = 1 + FRAME_BYTES;

impl Answer {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Answer::Reply(cell) => {
                let mut out = Vec::with_capacity(MAX_ANSWER_BYTES);
                out.push(0);
                out.extend_from_slice(&cell.to_bytes());
                out
            }
            Answer::Refused(r) => {
                let (code, ms) = match r {
                    Refusal::Malformed => (0, 0),
                    Refusal::Unopenable => (1, 0),
                    Refusal::Replayed => (2, 0),
                    Refusal::Stale => (3, 0),
                    Refusal::NextHopFailed => (4, 0),
                    Refusal::Busy => (5, 0),
                    Refusal::SlowDown(ms) => (6, *ms),
                    Refusal::NotARelay => (7, 0),
                    Refusal::Internal => (8, 0),
                };
                let mut out = vec![1, code];
                out.extend_from_slice(&ms.to_be_bytes());
                out
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Answer, OnionError> {
        match bytes.split_first() {
            Some((0, cell)) => Cell::from_bytes(cell).map(Answer::Reply),
            Some((1, &[code, a, b, c, d])) => {
                let ms = u32::from_be_bytes([a, b, c, d]);
                Ok(Answer::Refused(match code {
                    0 => Refusal::Malformed,
                    1 => Refusal::Unopenable,
                    2 => Refusal::Replayed,
                    3 => Refusal::Stale,
                    4 => Refusal::NextHopFailed,
                    5 => Refusal::Busy,
                    6 => Refusal::SlowDown(ms),
                    7 => Refusal::NotARelay,
                    8 => Refusal::Internal,
                    _ => return Err(OnionError::BadAnswer),
                }))
            }
            _ => Err(OnionError::BadAnswer),
        }
    }
}

/// What the sender keeps to read the reply: each relay's reply key, in path order.
pub struct Pending {
    keys: Vec<Zeroizing<[u8; 32]>>,
}

/// What a relay found in its layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peeled {
    /// Pass `cell` on to the peer `next` (at `addr`, a binary multiaddr, if not empty).
    Forward {
        next: Vec<u8>,
        addr: Vec<u8>,
        cell: Cell,
    },
    /// This relay is the exit: carry out `request`.
    Exit { request: Vec<u8> },
}

/// One relay's layer, opened.
pub struct Layer {
    /// The layer's ephemeral key: the same cell sent twice has the same tag (keep the
    /// tags seen for a while, and refuse a cell whose tag comes again).
    pub replay_tag: [u8; 32],
    /// When the sender made the layer (seconds since the Unix epoch).
    pub created_at: u32,
    reply_key: Zeroizing<[u8; 32]>,
    pub peeled: Peeled,
}

fn noise(e: snow::Error) -> OnionError {
    OnionError::Noise(e.to_string())
}

fn params() -> Result<snow::params::NoiseParams, OnionError> {
    NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| OnionError::Noise(e.to_string()))
}

/// The size of the layer of the relay at `index` (0 = the first) on a path of `hops`.
fn layer_len(index: usize) -> usize {
    CELL - index * (LAYER_OVERHEAD + HOP_BYTES)
}

/// Where the parts of a hop header start.
const AT_TIME: usize = 1;
const AT_KEY: usize = AT_TIME + 4;
const AT_PEER: usize = AT_KEY + 32;
const AT_ADDR: usize = AT_PEER + 1 + MAX_PEER_BYTES;

fn hop_header(
    next: Option<&Hop>,
    created_at: u32,
    reply_key: &[u8; 32],
) -> Result<Zeroizing<[u8; HOP_BYTES]>, OnionError> {
    let mut h = Zeroizing::new([0u8; HOP_BYTES]);
    h[AT_TIME..AT_KEY].copy_from_slice(&created_at.to_be_bytes());
    h[AT_KEY..AT_PEER].copy_from_slice(reply_key);
    if let Some(hop) = next {
        if hop.peer.len() > MAX_PEER_BYTES {
            return Err(OnionError::PeerTooLong {
                got: hop.peer.len(),
            });
        }
        if hop.addr.len() > MAX_ADDR_BYTES {
            return Err(OnionError::AddrTooLong {
                got: hop.addr.len(),
            });
        }
        h[0] = 1;
        h[AT_PEER] = hop.peer.len() as u8;
        h[AT_PEER + 1..AT_PEER + 1 + hop.peer.len()].copy_from_slice(&hop.peer);
        h[AT_ADDR] = hop.addr.len() as u8;
        h[AT_ADDR + 1..AT_ADDR + 1 + hop.addr.len()].copy_from_slice(&hop.addr);
    }
    Ok(h)
}

/// A length-prefixed field of a hop header: its length byte at `at`, then the bytes.
fn field(header: &[u8], at: usize, max: usize) -> Result<Vec<u8>, OnionError> {
    let len = usize::from(header[at]);
    if len > max {
        return Err(OnionError::BadHop);
    }
    Ok(header[at + 1..at + 1 + len].to_vec())
}

/// Wrap `request` for the relays of `path`, the first first, at the time `now` (seconds
/// since the Unix epoch): the cell to send to `path[0]`, and what it takes to read the
/// reply.
pub fn build(
    path: &[Hop],
    request: &[u8],
    now: u32,
    rng: &mut impl RngCore,
) -> Result<(Cell, Pending), OnionError> {
    let n = path.len();
    if n == 0 || n > MAX_HOPS {
        return Err(OnionError::PathLength { got: n });
    }
    // The exit's payload: its header, the request's length, the request, zeros.
    let exit_payload = layer_len(n - 1) - LAYER_OVERHEAD;
    let limit = exit_payload - HOP_BYTES - 2;
    if request.len() > limit {
        return Err(OnionError::RequestTooLarge {
            limit,
            got: request.len(),
        });
    }
    let mut keys: Vec<Zeroizing<[u8; 32]>> = (0..n)
        .map(|_| {
            let mut k = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(k.as_mut());
            k
        })
        .collect();
    let mut payload = Zeroizing::new(vec![0u8; exit_payload]);
    payload[..HOP_BYTES].copy_from_slice(hop_header(None, now, &keys[n - 1])?.as_ref());
    payload[HOP_BYTES..HOP_BYTES + 2].copy_from_slice(&(request.len() as u16).to_be_bytes());
    payload[HOP_BYTES + 2..HOP_BYTES + 2 + request.len()].copy_from_slice(request);
    let mut message = Vec::new();
    for i in (0..n).rev() {
        if i + 1 < n {
            // A relay's payload: its header naming the next hop, then the next layer.
            let mut p = Zeroizing::new(Vec::with_capacity(layer_len(i) - LAYER_OVERHEAD));
            p.extend_from_slice(hop_header(Some(&path[i + 1]), now, &keys[i])?.as_ref());
            p.extend_from_slice(&message);
            payload = p;
        }
        let mut hs = snow::Builder::new(params()?)
            .prologue(PROLOGUE)
            .and_then(|b| b.remote_public_key(&path[i].key))
            .and_then(|b| b.build_initiator())
            .map_err(noise)?;
        let mut out = vec![0u8; layer_len(i)];
        let written = hs.write_message(&payload, &mut out).map_err(noise)?;
        out.truncate(written);
        message = out;
    }
    let pending = Pending {
        keys: std::mem::take(&mut keys),
    };
    Ok((Cell::padded(&message, rng)?, pending))
}

/// Open this relay's layer of `cell` with its key `key`.
pub fn peel(key: &RelayKey, cell: &Cell, rng: &mut impl RngCore) -> Result<Layer, OnionError> {
    let message = cell.content();
    if message.len() < LAYER_OVERHEAD + HOP_BYTES {
        return Err(OnionError::BadLength { got: message.len() });
    }
    let mut hs = snow::Builder::new(params()?)
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(key.secret.as_ref()))
        .and_then(|b| b.build_responder())
        .map_err(noise)?;
    let mut payload = Zeroizing::new(vec![0u8; message.len()]);
    let n = hs
        .read_message(message, &mut payload)
        .map_err(|_| OnionError::Unopenable)?;
    payload.truncate(n);
    let mut replay_tag = [0u8; 32];
    replay_tag.copy_from_slice(&message[..32]);
    if payload.len() < HOP_BYTES {
        return Err(OnionError::BadHop);
    }
    let (header, rest) = payload.split_at(HOP_BYTES);
    let mut reply_key = Zeroizing::new([0u8; 32]);
    reply_key.copy_from_slice(&header[AT_KEY..AT_PEER]);
    let created_at = u32::from_be_bytes([
        header[AT_TIME],
        header[AT_TIME + 1],
        header[AT_TIME + 2],
        header[AT_TIME + 3],
    ]);
    let peeled = match header[0] {
        0 => {
            let len = rest
                .get(..2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                .ok_or(OnionError::BadHop)?;
            let request = rest.get(2..2 + len).ok_or(OnionError::BadHop)?.to_vec();
            Peeled::Exit { request }
        }
        1 => Peeled::Forward {
            next: field(header, AT_PEER, MAX_PEER_BYTES)?,
            addr: field(header, AT_ADDR, MAX_ADDR_BYTES)?,
            cell: Cell::padded(rest, rng)?,
        },
        _ => return Err(OnionError::BadHop),
    };
    Ok(Layer {
        replay_tag,
        created_at,
        reply_key,
        peeled,
    })
}

fn reply_cipher(key: &[u8; 32]) -> Result<Box<dyn snow::types::Cipher>, OnionError> {
    let mut cipher = DefaultResolver
        .resolve_cipher(&CipherChoice::ChaChaPoly)
        .ok_or_else(|| OnionError::Noise("no ChaChaPoly".into()))?;
    cipher.set(key);
    Ok(cipher)
}

/// Encrypt `content` under `key` (used once: nonce 0) into a padded cell.
fn seal_reply(key: &[u8; 32], content: &[u8]) -> Result<Cell, OnionError> {
    if content.len() + TAG > CELL {
        return Err(OnionError::BadLength {
            got: content.len() + TAG,
        });
    }
    let mut out = vec![0u8; content.len() + TAG];
    let n = reply_cipher(key)?.encrypt(0, PROLOGUE, content, &mut out);
    out.truncate(n);
    // Reply padding need not be random: nobody but the sender reads past `len`, and the
    // relays do not learn more from zeros than from noise (the length is in the clear to
    // the next hop either way).
    let mut body = vec![0u8; CELL];
    body[..out.len()].copy_from_slice(&out);
    Ok(Cell {
        len: out.len(),
        body,
    })
}

/// The exit's answer to the request in `layer`, as the cell it sends back.
pub fn exit_reply(layer: &Layer, answer: &[u8]) -> Result<Cell, OnionError> {
    if answer.len() > MAX_ANSWER {
        return Err(OnionError::AnswerTooLarge {
            limit: MAX_ANSWER,
            got: answer.len(),
        });
    }
    let mut plain = vec![0u8; MAX_ANSWER + 2];
    plain[..2].copy_from_slice(&(answer.len() as u16).to_be_bytes());
    plain[2..2 + answer.len()].copy_from_slice(answer);
    seal_reply(&layer.reply_key, &plain)
}

/// A relay's part of the way back: `reply` (from the next hop) wrapped once more.
pub fn wrap_reply(layer: &Layer, reply: &Cell) -> Result<Cell, OnionError> {
    seal_reply(&layer.reply_key, reply.content())
}

/// The exit's answer, from the reply that came back to the sender.
pub fn open_reply(pending: &Pending, reply: &Cell) -> Result<Vec<u8>, OnionError> {
    let mut content = reply.content().to_vec();
    for key in &pending.keys {
        if content.len() < TAG {
            return Err(OnionError::BadReply);
        }
        let mut out = vec![0u8; content.len() - TAG];
        let n = reply_cipher(key)?
            .decrypt(0, PROLOGUE, &content, &mut out)
            .map_err(|_| OnionError::BadReply)?;
        out.truncate(n);
        content = out;
    }
    let len = content
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(OnionError::BadReply)?;
    content
        .get(2..2 + len)
        .map(<[u8]>::to_vec)
        .ok_or(OnionError::BadReply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    const NOW: u32 = 1_800_000_000;

    struct Net {
        keys: Vec<RelayKey>,
        path: Vec<Hop>,
    }

    fn net(hops: usize, seed: u64) -> (Net, StdRng) {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys: Vec<RelayKey> = (0..hops).map(|_| RelayKey::generate(&mut rng)).collect();
        let path = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Hop {
                peer: vec![i as u8 + 1; 38],
                addr: vec![i as u8 + 1; 8],
                key: k.public(),
            })
            .collect();
        (Net { keys, path }, rng)
    }

    /// Carry `cell` through the relays of `net`; every cell on the way, and the layers.
    fn carry(net: &Net, mut cell: Cell, rng: &mut StdRng) -> (Vec<Cell>, Vec<Layer>, Vec<u8>) {
        let mut cells = vec![cell.clone()];
        let mut layers = Vec::new();
        let mut request = Vec::new();
        for (i, key) in net.keys.iter().enumerate() {
            let layer = peel(key, &cell, rng).unwrap();
            match &layer.peeled {
                Peeled::Forward {
                    next,
                    addr,
                    cell: inner,
                } => {
                    assert_eq!(next, &net.path[i + 1].peer, "each relay learns the next");
                    assert_eq!(addr, &net.path[i + 1].addr, "and where to reach it");
                    cell = inner.clone();
                    cells.push(cell.clone());
                }
                Peeled::Exit { request: r } => request = r.clone(),
            }
            layers.push(layer);
        }
        (cells, layers, request)
    }

    fn answer_back(layers: &[Layer], answer: &[u8]) -> Vec<Cell> {
        let mut replies = vec![exit_reply(layers.last().unwrap(), answer).unwrap()];
        for layer in layers[..layers.len() - 1].iter().rev() {
            let next = wrap_reply(layer, replies.last().unwrap()).unwrap();
            replies.push(next);
        }
        replies
    }

    #[test]
    fn a_request_and_its_answer_cross_every_path_length() {
        for hops in 1..=MAX_HOPS {
            let (net, mut rng) = net(hops, hops as u64);
            let (cell, pending) = build(&net.path, b"deposit this", NOW, &mut rng).unwrap();
            let (cells, layers, request) = carry(&net, cell, &mut rng);
            assert_eq!(request, b"deposit this");
            assert_eq!(cells.len(), hops);
            let replies = answer_back(&layers, b"stored");
            let last = replies.last().unwrap();
            assert_eq!(open_reply(&pending, last).unwrap(), b"stored");
        }
    }

    #[test]
    fn a_relay_reads_its_place_on_the_path_off_its_layer() {
        for hops in 1..=MAX_HOPS {
            let (net, mut rng) = net(hops, 11);
            let (cell, _) = build(&net.path, b"x", NOW, &mut rng).unwrap();
            let (cells, _, _) = carry(&net, cell, &mut rng);
            let places: Vec<Option<usize>> = cells.iter().map(Cell::hop_index).collect();
            let expected: Vec<Option<usize>> = (0..hops).map(Some).collect();
            assert_eq!(places, expected, "{hops} hops");
        }
    }

    #[test]
    fn every_cell_on_the_wire_has_one_size_whatever_the_path_request_or_hop() {
        let mut sizes = std::collections::BTreeSet::new();
        for hops in 1..=MAX_HOPS {
            for request in [&b""[..], &[7u8; 100][..], &vec![9u8; MAX_REQUEST][..]] {
                let (net, mut rng) = net(hops, 7);
                let (cell, _) = build(&net.path, request, NOW, &mut rng).unwrap();
                let (cells, layers, got) = carry(&net, cell, &mut rng);
                assert_eq!(got, request);
                for c in &cells {
                    sizes.insert(c.to_bytes().len());
                }
                for answer in [&b""[..], &vec![1u8; MAX_ANSWER][..]] {
                    for r in answer_back(&layers, answer) {
                        sizes.insert(r.to_bytes().len());
                    }
                }
            }
        }
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![FRAME_BYTES]);
    }

    #[test]
    fn a_relay_that_flips_a_bit_is_caught_by_the_next() {
        let (net, mut rng) = net(3, 11);
        let (cell, _) = build(&net.path, b"request", NOW, &mut rng).unwrap();
        let first = peel(&net.keys[0], &cell, &mut rng).unwrap();
        let Peeled::Forward { cell: inner, .. } = first.peeled else {
            panic!("the first relay forwards");
        };
        let mut bytes = inner.to_bytes();
        bytes[3 + 100] ^= 1;
        let tampered = Cell::from_bytes(&bytes).unwrap();
        assert!(matches!(
            peel(&net.keys[1], &tampered, &mut rng),
            Err(OnionError::Unopenable)
        ));
        // The padding is not the message: changing it changes nothing.
        let mut bytes = inner.to_bytes();
        bytes[FRAME_BYTES - 1] ^= 1;
        assert!(peel(&net.keys[1], &Cell::from_bytes(&bytes).unwrap(), &mut rng).is_ok());
    }

    #[test]
    fn a_tampered_reply_is_caught_by_the_sender() {
        let (net, mut rng) = net(3, 12);
        let (cell, pending) = build(&net.path, b"request", NOW, &mut rng).unwrap();
        let (_, layers, _) = carry(&net, cell, &mut rng);
        let replies = answer_back(&layers, b"answer");
        let mut bytes = replies.last().unwrap().to_bytes();
        bytes[10] ^= 1;
        assert!(matches!(
            open_reply(&pending, &Cell::from_bytes(&bytes).unwrap()),
            Err(OnionError::BadReply)
        ));
    }

    #[test]
    fn a_layer_opens_only_with_its_relays_key_and_names_only_the_next_hop() {
        let (net, mut rng) = net(3, 13);
        let (cell, _) = build(&net.path, b"request", NOW, &mut rng).unwrap();
        assert!(matches!(
            peel(&net.keys[1], &cell, &mut rng),
            Err(OnionError::Unopenable)
        ));
        let layer = peel(&net.keys[0], &cell, &mut rng).unwrap();
        assert_eq!(layer.created_at, NOW);
        let Peeled::Forward {
            next, cell: inner, ..
        } = &layer.peeled
        else {
            panic!("the first relay forwards");
        };
        assert_eq!(next, &net.path[1].peer);
        // The request is nowhere in what the first relay sees.
        let seen = inner.to_bytes();
        assert!(!seen.windows(7).any(|w| w == b"request"));
        // The same cell twice has the same replay tag; another cell does not.
        let again = peel(&net.keys[0], &cell, &mut rng).unwrap();
        assert_eq!(again.replay_tag, layer.replay_tag);
        let (other, _) = build(&net.path, b"request", NOW, &mut rng).unwrap();
        assert_ne!(
            peel(&net.keys[0], &other, &mut rng).unwrap().replay_tag,
            layer.replay_tag
        );
    }

    #[test]
    fn limits_are_checked() {
        let (net, mut rng) = net(3, 14);
        assert!(matches!(
            build(&net.path, &vec![0u8; MAX_REQUEST + 1], NOW, &mut rng),
            Err(OnionError::RequestTooLarge { .. })
        ));
        assert!(matches!(
            build(&[], b"x", NOW, &mut rng),
            Err(OnionError::PathLength { got: 0 })
        ));
        let four: Vec<Hop> = net.path.iter().chain(&net.path[..1]).cloned().collect();
        assert!(matches!(
            build(&four, b"x", NOW, &mut rng),
            Err(OnionError::PathLength { got: 4 })
        ));
        let long = vec![
            Hop {
                peer: vec![0; MAX_PEER_BYTES + 1],
                addr: vec![],
                key: net.path[0].key,
            };
            2
        ];
        assert!(matches!(
            build(&long, b"x", NOW, &mut rng),
            Err(OnionError::PeerTooLong { .. })
        ));
        let far = vec![
            Hop {
                peer: vec![0; 38],
                addr: vec![0; MAX_ADDR_BYTES + 1],
                key: net.path[0].key,
            };
            2
        ];
        assert!(matches!(
            build(&far, b"x", NOW, &mut rng),
            Err(OnionError::AddrTooLong { .. })
        ));
        let (cell, _) = build(&net.path, b"x", NOW, &mut rng).unwrap();
        let (_, layers, _) = carry(&net, cell, &mut rng);
        assert!(matches!(
            exit_reply(&layers[2], &vec![0u8; MAX_ANSWER + 1]),
            Err(OnionError::AnswerTooLarge { .. })
        ));
        assert!(matches!(
            Cell::from_bytes(&[VERSION; 10]),
            Err(OnionError::BadSize { got: 10 })
        ));
        let mut bytes = vec![0u8; FRAME_BYTES];
        bytes[0] = 9;
        assert!(matches!(
            Cell::from_bytes(&bytes),
            Err(OnionError::UnsupportedVersion { got: 9 })
        ));
        bytes[0] = VERSION;
        bytes[1] = 0xff;
        assert!(matches!(
            Cell::from_bytes(&bytes),
            Err(OnionError::BadLength { .. })
        ));
    }

    #[test]
    fn a_relays_onion_key_is_its_identity_key_and_a_sender_derives_it_from_the_public_half() {
        let mut rng = StdRng::seed_from_u64(21);
        for _ in 0..8 {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rng, &mut seed);
            let identity = vodozemac::Ed25519SecretKey::from_slice(&seed);
            let public = identity.public_key().as_bytes().to_owned();
            let relay = RelayKey::from_ed25519_seed(&seed);
            assert_eq!(onion_key_of(&public), Some(relay.public()));
            // And a cell built to that key opens with it.
            let path = [Hop {
                peer: vec![1; 38],
                addr: vec![],
                key: onion_key_of(&public).unwrap(),
            }];
            let (cell, _) = build(&path, b"hello", NOW, &mut rng).unwrap();
            let layer = peel(&relay, &cell, &mut rng).unwrap();
            assert_eq!(
                layer.peeled,
                Peeled::Exit {
                    request: b"hello".to_vec()
                }
            );
        }
        // Not every 32 bytes are a point.
        assert!((0u8..=255).any(|b| onion_key_of(&[b; 32]).is_none()));
    }

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let (net, mut rng) = net(1, 5);
        let (cell, _) = build(&net.path, b"x", NOW, &mut rng).unwrap();
        let answers = [
            Answer::Reply(cell),
            Answer::Refused(Refusal::SlowDown(1234)),
            Answer::Refused(Refusal::NextHopFailed),
        ];
        for a in answers {
            let bytes = a.to_bytes();
            assert!(bytes.len() <= MAX_ANSWER_BYTES);
            assert_eq!(Answer::from_bytes(&bytes).unwrap(), a);
        }
        for bad in [&[][..], &[1, 99, 0, 0, 0, 0], &[1, 0], &[2], &[0, 1, 2]] {
            assert!(Answer::from_bytes(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn peeling_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), FRAME_BYTES..=FRAME_BYTES), len in 0u16..5000) {
            let mut bytes = bytes;
            bytes[0] = VERSION;
            bytes[1..3].copy_from_slice(&len.to_be_bytes());
            let mut rng = StdRng::seed_from_u64(1);
            let key = RelayKey::generate(&mut rng);
            if let Ok(cell) = Cell::from_bytes(&bytes) {
                prop_assert!(peel(&key, &cell, &mut rng).is_err());
            }
            let _ = Cell::from_bytes(&bytes[..bytes.len() / 2]);
        }

        #[test]
        fn any_request_that_fits_comes_out_whole(request in proptest::collection::vec(any::<u8>(), 0..=MAX_REQUEST), hops in 1usize..=MAX_HOPS, seed in any::<u64>()) {
            let (net, mut rng) = net(hops, seed);
            let (cell, pending) = build(&net.path, &request, NOW, &mut rng).unwrap();
            let (_, layers, got) = carry(&net, cell, &mut rng);
            prop_assert_eq!(&got, &request);
            let replies = answer_back(&layers, &request[..request.len().min(MAX_ANSWER)]);
            prop_assert_eq!(open_reply(&pending, replies.last().unwrap()).unwrap(), request[..request.len().min(MAX_ANSWER)].to_vec());
        }
    }
}
