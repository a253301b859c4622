//! Attachments as blobs: a file encrypted under a fresh key in chunks of one fixed size,
//! each chunk named by the SHA-256 of its ciphertext, and a **manifest** (the list of the
//! chunks' names) encrypted the same way, whose name — the **root** — names the blob
//! (docs/protocol.md §15).
//!
//! - Every sealed chunk, the manifest too, is [`SEALED_CHUNK_BYTES`] long: whoever stores
//!   or carries one learns a blob's size rounded up to the chunk size and nothing else.
//! - A chunk's associated data binds the blob's size, its number of chunks and the chunk's
//!   index, so that chunks cannot be dropped, reordered, or moved between blobs with the
//!   same key; the key is fresh for every blob (the same file sent twice is two blobs).
//! - A receiver checks each chunk's hash before decrypting it (a wrong chunk is fetched
//!   again; a holder cannot pass off another chunk) and gets the plaintext chunk by chunk:
//!   memory does not grow with the file.
//!
//! Sans-I/O: [`Sealer`] turns plaintext chunks into sealed ones, [`Opener`] the reverse;
//! the caller reads, writes, stores and transfers.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload as AeadPayload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The bytes of one sealed chunk in a [`ChunkAnswer`] (encoded as a length and the bytes).
pub use serde_bytes::ByteBuf;

/// Plaintext bytes per chunk (every chunk but the last is full).
pub const CHUNK_BYTES: usize = 60 * 1024;
/// A sealed chunk: the plaintext's length (4 bytes), the plaintext padded to
/// [`CHUNK_BYTES`], and the AEAD tag.
pub const SEALED_CHUNK_BYTES: usize = 4 + CHUNK_BYTES + 16;
/// Chunks a blob has at most: as many names as fit one manifest chunk.
pub const MAX_CHUNKS: usize = CHUNK_BYTES / 32;
/// The largest blob: [`MAX_CHUNKS`] full chunks (112.5 MiB).
pub const MAX_BLOB_BYTES: u64 = (MAX_CHUNKS * CHUNK_BYTES) as u64;

const CHUNK_INFO: &[u8] = b"sotto/blob/chunk/v1";
const AAD_DOMAIN: &[u8] = b"sotto/blob/v1";

/// Why a blob could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobError {
    #[error("the file is too large: limit {limit} bytes, got {got}")]
    TooLarge { limit: u64, got: u64 },
    #[error("chunk {index} does not match its hash")]
    BadHash { index: u32 },
    #[error("chunk {index} does not decrypt with the blob's key")]
    Unopenable { index: u32 },
    #[error("the manifest does not match the blob's root")]
    BadRoot,
    #[error("the manifest does not decrypt with the blob's key")]
    UnopenableManifest,
    #[error("{0}")]
    Malformed(&'static str),
}

/// What a message carries to name a blob: enough to fetch, check and decrypt it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the sealed manifest.
    pub root: [u8; 32],
    pub key: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
}

impl std::fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "BlobRef {{ root: ")?;
        crate::codec::write_hex(&self.root, f)?;
        write!(f, ", size: {}, .. }}", self.size)
    }
}

impl BlobRef {
    /// How many data chunks a blob of this size has (an empty blob has none; it is its
    /// manifest alone).
    pub fn chunks(&self) -> Result<u32, BlobError> {
        chunks_for(self.size)
    }
}

/// One sealed chunk and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub address: [u8; 32],
    pub bytes: Vec<u8>,
}

/// The name of a sealed chunk: the SHA-256 of its bytes (what a holder checks a chunk it is
/// given against, without the key).
pub fn address(sealed: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed).into()
}

fn chunks_for(size: u64) -> Result<u32, BlobError> {
    if size > MAX_BLOB_BYTES {
        return Err(BlobError::TooLarge {
            limit: MAX_BLOB_BYTES,
            got: size,
        });
    }
    u32::try_from(size.div_ceil(CHUNK_BYTES as u64))
        .map_err(|_| BlobError::Malformed("too many chunks"))
}

