//! Sender keys: each member's Megolm session, announced signed, and the messages
//! encrypted in it (docs/protocol.md §14.4).

use super::*;

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
