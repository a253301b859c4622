//! Pairwise sessions: the Double Ratchet (vodozemac Olm) between two devices.
//!
//! A [`Device`] is the local Olm account: its identity key and fallback key are printed in
//! the contact card. A [`Pairwise`] holds the sessions with one contact. A sender with only
//! the contact's card starts an outbound session on the card's fallback key and sends pre-key
//! messages until the first reply; the receiver creates the inbound session from the first
//! pre-key message. When both sides start at once, each keeps both sessions and decrypts with
//! whichever matches, and replies on the one it used last, so the pair converges.
//!
//! Both types persist as vodozemac pickles encrypted under a 32-byte key the caller holds.

use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::Curve25519PublicKey;

/// The most sessions kept per contact; the least recently used one is dropped.
pub const MAX_SESSIONS: usize = 4;
/// The largest Olm message accepted for decryption, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a session could not encrypt, decrypt or be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("the contact's card has no usable session keys")]
    BadKeys,
    #[error("could not start a session: {0}")]
    Creation(String),
    #[error("no session with this contact could decrypt the message: {0}")]
    Decryption(String),
    #[error("the message is malformed: {0}")]
    Malformed(String),
    #[error("the stored session state is unreadable: {0}")]
    Pickle(String),
    #[error("the message is too large: limit {limit} bytes, got {got}")]
    TooLarge { limit: usize, got: usize },
}

/// The wire form of an Olm message: its type (0 = pre-key, 1 = normal) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ciphertext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ciphertext {
    pub fn is_pre_key(&self) -> bool {
        self.kind == 0
    }

    fn from_olm(msg: OlmMessage) -> Self {
        let (kind, body) = msg.to_parts();
        Ciphertext {
            kind: u8::try_from(kind).unwrap_or(u8::MAX),
            body,
        }
    }

    fn to_olm(&self) -> Result<OlmMessage, SessionError> {
        if self.body.len() > MAX_MESSAGE_BYTES {
            return Err(SessionError::TooLarge {
                limit: MAX_MESSAGE_BYTES,
                got: self.body.len(),
            });
        }
        OlmMessage::from_parts(usize::from(self.kind), &self.body)
            .map_err(|e| SessionError::Malformed(e.to_string()))
    }
}

/// The local device's Olm account. Neither `Debug` nor `Serialize`: persist it with
/// [`Device::pickle`].
pub struct Device {
    account: Account,
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

impl Device {
    /// A new device with fresh identity and fallback keys.
    pub fn new() -> Self {
        let mut account = Account::new();
        // vodozemac lists only unpublished fallback keys; sotto prints the key in its card
        // instead of uploading it, so keys are never marked published.
        account.generate_fallback_key();
        Device { account }
    }

    /// The Olm identity key, for the card.
    pub fn session_key(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// The current fallback key, for the card.
    pub fn fallback_key(&self) -> [u8; 32] {
        self.account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or_default()
    }

    /// Replace the fallback key; the previous one keeps working until the next rotation.
    pub fn rotate_fallback_key(&mut self) {
        self.account.generate_fallback_key();
    }

    /// Encrypted snapshot of the account.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.account.pickle().encrypt(key)
    }

    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self, SessionError> {
        let p = vodozemac::olm::AccountPickle::from_encrypted(pickle, key)
            .map_err(|e| SessionError::Pickle(e.to_string()))?;
        Ok(Device {
            account: Account::from_pickle(p),
        })
    }
}

/// The sessions with one contact, most recently used first.
#[derive(Default)]
pub struct Pairwise {
    sessions: Vec<Session>,
}

impl Pairwise {
    pub fn new() -> Self {
        Self::default()
    }