/// The plaintext length chunk `index` (from 0) of a blob of `size` bytes holds.
fn chunk_len(size: u64, index: u32) -> usize {
    let start = u64::from(index) * CHUNK_BYTES as u64;
    size.saturating_sub(start).min(CHUNK_BYTES as u64) as usize
}

fn cipher(key: &[u8; 32]) -> ChaCha20Poly1305 {
    let mut k = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, key).expand(CHUNK_INFO, k.as_mut());
    ChaCha20Poly1305::new(Key::from_slice(k.as_ref()))
}

/// The nonce of a chunk: its position, the manifest first (0), then the data chunks (1…).
fn nonce(position: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&position.to_be_bytes());
    Nonce::from(n)
}

fn aad(size: u64, position: u32) -> Vec<u8> {
    let mut a = AAD_DOMAIN.to_vec();
    a.extend_from_slice(&size.to_be_bytes());
    a.extend_from_slice(&position.to_be_bytes());
    a
}

fn seal(key: &[u8; 32], size: u64, position: u32, data: &[u8]) -> Result<Sealed, BlobError> {
    if data.len() > CHUNK_BYTES {
        return Err(BlobError::Malformed("a chunk larger than the chunk size"));
    }
    let mut plain = Zeroizing::new(vec![0u8; 4 + CHUNK_BYTES]);
    plain[..4].copy_from_slice(&(data.len() as u32).to_be_bytes());
    plain[4..4 + data.len()].copy_from_slice(data);
    let bytes = cipher(key)
        .encrypt(
            &nonce(position),
            AeadPayload {
                msg: &plain,
                aad: &aad(size, position),
            },
        )
        .map_err(|_| BlobError::Malformed("a chunk does not seal"))?;
    Ok(Sealed {
        address: address(&bytes),
        bytes,
    })
}

/// Why a sealed chunk did not open.
enum Refused {
    Hash,
    Key,
    Length,
}

fn open(
    key: &[u8; 32],
    size: u64,
    position: u32,
    address: &[u8; 32],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Refused> {
    if bytes.len() != SEALED_CHUNK_BYTES || Sha256::digest(bytes).as_slice() != address {
        return Err(Refused::Hash);
    }
    let plain = Zeroizing::new(
        cipher(key)
            .decrypt(
                &nonce(position),
                AeadPayload {
                    msg: bytes,
                    aad: &aad(size, position),
                },
            )
            .map_err(|_| Refused::Key)?,
    );
    let len = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    if len > CHUNK_BYTES {
        return Err(Refused::Length);
    }
    Ok(Zeroizing::new(plain[4..4 + len].to_vec()))
}

/// Seals a file of a known size, chunk by chunk, then its manifest.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    size: u64,
    chunks: u32,
    addresses: Vec<[u8; 32]>,
}

impl Sealer {
    /// A sealer for a file of `size` bytes under a fresh key from `rng`.
    pub fn new(size: u64, rng: &mut impl rand::RngCore) -> Result<Self, BlobError> {
        let chunks = chunks_for(size)?;
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Ok(Sealer {
            key,
            size,
            chunks,
            addresses: Vec::with_capacity(chunks as usize),
        })
    }

    /// How many data chunks the file has; [`Sealer::push`] takes them in order.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Seal the next chunk of the file: [`CHUNK_BYTES`] bytes, fewer for the last one.
    pub fn push(&mut self, data: &[u8]) -> Result<Sealed, BlobError> {
        let index = u32::try_from(self.addresses.len()).unwrap_or(u32::MAX);
        if index >= self.chunks {
            return Err(BlobError::Malformed(
                "more chunks than the file's size holds",
            ));
        }
        if data.len() != chunk_len(self.size, index) {
            return Err(BlobError::Malformed(
                "a chunk of another length than the file's size gives it",
            ));
        }
        let sealed = seal(&self.key, self.size, index + 1, data)?;
        self.addresses.push(sealed.address);
        Ok(sealed)
    }

