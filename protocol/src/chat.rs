//! One message, end to end: content → Olm ciphertext → letter → sealed, padded envelope, and
//! back. The daemon stores and moves the bytes; everything that decides whether they are
//! valid happens here.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::card::{self, Card, CardError, Hints};
use crate::content::{Content, ContentError};
use crate::deaddrop::DropKey;
use crate::envelope::{self, EnvelopeError, Letter, SealKey};
use crate::identity::{AccountKey, Identity};
use crate::session::{Device, Pairwise, SessionError};

/// Why a message could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("the sender's card is invalid: {0}")]
    Card(#[from] CardError),
    #[error("the envelope's sender does not match the card known for it")]
    SenderMismatch,
}

/// The local account: identity, seal key and Olm device. Neither `Debug` nor `Serialize`;
/// persist it through [`Snapshot`].
pub struct LocalAccount {
    pub name: String,
    pub identity: Identity,
    pub seal: SealKey,
    pub device: Device,
    /// The key of this account's intro dead drop.
    pub intro: DropKey,
}

/// The persisted form of a [`LocalAccount`]. Holds secrets: store it only where the account
/// itself may be stored, and never log it.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub identity: [u8; 32],
    pub seal: [u8; 32],
    pub intro: [u8; 32],
    /// The Olm account, pickled under the store's pickle key.
    pub device: String,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.identity.zeroize();
        self.seal.zeroize();
        self.intro.zeroize();
        self.device.zeroize();
    }
}

impl LocalAccount {
    /// A new account with fresh keys.
    pub fn generate(name: &str, rng: &mut impl rand::RngCore) -> Self {
        LocalAccount {
            name: name.to_owned(),
            identity: Identity::generate(rng),
            seal: SealKey::generate(rng),
            device: Device::new(),
            intro: DropKey::generate(rng),
        }
    }

    pub fn public(&self) -> AccountKey {
        self.identity.public()
    }

    /// A freshly signed card with the given reachability hints, issued at `now_ms`.
    pub fn card(&self, hints: Hints, now_ms: u64) -> Result<Card, CardError> {
        Card::sign(
            &self.identity,
            card::Body {
                account: self.public(),
                name: self.name.clone(),
                session_key: self.device.session_key(),
                fallback_key: self.device.fallback_key(),
                seal_key: self.seal.public(),
                intro: self.intro.public(),
                hints,
                issued_at: now_ms,
            },
        )
    }

    pub fn snapshot(&self, pickle_key: &[u8; 32]) -> Snapshot {
        Snapshot {
            name: self.name.clone(),
            identity: *self.identity.secret_bytes(),
            seal: *self.seal.secret_bytes(),
            intro: *self.intro.seed(),
            device: self.device.pickle(pickle_key),
        }
    }

    pub fn restore(snapshot: &Snapshot, pickle_key: &[u8; 32]) -> Result<Self, SessionError> {
        let identity = Zeroizing::new(snapshot.identity);
        let seal = Zeroizing::new(snapshot.seal);
        Ok(LocalAccount {
            name: snapshot.name.clone(),
            identity: Identity::from_seed(&identity),
            seal: SealKey::from_secret(&seal),
            device: Device::from_pickle(&snapshot.device, pickle_key)?,
            intro: DropKey::from_seed(&snapshot.intro),
        })
    }
}

/// Encrypt `content` for the owner of `to` and seal it. `own_card` rides along while the
/// session still sends pre-key messages, so that the recipient can answer a first message;
/// a caller may pass `None` when [`Pairwise::next_is_pre_key`] says it will not be needed.
/// `pairwise` changes and must be persisted together with the envelope.
pub fn seal_message(
    me: &LocalAccount,
    own_card: Option<&Card>,
    pairwise: &mut Pairwise,
    to: &Card,
    content: &Content,
) -> Result<Vec<u8>, ChatError> {
    let plaintext = Zeroizing::new(content.to_bytes()?);
    let body = to.body();
    let ciphertext = pairwise.encrypt(
        &me.device,
        &body.session_key,
        &body.fallback_key,
        &plaintext,
    )?;
    let letter = Letter {
        sender: me.public(),
        card: own_card
            .filter(|_| ciphertext.is_pre_key())
            .map(Card::to_bytes),
        ciphertext,
    };
    Ok(envelope::seal(
        &me.seal,
        &body.seal_key,
        &letter.to_bytes()?,
    )?)
}

/// An envelope opened with the local seal key: authenticated sender seal key and the letter.
pub struct OpenedEnvelope {
    pub sender_seal_key: [u8; 32],
    pub letter: Letter,
}

impl OpenedEnvelope {
    /// The card carried in the letter, checked against the envelope's sender, if any.
    pub fn attached_card(&self) -> Result<Option<Card>, ChatError> {
        let Some(bytes) = &self.letter.card else {
            return Ok(None);
        };
        let card = Card::from_bytes(bytes)?;
        if card.account() != self.letter.sender || card.body().seal_key != self.sender_seal_key {
            return Err(ChatError::SenderMismatch);
        }
        Ok(Some(card))
    }
}