    /// Is there any session yet?
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Encrypt for the contact whose card carried `session_key` and `fallback_key`, starting
    /// an outbound session if there is none.
    pub fn encrypt(
        &mut self,
        device: &Device,
        session_key: &[u8; 32],
        fallback_key: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<Ciphertext, SessionError> {
        if self.sessions.is_empty() {
            let identity = Curve25519PublicKey::from_bytes(*session_key);
            let fallback = Curve25519PublicKey::from_bytes(*fallback_key);
            let session = device
                .account
                .create_outbound_session(SessionConfig::version_1(), identity, fallback)
                .map_err(|e| SessionError::Creation(e.to_string()))?;
            self.sessions.push(session);
        }
        let session = self.sessions.first_mut().ok_or(SessionError::BadKeys)?;
        let msg = session
            .encrypt(plaintext)
            .map_err(|e| SessionError::Creation(e.to_string()))?;
        Ok(Ciphertext::from_olm(msg))
    }

    /// Decrypt a message from the contact whose Olm identity key is `their_session_key`.
    /// A pre-key message for a session we do not have yet creates it (on `device`, whose
    /// state then changes too and must be persisted with this pairwise state).
    pub fn decrypt(
        &mut self,
        device: &mut Device,
        their_session_key: &[u8; 32],
        message: &Ciphertext,
    ) -> Result<Vec<u8>, SessionError> {
        let olm = message.to_olm()?;
        if let OlmMessage::PreKey(pre_key) = &olm {
            if pre_key.identity_key().to_bytes() != *their_session_key {
                return Err(SessionError::Decryption(
                    "the pre-key message names another identity key than the sender's card".into(),
                ));
            }
            let session_id = pre_key.session_id();
            if let Some(i) = self
                .sessions
                .iter()
                .position(|s| s.session_id() == session_id)
            {
                let plaintext = self.sessions[i]
                    .decrypt(&olm)
                    .map_err(|e| SessionError::Decryption(e.to_string()))?;
                self.promote(i);
                return Ok(plaintext);
            }
            let created = device
                .account
                .create_inbound_session(
                    SessionConfig::version_1(),
                    Curve25519PublicKey::from_bytes(*their_session_key),
                    pre_key,
                )
                .map_err(|e| SessionError::Decryption(e.to_string()))?;
            self.sessions.insert(0, created.session);
            self.sessions.truncate(MAX_SESSIONS);
            return Ok(created.plaintext);
        }
        let mut last_error = String::from("no session");
        for i in 0..self.sessions.len() {
            match self.sessions[i].decrypt(&olm) {
                Ok(plaintext) => {
                    self.promote(i);
                    return Ok(plaintext);
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(SessionError::Decryption(last_error))
    }

    fn promote(&mut self, i: usize) {
        if i > 0 {
            let s = self.sessions.remove(i);
            self.sessions.insert(0, s);
        }
    }

    /// Will the next message be a pre-key message (no reply seen on the current session)?
    pub fn next_is_pre_key(&self) -> bool {
        self.sessions
            .first()
            .is_none_or(|s| !s.has_received_message())
    }

    /// Encrypted snapshots of the sessions, most recent first.
    pub fn pickle(&self, key: &[u8; 32]) -> Vec<String> {
        self.sessions
            .iter()
            .map(|s| s.pickle().encrypt(key))
            .collect()
    }

    pub fn from_pickle(pickles: &[String], key: &[u8; 32]) -> Result<Self, SessionError> {
        let sessions = pickles
            .iter()
            .take(MAX_SESSIONS)
            .map(|p| {
                SessionPickle::from_encrypted(p, key)
                    .map(Session::from_pickle)
                    .map_err(|e| SessionError::Pickle(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Pairwise { sessions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    struct Side {
        device: Device,
        pairwise: Pairwise,
    }

    fn side() -> Side {
        Side {
            device: Device::new(),
            pairwise: Pairwise::new(),
        }
    }

    fn send(from: &mut Side, to: &mut Side, text: &str) -> Result<String, SessionError> {
        let ct = from.pairwise.encrypt(
            &from.device,
            &to.device.session_key(),
            &to.device.fallback_key(),
            text.as_bytes(),
        )?;
        let sk = from.device.session_key();
        let pt = to.pairwise.decrypt(&mut to.device, &sk, &ct)?;
        Ok(String::from_utf8(pt).unwrap_or_default())
    }

    #[test]
    fn alice_and_bob_talk_both_ways() {
        let (mut alice, mut bob) = (side(), side());
        assert!(alice.pairwise.next_is_pre_key());
        assert_eq!(send(&mut alice, &mut bob, "hi bob").unwrap(), "hi bob");
        assert_eq!(send(&mut alice, &mut bob, "again").unwrap(), "again");
        assert_eq!(send(&mut bob, &mut alice, "hi alice").unwrap(), "hi alice");
        assert!(!alice.pairwise.next_is_pre_key());
        assert_eq!(
            send(&mut alice, &mut bob, "now normal").unwrap(),
            "now normal"
        );
    }

    #[test]
    fn simultaneous_start_converges() {
        let (mut alice, mut bob) = (side(), side());
        let a1 = alice
            .pairwise
            .encrypt(
                &alice.device,
                &bob.device.session_key(),
                &bob.device.fallback_key(),
                b"a1",
            )
            .unwrap();
        let b1 = bob
            .pairwise
            .encrypt(
                &bob.device,
                &alice.device.session_key(),
                &alice.device.fallback_key(),
                b"b1",
            )
            .unwrap();
        let (ak, bk) = (alice.device.session_key(), bob.device.session_key());
        assert_eq!(
            bob.pairwise.decrypt(&mut bob.device, &ak, &a1).unwrap(),
            b"a1"
        );
        assert_eq!(
            alice.pairwise.decrypt(&mut alice.device, &bk, &b1).unwrap(),
            b"b1"
        );
        for i in 0..5 {
            assert_eq!(
                send(&mut alice, &mut bob, &format!("a{i}")).unwrap(),
                format!("a{i}")
            );
            assert_eq!(
                send(&mut bob, &mut alice, &format!("b{i}")).unwrap(),
                format!("b{i}")
            );
        }
    }

    #[test]
    fn sessions_survive_pickling() {
        let (mut alice, mut bob) = (side(), side());
        send(&mut alice, &mut bob, "one").unwrap();
        send(&mut bob, &mut alice, "two").unwrap();
        let mut alice = Side {
            device: Device::from_pickle(&alice.device.pickle(&KEY), &KEY).unwrap(),
            pairwise: Pairwise::from_pickle(&alice.pairwise.pickle(&KEY), &KEY).unwrap(),
        };
        let mut bob = Side {
            device: Device::from_pickle(&bob.device.pickle(&KEY), &KEY).unwrap(),
            pairwise: Pairwise::from_pickle(&bob.pairwise.pickle(&KEY), &KEY).unwrap(),
        };
        assert_eq!(send(&mut alice, &mut bob, "three").unwrap(), "three");
        assert_eq!(send(&mut bob, &mut alice, "four").unwrap(), "four");
        assert!(Device::from_pickle(&alice.device.pickle(&KEY), &[0; 32]).is_err());
    }

    #[test]
    fn replay_is_refused_and_session_stays_usable() {
        let (mut alice, mut bob) = (side(), side());
        send(&mut alice, &mut bob, "one").unwrap();
        send(&mut bob, &mut alice, "two").unwrap();
        let ct = alice
            .pairwise
            .encrypt(&alice.device, &[0; 32], &[0; 32], b"three")
            .unwrap();
        let ak = alice.device.session_key();
        assert!(bob.pairwise.decrypt(&mut bob.device, &ak, &ct).is_ok());
        assert!(bob.pairwise.decrypt(&mut bob.device, &ak, &ct).is_err());
        assert_eq!(send(&mut alice, &mut bob, "four").unwrap(), "four");
    }

    #[test]
    fn skipped_message_keys_are_bounded_and_the_session_stays_usable() {
        let (mut alice, mut bob) = (side(), side());
        send(&mut alice, &mut bob, "first").unwrap();
        send(&mut bob, &mut alice, "reply").unwrap();
        let ak = alice.device.session_key();
        let sent: Vec<Ciphertext> = (0..60)
            .map(|i| {
                alice
                    .pairwise
                    .encrypt(
                        &alice.device,
                        &[0; 32],
                        &[0; 32],
                        format!("m{i}").as_bytes(),
                    )
                    .unwrap()
            })
            .collect();
        // The last one first: bob skips 59 message keys, more than the ratchet keeps.
        assert_eq!(
            bob.pairwise
                .decrypt(&mut bob.device, &ak, &sent[59])
                .unwrap(),
            b"m59"
        );
        let opened: Vec<bool> = sent[..59]
            .iter()
            .map(|ct| bob.pairwise.decrypt(&mut bob.device, &ak, ct).is_ok())
            .collect();
        let kept = opened.iter().filter(|ok| **ok).count();
        assert!(
            kept > 0 && kept < 59,
            "only the newest skipped keys are kept: {kept} of 59 opened"
        );
        assert!(!opened[0], "the oldest skipped key was dropped");
        assert!(opened[58], "the newest skipped key was kept");
        // Nothing was reset: both directions still work.
        assert_eq!(send(&mut alice, &mut bob, "after").unwrap(), "after");
        assert_eq!(send(&mut bob, &mut alice, "back").unwrap(), "back");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut bob = side();
        let ct = Ciphertext {
            kind: 1,
            body: vec![1, 2, 3],
        };
        assert!(bob
            .pairwise
            .decrypt(&mut bob.device, &[1; 32], &ct)
            .is_err());
        let ct = Ciphertext {
            kind: 7,
            body: vec![],
        };
        assert!(bob
            .pairwise
            .decrypt(&mut bob.device, &[1; 32], &ct)
            .is_err());
    }
}