    /// After every chunk: the sealed manifest and the reference that names the blob.
    pub fn finish(self) -> Result<(Sealed, BlobRef), BlobError> {
        if self.addresses.len() != self.chunks as usize {
            return Err(BlobError::Malformed(
                "fewer chunks than the file's size holds",
            ));
        }
        let list: Vec<u8> = self.addresses.concat();
        let manifest = seal(&self.key, self.size, 0, &list)?;
        let blob = BlobRef {
            root: manifest.address,
            key: *self.key,
            size: self.size,
        };
        Ok((manifest, blob))
    }
}

/// Opens a blob from its reference: the manifest first, then any chunk, in any order.
pub struct Opener {
    blob: BlobRef,
    addresses: Vec<[u8; 32]>,
}

impl Opener {
    /// Check and open the sealed manifest of `blob`.
    pub fn new(blob: &BlobRef, manifest: &[u8]) -> Result<Self, BlobError> {
        let chunks = blob.chunks()?;
        let list = open(&blob.key, blob.size, 0, &blob.root, manifest).map_err(|r| match r {
            Refused::Hash => BlobError::BadRoot,
            Refused::Key => BlobError::UnopenableManifest,
            Refused::Length => BlobError::Malformed("a manifest's length beyond the chunk size"),
        })?;
        if list.len() != chunks as usize * 32 {
            return Err(BlobError::Malformed(
                "a manifest that names another number of chunks than the size gives",
            ));
        }
        let addresses = list
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect();
        Ok(Opener {
            blob: blob.clone(),
            addresses,
        })
    }

    /// The names of the data chunks, in order: what to fetch.
    pub fn addresses(&self) -> &[[u8; 32]] {
        &self.addresses
    }

    /// Check chunk `index` (from 0) against its name and decrypt it.
    pub fn open_chunk(&self, index: u32, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, BlobError> {
        let address = self
            .addresses
            .get(index as usize)
            .ok_or(BlobError::Malformed("no such chunk"))?;
        let plain = open(&self.blob.key, self.blob.size, index + 1, address, bytes).map_err(
            |r| match r {
                Refused::Hash => BlobError::BadHash { index },
                Refused::Key => BlobError::Unopenable { index },
                Refused::Length => BlobError::Malformed("a chunk's length beyond the chunk size"),
            },
        )?;
        if plain.len() != chunk_len(self.blob.size, index) {
            return Err(BlobError::Malformed(
                "a chunk of another length than the blob's size gives it",
            ));
        }
        Ok(plain)
    }
}

/// `/sotto/blob/1`: a node asks another for one sealed chunk of a blob that node offers.
pub const PROTOCOL: &str = "/sotto/blob/1";
/// The largest encoded chunk request.
pub const MAX_REQUEST_BYTES: usize = 64;
/// Sealed chunks one answer carries at most (983,360 bytes).
pub const MAX_CHUNKS_PER_ANSWER: u8 = 16;
/// The largest encoded chunk answer: [`MAX_CHUNKS_PER_ANSWER`] sealed chunks and their
/// framing.
pub const MAX_ANSWER_BYTES: usize = MAX_CHUNKS_PER_ANSWER as usize * (SEALED_CHUNK_BYTES + 8) + 64;

/// `count` sealed chunks of the blob named `root`, from `position` on (0: the manifest;
/// `i + 1`: data chunk `i`). The root is the capability: only those the blob's reference
/// was sent to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub root: [u8; 32],
    pub position: u32,
    /// 1 to [`MAX_CHUNKS_PER_ANSWER`].
    pub count: u8,
}

