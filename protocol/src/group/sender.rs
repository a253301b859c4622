//! Sender keys: each member's Megolm session, signed and shared with each other member
//! over a pairwise Olm session, and the messages encrypted in it (docs/protocol.md §14.4).

use super::*;
use crate::session::Ciphertext;

/// The largest encoded [`SenderKey`] (about 380 bytes).
const MAX_SENDER_KEY_BYTES: usize = 1_024;
/// The largest Olm message of a bundle key (a pre-key message of 32 bytes is about 190).
const MAX_BOX_BYTES: usize = 512;
/// Boxes a bundle carries at most (a group's other members fit in few bundles).
pub const MAX_BOXES: usize = MAX_MEMBERS;
const BUNDLE_INFO: &[u8] = b"sotto/group/sender-keys/v1";

/// A member's Megolm session key, signed by its account key, for the secret made by the
/// change `key_change` (so that a key cannot be resealed under another secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKey {
    pub group: GroupId,
    pub member: AccountKey,
    pub key_change: [u8; 32],
    pub session_key: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SenderKey {
    pub fn new(
        identity: &Identity,
        group: GroupId,
        key_change: [u8; 32],
        session: &GroupSession,
    ) -> Self {
        let session_key = session.session_key().to_bytes();
        let signature = identity
            .sign(
                SENDER_KEY_DOMAIN,
                &sender_key_bytes(&group, &key_change, &session_key),
            )
            .to_vec();
        SenderKey {
            group,
            member: identity.public(),
            key_change,
            session_key,
            signature,
        }
    }

    /// The inbound session, if the signature holds.
    pub fn open(&self) -> Result<InboundGroupSession, GroupError> {
        self.member
            .verify(
                SENDER_KEY_DOMAIN,
                &sender_key_bytes(&self.group, &self.key_change, &self.session_key),
                &self.signature,
            )
            .map_err(|_| GroupError::BadSignature)?;
        let key = SessionKey::from_bytes(&self.session_key)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        Ok(InboundGroupSession::new(&key, SessionConfig::version_1()))
    }
}

impl SenderKey {
    /// The encoding a bundle seals.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GroupError> {
        Ok(codec::encode_limited(self, MAX_SENDER_KEY_BYTES as u64)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        Ok(codec::decode_limited(bytes, MAX_SENDER_KEY_BYTES as u64)?)
    }
}

/// One member's sender key for the other members: the encoded [`SenderKey`] sealed once
/// under a fresh 32-byte **bundle key** (ChaCha20-Poly1305, zero nonce — the key is used
/// once —, the group id and the member's account key as associated data), and the bundle
/// key in one Olm message per recipient, over the pairwise session between the two, named
/// by the first 8 bytes of the recipient's account key. The boxes of a large group take
/// several bundles, each in a group envelope of its own and each carrying the sealed key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeys {
    pub group: GroupId,
    pub member: AccountKey,
    pub sealed: Vec<u8>,
    pub boxes: Vec<([u8; 8], Ciphertext)>,
}