/// Open the seal of an envelope addressed to `me`.
pub fn open_envelope(me: &LocalAccount, bytes: &[u8]) -> Result<OpenedEnvelope, ChatError> {
    let opened = envelope::open(&me.seal, bytes)?;
    let letter = Letter::from_bytes(&opened.payload)?;
    Ok(OpenedEnvelope {
        sender_seal_key: opened.sender,
        letter,
    })
}

/// Decrypt an opened envelope from the owner of `from`. `me.device` and `pairwise` change
/// and must be persisted together with the message.
pub fn open_message(
    me: &mut LocalAccount,
    pairwise: &mut Pairwise,
    from: &Card,
    opened: &OpenedEnvelope,
) -> Result<Content, ChatError> {
    let body = from.body();
    if opened.letter.sender != body.account || opened.sender_seal_key != body.seal_key {
        return Err(ChatError::SenderMismatch);
    }
    let plaintext = Zeroizing::new(pairwise.decrypt(
        &mut me.device,
        &body.session_key,
        &opened.letter.ciphertext,
    )?);
    Ok(Content::from_bytes(&plaintext)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::MessageId;
    use rand::{rngs::StdRng, SeedableRng};

    struct Person {
        account: LocalAccount,
        card: Card,
        with: Pairwise,
    }

    fn person(name: &str, seed: u64) -> Person {
        let account = LocalAccount::generate(name, &mut StdRng::seed_from_u64(seed));
        let card = account.card(Hints::default(), 1).unwrap();
        Person {
            account,
            card,
            with: Pairwise::new(),
        }
    }

    fn send(
        from: &mut Person,
        to: &mut Person,
        text: &str,
    ) -> Result<(Vec<u8>, Content), ChatError> {
        let content = Content::text(MessageId::random(&mut StdRng::seed_from_u64(0)), 5, text)?;
        let env = seal_message(
            &from.account,
            Some(&from.card),
            &mut from.with,
            &to.card,
            &content,
        )?;
        let opened = open_envelope(&to.account, &env)?;
        let got = open_message(&mut to.account, &mut to.with, &from.card, &opened)?;
        Ok((env, got))
    }

    #[test]
    fn conversation_and_card_attachment() {
        let (mut alice, mut bob) = (person("Alice", 1), person("Bob", 2));
        let content = Content::text(MessageId([1; 16]), 5, "first").unwrap();
        let env = seal_message(
            &alice.account,
            Some(&alice.card),
            &mut alice.with,
            &bob.card,
            &content,
        )
        .unwrap();
        let opened = open_envelope(&bob.account, &env).unwrap();
        assert_eq!(opened.attached_card().unwrap(), Some(alice.card.clone()));
        assert_eq!(
            open_message(&mut bob.account, &mut bob.with, &alice.card, &opened).unwrap(),
            content
        );
        send(&mut bob, &mut alice, "reply").unwrap();
        let content = Content::text(MessageId([2; 16]), 6, "third").unwrap();
        let env = seal_message(
            &alice.account,
            Some(&alice.card),
            &mut alice.with,
            &bob.card,
            &content,
        )
        .unwrap();
        let opened = open_envelope(&bob.account, &env).unwrap();
        assert_eq!(
            opened.attached_card().unwrap(),
            None,
            "no card once the session is confirmed"
        );
    }

    #[test]
    fn a_stranger_cannot_pose_as_a_contact() {
        let (mut alice, mut bob) = (person("Alice", 1), person("Bob", 2));
        let mut mallory = person("Mallory", 3);
        let content = Content::text(MessageId([1; 16]), 5, "I am Alice").unwrap();
        let env = seal_message(
            &mallory.account,
            Some(&mallory.card),
            &mut mallory.with,
            &bob.card,
            &content,
        )
        .unwrap();
        let opened = open_envelope(&bob.account, &env).unwrap();
        assert!(matches!(
            open_message(&mut bob.account, &mut bob.with, &alice.card, &opened),
            Err(ChatError::SenderMismatch)
        ));
        // Alice's own messages still work afterwards.
        send(&mut alice, &mut bob, "real").unwrap();
    }

    #[test]
    fn snapshot_restores_a_working_account() {
        let (mut alice, mut bob) = (person("Alice", 1), person("Bob", 2));
        send(&mut alice, &mut bob, "one").unwrap();
        let key = [4u8; 32];
        let snap = crate::codec::encode(&bob.account.snapshot(&key)).unwrap();
        let snap: Snapshot = crate::codec::decode(&snap).unwrap();
        bob.account = LocalAccount::restore(&snap, &key).unwrap();
        bob.with = Pairwise::from_pickle(&bob.with.pickle(&key), &key).unwrap();
        assert_eq!(
            send(&mut alice, &mut bob, "two").unwrap().1.as_text(),
            Some("two")
        );
        assert_eq!(
            send(&mut bob, &mut alice, "three").unwrap().1.as_text(),
            Some("three")
        );
    }

    #[test]
    fn wire_bytes_never_show_text_or_keys() {
        let (mut alice, mut bob) = (person("Alice", 1), person("Bob", 2));
        let (env, _) = send(&mut alice, &mut bob, "the quick brown fox").unwrap();
        let contains = |n: &[u8]| env.windows(n.len()).any(|w| w == n);
        assert!(!contains(b"quick brown"));
        assert!(!contains(&alice.account.public().0));
        assert!(!contains(&bob.account.public().0));
    }
}