/// The answer to a [`ChunkRequest`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// The sealed chunks ([`SEALED_CHUNK_BYTES`] each) from the position asked for, in
    /// order: as many as asked, fewer where the blob ends. The asker checks each against
    /// the manifest.
    Chunks(Vec<serde_bytes::ByteBuf>),
    /// This node offers no such blob, or the blob has no such position.
    Unknown,
    Refused(ChunkRefusal),
}

impl std::fmt::Debug for ChunkAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkAnswer::Chunks(c) => write!(f, "Chunks({})", c.len()),
            ChunkAnswer::Unknown => write!(f, "Unknown"),
            ChunkAnswer::Refused(r) => write!(f, "Refused({r:?})"),
        }
    }
}

/// Why a node did not answer a chunk request with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRefusal {
    Malformed,
    /// Over the asker's rate limit: ask again after this many milliseconds.
    SlowDown(u32),
    Busy,
    Internal,
}

impl ChunkRequest {
    pub fn to_bytes(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::codec::encode_limited(self, MAX_REQUEST_BYTES as u64)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode_limited(bytes, MAX_REQUEST_BYTES as u64)
    }
}

impl ChunkAnswer {
    pub fn to_bytes(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::codec::encode_limited(self, MAX_ANSWER_BYTES as u64)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode_limited(bytes, MAX_ANSWER_BYTES as u64)
    }
}

/// Sealed chunks in one of a blob's dead drops at mailbox hosts: position `p` is in drop
/// `p / CHUNKS_PER_DROP`. 200 chunks padded to 65,535 bytes are 13.1 MB, within a host's
/// default 16 MiB per dead drop.
pub const CHUNKS_PER_DROP: u32 = 200;
/// The size a sealed chunk is padded to for a mailbox host, which stores only envelope
/// bucket sizes.
pub const HOSTED_CHUNK_BYTES: usize = 65_535;
const DROP_INFO: &[u8] = b"sotto/blob/drop/v1";

/// The dead-drop secret of drop `index` of a blob: only those who hold the blob's key can
/// deposit there, read it, or find it.
pub fn drop_secret(key: &[u8; 32], index: u32) -> crate::deaddrop::Secret {
    let mut info = DROP_INFO.to_vec();
    info.extend_from_slice(&index.to_be_bytes());
    let mut s = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, key).expand(&info, s.as_mut());
    crate::deaddrop::Secret::from_bytes(*s)
}

/// The dead drops of a blob of `chunks` data chunks (the manifest is position 0).
pub fn drops(chunks: u32) -> u32 {
    (chunks + 1).div_ceil(CHUNKS_PER_DROP)
}

/// A sealed chunk as a mailbox host stores it: zeros after it up to
/// [`HOSTED_CHUNK_BYTES`].
pub fn pad_for_host(sealed: &[u8]) -> Vec<u8> {
    let mut v = sealed.to_vec();
    v.resize(HOSTED_CHUNK_BYTES.max(sealed.len()), 0);
    v
}

/// The sealed chunk inside what a host stored (its name is checked by the caller).
pub fn unpad_from_host(hosted: &[u8]) -> Option<&[u8]> {
    (hosted.len() == HOSTED_CHUNK_BYTES).then(|| &hosted[..SEALED_CHUNK_BYTES])
}

