//! What a message says: its id, when it was written, and its body.
//!
//! Only text exists today; [`Body`] is an enum so that replies, reactions, edits, receipts,
//! attachments and the rest of the kinds in the design can be added as new variants, and the
//! version byte in front of every encoding lets a newer format be refused clearly.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// The content format this code writes and the newest it reads.
pub const VERSION: u8 = 1;
/// The longest text, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// The largest encoded content accepted.
pub const MAX_BYTES: usize = MAX_TEXT_BYTES + 256;

/// A random 128-bit message id; duplicates of a message carry the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn random(rng: &mut impl rand::RngCore) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        MessageId(id)
    }

    /// Parse the 32-hex-digit form printed by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        codec::parse_hex16(s).map(MessageId)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        codec::write_hex(&self.0, f)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    Text(String),
    /// How to reach the sender; sent automatically, never shown as a message.
    Presence(Presence),
    /// The sender received these messages (at most [`MAX_RECEIPT_IDS`]).
    Receipt(Vec<MessageId>),
    /// One part of an invitation to a group: the group's log, and in the last part the
    /// current secret. Sent automatically, never shown as a message.
    GroupInvite(GroupInvite),
}

/// The bytes of changes one invitation part carries at most: a part fits one message, and
/// one of [`crate::group::MAX_ADDED`] members with short names stays in the 16 KiB envelope
/// bucket (a part of 24 KiB took the 64 KiB one).
pub const MAX_INVITE_PART_BYTES: usize = 12 * 1024;

/// One part of an invitation to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvite {
    pub group: crate::group::GroupId,
    /// This part's number, from 0, of `parts`.
    pub part: u16,
    pub parts: u16,
    /// Changes of the group's log, without their rekeys.
    pub changes: Vec<crate::group::Change>,
    /// In the last part: the group's current secret and the hash of the change that made it.
    pub secret: Option<([u8; 32], [u8; 32])>,
}

impl GroupInvite {
    /// `changes` (stripped) in parts that fit one message each, the secret in the last.
    pub fn split(
        group: crate::group::GroupId,
        changes: &[crate::group::Change],
        secret: ([u8; 32], [u8; 32]),
    ) -> Vec<GroupInvite> {
        let chunks = crate::group::chunk_changes(changes, MAX_INVITE_PART_BYTES);
        let parts = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, changes)| GroupInvite {
                group,
                part: u16::try_from(i).unwrap_or(u16::MAX),
                parts,
                changes,
                secret: (i + 1 == usize::from(parts)).then_some(secret),
            })
            .collect()
    }
}

/// The most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 256;

/// What a contact needs to reach the sender: the secret of the sender's dead drops for this
/// contact, and optionally the sender's node (unless the sender is mailbox-only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The secret the contact derives the sender's dead drops from (see `deaddrop`).
    pub inbox: [u8; 32],
    /// The sender's PeerId (binary form), if it accepts direct delivery.
    pub peer_id: Option<Vec<u8>>,
    /// The sender's node's addresses, at most 8 of at most 256 bytes.
    pub addrs: Vec<String>,
}

/// One message, as its sender wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub id: MessageId,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub sent_at: u64,
    pub body: Body,
}

