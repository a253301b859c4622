//! Sender keys: each member's Megolm session, signed and shared with each other member
//! over a pairwise Olm session, and the messages encrypted in it (docs/protocol.md §14.4).

use super::*;
use crate::session::Ciphertext;

/// The most Olm messages a [`SenderKeys`] bundle carries in one group envelope: each is
/// about 540 bytes, so that the bundle stays under [`MAX_PAYLOAD_BYTES`].
pub const BOXES_PER_BUNDLE: usize = 100;
/// The largest Olm message of a sender key (a pre-key message of an encoded [`SenderKey`]
/// is about 530 bytes).
const MAX_BOX_BYTES: usize = 1_024;

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
    /// The encoding an Olm message carries.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GroupError> {
        Ok(codec::encode_limited(self, MAX_BOX_BYTES as u64)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        Ok(codec::decode_limited(bytes, MAX_BOX_BYTES as u64)?)
    }
}

/// One member's sender key for the other members: one Olm message (of the encoded
/// [`SenderKey`]) per recipient, over the pairwise session between the two, named by the
/// first 8 bytes of the recipient's account key. A group of more than
/// [`BOXES_PER_BUNDLE`] others takes several bundles, each in a group envelope of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeys {
    pub group: GroupId,
    pub member: AccountKey,
    pub boxes: Vec<([u8; 8], Ciphertext)>,
}

impl SenderKeys {
    /// `boxes` (each for the member whose account key it names) in bundles of at most
    /// [`BOXES_PER_BUNDLE`].
    pub fn bundles(
        group: GroupId,
        member: AccountKey,
        boxes: Vec<(AccountKey, Ciphertext)>,
    ) -> Vec<SenderKeys> {
        let mut out = Vec::new();
        let mut boxes = boxes.into_iter().peekable();
        while boxes.peek().is_some() {
            out.push(SenderKeys {
                group,
                member,
                boxes: boxes
                    .by_ref()
                    .take(BOXES_PER_BUNDLE)
                    .map(|(k, c)| (tag(&k), c))
                    .collect(),
            });
        }
        out
    }

    /// The Olm messages that name `me` (normally one; a clash of 8-byte prefixes, more).
    pub fn boxes_for<'a>(&'a self, me: &AccountKey) -> impl Iterator<Item = &'a Ciphertext> {
        let t = tag(me);
        self.boxes
            .iter()
            .filter(move |(k, c)| *k == t && c.body.len() <= MAX_BOX_BYTES)
            .map(|(_, c)| c)
    }

    /// Within bounds: at most [`BOXES_PER_BUNDLE`] boxes.
    pub fn check(&self) -> Result<(), GroupError> {
        if self.boxes.len() > BOXES_PER_BUNDLE {
            return Err(GroupError::Invalid(
                "too many sender-key boxes in one bundle",
            ));
        }
        Ok(())
    }
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
