//! Group envelopes: what one carries, sealed and padded under the group secret, with the
//! hint that says which secret (docs/protocol.md §14.3).

use super::*;

/// What one group envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Change(Change),
    /// A member's sender key, one Olm message per other member.
    SenderKeys(SenderKeys),
    Message(Sent),
    /// Part of the group's log, without rekeys: left under a new secret after a rekey for
    /// members a concurrent change left out, so that they catch up on changes they missed.
    Changes(Vec<Change>),
    /// A member's newer fallback key.
    Keys(MemberKeys),
}

/// `changes` without their rekeys, in chunks of at most `max_bytes` encoded (a change
/// larger than that gets a chunk of its own).
pub fn chunk_changes(changes: &[Change], max_bytes: usize) -> Vec<Vec<Change>> {
    let mut chunks: Vec<Vec<Change>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for c in changes {
        let c = c.stripped();
        let size = codec::encode(&c).map(|b| b.len()).unwrap_or(0);
        if bytes + size > max_bytes && chunks.last().is_some_and(|l| !l.is_empty()) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = chunks.last_mut() {
            last.push(c);
        }
    }
    chunks
}

/// `payload` in a group envelope under `secret`: a version byte, a random 12-byte nonce,
/// ChaCha20-Poly1305 of the padded encoding, the whole one of the envelope bucket sizes.
pub fn seal_payload(
    secret: &GroupSecret,
    payload: &Payload,
    rng: &mut impl rand::RngCore,
) -> Result<Vec<u8>, GroupError> {
    let plain = codec::encode_limited(payload, MAX_PAYLOAD_BYTES as u64)?;
    let total = padding::bucket_for(HEADER_BYTES + 16 + 4 + plain.len())
        .ok_or(GroupError::Invalid("the payload is too large"))?;
    let padded = Zeroizing::new(
        padding::pad_to(&plain, total - HEADER_BYTES - 16)
            .ok_or(GroupError::Invalid("the payload is too large"))?,
    );
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let hint = hint(secret, &nonce);
    let key = secret.derive(ENVELOPE_INFO);
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            AeadPayload {
                msg: padded.as_slice(),
                aad: &aad(&hint),
            },
        )
        .map_err(|_| GroupError::Invalid("sealing failed"))?;
    let mut out = Vec::with_capacity(total);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&hint);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Version, nonce and hint.
const HEADER_BYTES: usize = 1 + 12 + HINT_BYTES;

/// A group envelope's hint: the first bytes of `HKDF-SHA-256(secret, "sotto/group/hint/v1"
/// ‖ nonce)`. Unlinkable without the secret (a fresh nonce each time), it lets a node that
/// holds many secrets tell in a microsecond which one an envelope may be sealed under,
/// instead of trying to decrypt the whole envelope under each.
fn hint(secret: &GroupSecret, nonce: &[u8; 12]) -> [u8; HINT_BYTES] {
    let mut info = Vec::with_capacity(HINT_INFO.len() + nonce.len());
    info.extend_from_slice(HINT_INFO);
    info.extend_from_slice(nonce);
    let full = secret.derive(&info);
    let mut out = [0u8; HINT_BYTES];
    out.copy_from_slice(&full[..HINT_BYTES]);
    out
}

/// The associated data of a group envelope: its version and hint.
fn aad(hint: &[u8; HINT_BYTES]) -> [u8; 1 + HINT_BYTES] {
    let mut out = [VERSION; 1 + HINT_BYTES];
    out[1..].copy_from_slice(hint);
    out
}

/// Open a group envelope under `secret`.
pub fn open_payload(secret: &GroupSecret, envelope: &[u8]) -> Result<Payload, GroupError> {
    if !padding::is_bucket(envelope.len()) {
        return Err(GroupError::Invalid("not an envelope size"));
    }
    if envelope.len() < HEADER_BYTES + 16 || envelope[0] != VERSION {
        return Err(GroupError::Unopenable);
    }
    let (header, sealed) = envelope.split_at(HEADER_BYTES);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[1..13]);
    let mut hinted = [0u8; HINT_BYTES];
    hinted.copy_from_slice(&header[13..]);
    // Not under this secret, known without decrypting (or, one time in 2^32, found by the
    // AEAD below).
    if hint(secret, &nonce) != hinted {
        return Err(GroupError::Unopenable);
    }
    let key = secret.derive(ENVELOPE_INFO);
    let padded = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
            .decrypt(
                Nonce::from_slice(&nonce),
                AeadPayload {
                    msg: sealed,
                    aad: &aad(&hinted),
                },
            )
            .map_err(|_| GroupError::Unopenable)?,
    );
    let plain = padding::unpad(&padded).ok_or(GroupError::Invalid("bad padding"))?;
    Ok(codec::decode_limited(plain, MAX_PAYLOAD_BYTES as u64)?)
}