/// Where a sealed chunk at `position` sits in a file of a whole sealed blob (the manifest
/// first, then the data chunks in order, each [`SEALED_CHUNK_BYTES`]).
pub fn offset_of(position: u32) -> u64 {
    u64::from(position) * SEALED_CHUNK_BYTES as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn file(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Seal `data`: the manifest, the reference and the chunks.
    fn seal_all(data: &[u8], rng: &mut StdRng) -> (Sealed, BlobRef, Vec<Sealed>) {
        let mut sealer = Sealer::new(data.len() as u64, rng).unwrap();
        let chunks: Vec<Sealed> = data
            .chunks(CHUNK_BYTES)
            .map(|c| sealer.push(c).unwrap())
            .collect();
        let (manifest, blob) = sealer.finish().unwrap();
        (manifest, blob, chunks)
    }

    fn open_all(blob: &BlobRef, manifest: &Sealed, chunks: &[Sealed]) -> Vec<u8> {
        let opener = Opener::new(blob, &manifest.bytes).unwrap();
        assert_eq!(opener.addresses().len(), chunks.len());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(opener.addresses()[i], c.address);
            out.extend_from_slice(&opener.open_chunk(i as u32, &c.bytes).unwrap());
        }
        out
    }

    #[test]
    fn a_blob_opens_whole_and_every_sealed_chunk_is_the_same_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for size in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 5,
        ] {
            let data = file(size);
            let (manifest, blob, chunks) = seal_all(&data, &mut rng);
            assert_eq!(chunks.len(), size.div_ceil(CHUNK_BYTES));
            assert!(std::iter::once(&manifest)
                .chain(&chunks)
                .all(|c| c.bytes.len() == SEALED_CHUNK_BYTES));
            assert_eq!(open_all(&blob, &manifest, &chunks), data, "size {size}");
        }
    }

    #[test]
    fn the_same_file_twice_is_two_unrelated_blobs() {
        let mut rng = StdRng::seed_from_u64(2);
        let data = file(2 * CHUNK_BYTES);
        let (m1, b1, c1) = seal_all(&data, &mut rng);
        let (m2, b2, c2) = seal_all(&data, &mut rng);
        assert_ne!(b1.key, b2.key);
        assert_ne!(b1.root, b2.root);
        assert_ne!(c1[0].address, c2[0].address);
        // One blob's chunks do not open as the other's.
        let o2 = Opener::new(&b2, &m2.bytes).unwrap();
        assert!(matches!(
            o2.open_chunk(0, &c1[0].bytes),
            Err(BlobError::BadHash { index: 0 })
        ));
        assert!(Opener::new(&b2, &m1.bytes).is_err());
    }

    #[test]
    fn a_wrong_chunk_a_wrong_key_or_a_wrong_size_is_refused() {
        let mut rng = StdRng::seed_from_u64(3);
        let data = file(3 * CHUNK_BYTES + 10);
        let (manifest, blob, chunks) = seal_all(&data, &mut rng);
        let opener = Opener::new(&blob, &manifest.bytes).unwrap();
        // A flipped bit: the hash does not match (fetch it again).
        let mut bad = chunks[1].bytes.clone();
        bad[100] ^= 1;
        assert_eq!(
            opener.open_chunk(1, &bad),
            Err(BlobError::BadHash { index: 1 })
        );
        // A chunk in another place.
        assert_eq!(
            opener.open_chunk(2, &chunks[1].bytes),
            Err(BlobError::BadHash { index: 2 })
        );
        assert!(opener.open_chunk(9, &chunks[1].bytes).is_err());
        // Truncated.
        assert!(opener.open_chunk(1, &chunks[1].bytes[..100]).is_err());
        // The right bytes under a wrong key: they match the hash but do not decrypt.
        let mut wrong = blob.clone();
        wrong.key[0] ^= 1;
        assert_eq!(
            Opener::new(&wrong, &manifest.bytes).err(),
            Some(BlobError::UnopenableManifest)
        );
        // A reference that lies about the size (to drop the last chunk): refused.
        let mut shorter = blob.clone();
        shorter.size = 2 * CHUNK_BYTES as u64;
        assert!(Opener::new(&shorter, &manifest.bytes).is_err());
        // An absurd size.
        let mut huge = blob.clone();
        huge.size = u64::MAX;
        assert!(matches!(
            Opener::new(&huge, &manifest.bytes),
            Err(BlobError::TooLarge { .. })
        ));
    }

    #[test]
    fn chunk_requests_and_answers_round_trip_within_their_limits() {
        let request = ChunkRequest {
            root: [9; 32],
            position: MAX_CHUNKS as u32,
            count: MAX_CHUNKS_PER_ANSWER,
        };
        let bytes = request.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_REQUEST_BYTES);
        assert_eq!(ChunkRequest::from_bytes(&bytes).unwrap(), request);
        let chunk = serde_bytes::ByteBuf::from(vec![7; SEALED_CHUNK_BYTES]);
        let answer = ChunkAnswer::Chunks(vec![chunk; MAX_CHUNKS_PER_ANSWER as usize]);
        let bytes = answer.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_ANSWER_BYTES);
        assert_eq!(ChunkAnswer::from_bytes(&bytes).unwrap(), answer);
        // An answer larger than the most chunks one may carry does not encode or decode.
        let huge = ChunkAnswer::Chunks(vec![serde_bytes::ByteBuf::from(vec![0; MAX_ANSWER_BYTES])]);
        assert!(huge.to_bytes().is_err());
        assert!(ChunkAnswer::from_bytes(&[0xff; 70]).is_err());
    }

    #[test]
    fn a_blobs_dead_drops_hold_its_chunks_within_a_hosts_quota() {
        assert_eq!(drops(0), 1);
        assert_eq!(drops(199), 1);
        assert_eq!(drops(200), 2);
        assert_eq!(drops(MAX_CHUNKS as u32), 10);
        assert!(
            CHUNKS_PER_DROP as u64 * HOSTED_CHUNK_BYTES as u64
                <= crate::mailbox::Policy::default().max_drop_bytes
        );
        assert!(crate::padding::is_bucket(HOSTED_CHUNK_BYTES));
        // Each drop of each blob has its own address.
        let a = drop_secret(&[1; 32], 0).drop_key(0).address();
        assert_ne!(a, drop_secret(&[1; 32], 1).drop_key(0).address());
        assert_ne!(a, drop_secret(&[2; 32], 0).drop_key(0).address());
        let sealed = vec![7u8; SEALED_CHUNK_BYTES];
        let hosted = pad_for_host(&sealed);
        assert_eq!(hosted.len(), HOSTED_CHUNK_BYTES);
        assert_eq!(unpad_from_host(&hosted), Some(&sealed[..]));
        assert_eq!(unpad_from_host(&sealed), None);
    }

    #[test]
    fn a_sealer_refuses_what_the_size_does_not_hold() {
        let mut rng = StdRng::seed_from_u64(4);
        assert!(matches!(
            Sealer::new(MAX_BLOB_BYTES + 1, &mut rng),
            Err(BlobError::TooLarge { .. })
        ));
        let mut sealer = Sealer::new(CHUNK_BYTES as u64 + 1, &mut rng).unwrap();
        assert!(sealer.push(&file(CHUNK_BYTES - 1)).is_err());
        sealer.push(&file(CHUNK_BYTES)).unwrap();
        assert!(sealer.push(&file(2)).is_err());
        let mut early = Sealer::new(2 * CHUNK_BYTES as u64, &mut rng).unwrap();
        early.push(&file(CHUNK_BYTES)).unwrap();
        assert!(early.finish().is_err());
        // The largest blob's manifest fits one chunk.
        let names = vec![[7u8; 32]; MAX_CHUNKS].concat();
        assert!(seal(&[1; 32], MAX_BLOB_BYTES, 0, &names).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_file_comes_back_as_it_went(size in 0usize..(3 * CHUNK_BYTES), seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let data = file(size);
            let (manifest, blob, chunks) = seal_all(&data, &mut rng);
            prop_assert_eq!(open_all(&blob, &manifest, &chunks), data);
        }

        #[test]
        fn garbage_never_opens_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..SEALED_CHUNK_BYTES + 2), size: u64) {
            let blob = BlobRef { root: Sha256::digest(&bytes).into(), key: [1; 32], size };
            prop_assert!(Opener::new(&blob, &bytes).is_err());
        }
    }
}