/// Why content could not be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    #[error("the text is too long: limit {limit} bytes, got {got}")]
    TextTooLong { limit: usize, got: usize },
    #[error("content version {got} is newer than this sotto understands (up to {known})")]
    UnsupportedVersion { got: u8, known: u8 },
    #[error("empty content")]
    Empty,
    #[error("invalid content: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl Content {
    /// A text message. Refuses text over [`MAX_TEXT_BYTES`].
    pub fn text(
        id: MessageId,
        sent_at: u64,
        text: impl Into<String>,
    ) -> Result<Self, ContentError> {
        let text = text.into();
        if text.len() > MAX_TEXT_BYTES {
            return Err(ContentError::TextTooLong {
                limit: MAX_TEXT_BYTES,
                got: text.len(),
            });
        }
        Ok(Content {
            id,
            sent_at,
            body: Body::Text(text),
        })
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.body {
            Body::Text(t) => Some(t),
            Body::Presence(_) | Body::Receipt(_) | Body::GroupInvite(_) => None,
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, ContentError> {
        let mut out = vec![VERSION];
        out.extend(codec::encode_limited(self, MAX_BYTES as u64)?);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ContentError> {
        let (version, rest) = bytes.split_first().ok_or(ContentError::Empty)?;
        if *version != VERSION {
            return Err(ContentError::UnsupportedVersion {
                got: *version,
                known: VERSION,
            });
        }
        let content: Content = codec::decode_limited(rest, MAX_BYTES as u64)?;
        match &content.body {
            Body::Text(t) if t.len() > MAX_TEXT_BYTES => Err(ContentError::TextTooLong {
                limit: MAX_TEXT_BYTES,
                got: t.len(),
            }),
            Body::Presence(p)
                if p.addrs.len() > crate::card::MAX_ADDRS
                    || p.addrs.iter().any(|a| a.len() > crate::card::MAX_ADDR_LEN)
                    || p.peer_id.as_ref().is_some_and(|id| id.len() > 128) =>
            {
                Err(ContentError::Invalid("presence hints over their limits"))
            }
            Body::Receipt(ids) if ids.len() > MAX_RECEIPT_IDS => {
                Err(ContentError::Invalid("a receipt names too many messages"))
            }
            Body::GroupInvite(i)
                if i.parts == 0
                    || i.part >= i.parts
                    || usize::from(i.parts) > crate::group::MAX_CHANGES
                    || i.changes.len() > crate::group::MAX_CHANGES =>
            {
                Err(ContentError::Invalid(
                    "an invitation part out of its bounds",
                ))
            }
            _ => Ok(content),
        }
    }

    /// Is this a message the node sends and handles by itself (presence, receipt), never
    /// shown to the user?
    pub fn is_control(&self) -> bool {
        !matches!(self.body, Body::Text(_))
    }

    /// A presence message.
    pub fn presence(id: MessageId, sent_at: u64, presence: Presence) -> Self {
        Content {
            id,
            sent_at,
            body: Body::Presence(presence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot() {
        let c = Content::text(MessageId([0xab; 16]), 1, "hi").unwrap();
        let hex: String = c
            .to_bytes()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, format!("01{}0100026869", "ab".repeat(16)));
    }

    #[test]
    fn id_parses_its_display() {
        let id = MessageId([0x0f; 16]);
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
        assert_eq!(MessageId::parse("zz"), None);
        assert_eq!(MessageId::parse(&"é".repeat(16)), None);
    }

    #[test]
    fn presence_round_trips_and_is_bounded() {
        let p = Presence {
            inbox: [3; 32],
            peer_id: Some(vec![1, 2]),
            addrs: vec!["/ip4/1.2.3.4/tcp/5".into()],
        };
        let c = Content::presence(MessageId([1; 16]), 2, p.clone());
        assert_eq!(Content::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        assert_eq!(c.as_text(), None);
        let big = Presence {
            addrs: vec!["x".into(); 9],
            ..p
        };
        let c = Content::presence(MessageId([1; 16]), 2, big);
        assert!(Content::from_bytes(&c.to_bytes().unwrap()).is_err());
    }

    #[test]
    fn limits() {
        assert!(Content::text(MessageId([0; 16]), 0, "x".repeat(MAX_TEXT_BYTES + 1)).is_err());
        assert!(matches!(
            Content::from_bytes(&[2, 0]),
            Err(ContentError::UnsupportedVersion { got: 2, known: 1 })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(id in any::<[u8; 16]>(), at in any::<u64>(), text in ".{0,200}") {
            let c = Content::text(MessageId(id), at, text).unwrap();
            prop_assert_eq!(Content::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Content::from_bytes(&bytes);
        }
    }
}