impl SenderKeys {
    /// Seal `key` under a fresh bundle key: the bundle key (to encrypt for each recipient)
    /// and the sealed key (for [`SenderKeys::bundles`]).
    pub fn seal(
        key: &SenderKey,
        rng: &mut impl rand::RngCore,
    ) -> Result<(Zeroizing<[u8; 32]>, Vec<u8>), GroupError> {
        let mut bundle_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bundle_key.as_mut());
        let plain = Zeroizing::new(key.to_bytes()?);
        let sealed = cipher(&bundle_key)
            .encrypt(
                &Nonce::default(),
                AeadPayload {
                    msg: &plain,
                    aad: &bundle_aad(&key.group, &key.member),
                },
            )
            .map_err(|_| GroupError::Invalid("the sender key does not seal"))?;
        Ok((bundle_key, sealed))
    }

    /// `boxes` (each the bundle key for the member whose account key it names) in as few
    /// bundles as fit a group envelope each, every one with `sealed`.
    pub fn bundles(
        group: GroupId,
        member: AccountKey,
        sealed: Vec<u8>,
        boxes: Vec<(AccountKey, Ciphertext)>,
    ) -> Vec<SenderKeys> {
        // What a bundle may spend on boxes: the payload less the sealed key and framing.
        let budget = MAX_PAYLOAD_BYTES.saturating_sub(sealed.len() + 256);
        let mut out: Vec<SenderKeys> = Vec::new();
        let mut used = usize::MAX;
        for (k, c) in boxes {
            let size = 8 + 16 + c.body.len();
            if used.saturating_add(size) > budget
                || out.last().is_some_and(|b| b.boxes.len() >= MAX_BOXES)
            {
                out.push(SenderKeys {
                    group,
                    member,
                    sealed: sealed.clone(),
                    boxes: Vec::new(),
                });
                used = 0;
            }
            used += size;
            if let Some(last) = out.last_mut() {
                last.boxes.push((tag(&k), c));
            }
        }
        out
    }

    /// Where the bundles of a sender key go (docs/protocol.md §14.4): all at the group's
    /// dead drop (`None`) when they fit one bundle of at most `shared_bytes`, which every
    /// member fetches; otherwise one bundle (or more) per key dead drop (`Some(bucket)`),
    /// each with the boxes of the members in that bucket under `secret`, which only they
    /// fetch.
    pub fn placed(
        secret: &GroupSecret,
        group: GroupId,
        member: AccountKey,
        sealed: Vec<u8>,
        boxes: Vec<(AccountKey, Ciphertext)>,
        shared_bytes: usize,
    ) -> Vec<(Option<u8>, SenderKeys)> {
        let bytes = sealed.len()
            + boxes
                .iter()
                .map(|(_, c)| 8 + 16 + c.body.len())
                .sum::<usize>();
        if bytes <= shared_bytes {
            return Self::bundles(group, member, sealed, boxes)
                .into_iter()
                .map(|b| (None, b))
                .collect();
        }
        let mut buckets: BTreeMap<u8, Vec<(AccountKey, Ciphertext)>> = BTreeMap::new();
        for (k, c) in boxes {
            buckets
                .entry(secret.key_bucket(&k))
                .or_default()
                .push((k, c));
        }
        buckets
            .into_iter()
            .flat_map(|(bucket, boxes)| {
                Self::bundles(group, member, sealed.clone(), boxes)
                    .into_iter()
                    .map(move |b| (Some(bucket), b))
            })
            .collect()
    }

    /// The Olm messages that name `me` (normally one; a clash of 8-byte prefixes, more).
    pub fn boxes_for<'a>(&'a self, me: &AccountKey) -> impl Iterator<Item = &'a Ciphertext> {
        let t = tag(me);
        self.boxes
            .iter()
            .filter(move |(k, c)| *k == t && c.body.len() <= MAX_BOX_BYTES)
            .map(|(_, c)| c)
    }

    /// The sender key, with the bundle key an Olm message for this node held.
    pub fn open(&self, bundle_key: &[u8]) -> Result<SenderKey, GroupError> {
        let bundle_key: [u8; 32] = bundle_key
            .try_into()
            .map_err(|_| GroupError::Invalid("a bundle key is 32 bytes"))?;
        let bundle_key = Zeroizing::new(bundle_key);
        let plain = Zeroizing::new(
            cipher(&bundle_key)
                .decrypt(
                    &Nonce::default(),
                    AeadPayload {
                        msg: &self.sealed,
                        aad: &bundle_aad(&self.group, &self.member),
                    },
                )
                .map_err(|_| GroupError::Unopenable)?,
        );
        SenderKey::from_bytes(&plain)
    }

    /// Within bounds: at most [`MAX_BOXES`] boxes and a sealed key of a sender key's size.
    pub fn check(&self) -> Result<(), GroupError> {
        if self.boxes.len() > MAX_BOXES || self.sealed.len() > MAX_SENDER_KEY_BYTES + 16 {
            return Err(GroupError::Invalid("a malformed sender-key bundle"));
        }
        Ok(())
    }
}

fn cipher(key: &Zeroizing<[u8; 32]>) -> ChaCha20Poly1305 {
    let mut k = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, key.as_ref()).expand(BUNDLE_INFO, k.as_mut());
    ChaCha20Poly1305::new(Key::from_slice(k.as_ref()))
}

fn bundle_aad(group: &GroupId, member: &AccountKey) -> Vec<u8> {
    let mut a = group.0.to_vec();
    a.extend_from_slice(&member.0);
    a
}

/// A member's Olm keys as it announces them, signed by its account key, after its card's
/// fallback key was replaced: members who start a session with it later use the newest
/// (by `at_ms`), a key it still holds. The identity key never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberKeys {
    pub group: GroupId,
    pub member: AccountKey,
    pub olm: OlmKeys,
    pub at_ms: u64,
    pub signature: Vec<u8>,
}

impl MemberKeys {
    pub fn new(identity: &Identity, group: GroupId, olm: OlmKeys, at_ms: u64) -> Self {
        let member = identity.public();
        let signature = identity
            .sign(
                MEMBER_KEYS_DOMAIN,
                &member_keys_bytes(&group, &member, &olm, at_ms),
            )
            .to_vec();
        MemberKeys {
            group,
            member,
            olm,
            at_ms,
            signature,
        }
    }

    /// Does the member's signature hold?
    pub fn verify(&self) -> Result<(), GroupError> {
        self.member
            .verify(
                MEMBER_KEYS_DOMAIN,
                &member_keys_bytes(&self.group, &self.member, &self.olm, self.at_ms),
                &self.signature,
            )
            .map_err(|_| GroupError::BadSignature)
    }
}

fn member_keys_bytes(group: &GroupId, member: &AccountKey, olm: &OlmKeys, at_ms: u64) -> Vec<u8> {
    let mut m = group.0.to_vec();
    m.extend_from_slice(&member.0);
    m.extend_from_slice(&olm.identity);
    m.extend_from_slice(&olm.fallback);
    m.extend_from_slice(&at_ms.to_be_bytes());
    m
}

fn sender_key_bytes(group: &GroupId, key_change: &[u8; 32], session_key: &[u8]) -> Vec<u8> {
    let mut m = group.0.to_vec();
    m.extend_from_slice(key_change);
    m.extend_from_slice(session_key);
    m
}

/// A group message: content encrypted in its sender's Megolm session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub group: GroupId,
    pub sender: AccountKey,
    pub session_id: String,
    pub megolm: Vec<u8>,
}

impl Sent {
    /// Encrypt `plaintext` in `session`.
    pub fn encrypt(
        group: GroupId,
        sender: AccountKey,
        session: &mut GroupSession,
        plaintext: &[u8],
    ) -> Self {
        Sent {
            group,
            sender,
            session_id: session.session_id(),
            megolm: session.encrypt(plaintext).to_bytes(),
        }
    }

    /// Decrypt with the sender's inbound session: the plaintext and the message index.
    pub fn decrypt(&self, session: &mut InboundGroupSession) -> Result<(Vec<u8>, u32), GroupError> {
        if session.session_id() != self.session_id {
            return Err(GroupError::Invalid("not this session's message"));
        }
        let message = MegolmMessage::from_bytes(&self.megolm)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        let d = session
            .decrypt(&message)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        Ok((d.plaintext, d.message_index))
    }
}

/// A new Megolm session for this member's messages.
pub fn new_session() -> GroupSession {
    GroupSession::new(SessionConfig::version_1())
}

/// A session pickled under `key`, for the store.
pub fn pickle_session(session: &GroupSession, key: &[u8; 32]) -> String {
    session.pickle().encrypt(key)
}

pub fn unpickle_session(pickle: &str, key: &[u8; 32]) -> Result<GroupSession, GroupError> {
    GroupSessionPickle::from_encrypted(pickle, key)
        .map(GroupSession::from_pickle)
        .map_err(|e| GroupError::Megolm(e.to_string()))
}

/// A member's session pickled under `key`, for the store.
pub fn pickle_inbound(session: &InboundGroupSession, key: &[u8; 32]) -> String {
    session.pickle().encrypt(key)
}

pub fn unpickle_inbound(pickle: &str, key: &[u8; 32]) -> Result<InboundGroupSession, GroupError> {
    InboundGroupSessionPickle::from_encrypted(pickle, key)
        .map(InboundGroupSession::from_pickle)
        .map_err(|e| GroupError::Megolm(e.to_string()))
}
