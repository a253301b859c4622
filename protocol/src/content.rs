//! What a message says: its id, when it was written, and its body.
//!
//! [`Body`] is an enum: new kinds are added as new variants at its end (an older node
//! refuses one it does not know as invalid content), and the version byte in front of every
//! encoding lets a newer format be refused clearly. Text, replies, reactions, edits,
//! deletes, read receipts, the disappearing-message timer and attachments
//! ([`Body::Media`]) exist (docs/protocol.md §4, §15).

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// The content format this code writes and the newest it reads.
pub const VERSION: u8 = 1;
/// The longest text, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// The largest encoded content accepted.
/// The largest encoded content accepted (text, and what an attachment's reference adds).
pub const MAX_BYTES: usize = MAX_TEXT_BYTES + 4 * 1024;
/// The longest attachment file name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest MIME type.
pub const MAX_MIME_BYTES: usize = 127;

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
    /// Text that replies to a message, or disappears, or both. (Plain text goes as
    /// [`Body::Text`], which every version reads.)
    Post(Post),
    /// The sender's reaction to a message: one emoji, or empty to take it back. One per
    /// person per message: a new one replaces the last.
    React {
        to: MessageId,
        emoji: String,
    },
    /// The sender's new text for one of its own messages, within [`EDIT_WINDOW_MS`] of it.
    Edit {
        to: MessageId,
        text: String,
    },
    /// The sender deleted one of its own messages for everyone, within
    /// [`DELETE_WINDOW_MS`] of it.
    Delete {
        to: MessageId,
    },
    /// The sender has read these messages (at most [`MAX_RECEIPT_IDS`]).
    Read(Vec<MessageId>),
    /// The sender set the chat's disappearing-message timer, in ms (`None`: off).
    Timer(Option<u64>),
    /// A file, with a caption (which may be empty) that may reply or disappear.
    Media(Media),
}

/// A message with a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// The caption, what it answers, and the chat's timer.
    pub post: Post,
    pub attachment: Attachment,
}

/// What kind of file an attachment is, as its sender meant it to be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachmentKind {
    File,
    /// A voice note.
    Voice,
    /// A sticker (webp or png).
    Sticker,
    /// An animation, played looped.
    Gif,
}

impl AttachmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::File => "file",
            AttachmentKind::Voice => "voice",
            AttachmentKind::Sticker => "sticker",
            AttachmentKind::Gif => "gif",
        }
    }
}

/// A file a message carries: how to fetch it, check it and open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The blob's root, key and size (docs/protocol.md §15).
    pub blob: crate::blob::BlobRef,
    /// The file's name, without any directory.
    pub name: String,
    /// The MIME type, detected from the bytes by the sender.
    pub mime: String,
    pub kind: AttachmentKind,
    /// The sender's node, which offers the blob's chunks while it is online (`None`: a
    /// sender that does not name its node).
    pub source: Option<Source>,
}

/// A node that offers a blob: its PeerId (binary form) and addresses (at most 8 of at most
/// 256 bytes, as in a card).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub peer_id: Vec<u8>,
    pub addrs: Vec<String>,
}

/// Is `name` a file name an attachment may carry: not empty, within
/// [`MAX_NAME_BYTES`], no directory separator, no control character, not `.` or `..`.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Text with what goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub text: String,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
    /// The chat's disappearing timer when it was written (ms): both sides erase the message
    /// this long after it was written.
    pub expires_in_ms: Option<u64>,
}

/// How long after a message its sender may edit it (by the sender's clock; the receiver
/// checks the edit's time against the message's).
pub const EDIT_WINDOW_MS: u64 = 15 * 60 * 1000;
/// How long after a message its sender may delete it for everyone.
pub const DELETE_WINDOW_MS: u64 = 48 * 3600 * 1000;
/// The shortest disappearing timer: one second (the CLI offers 24 h, 7 d and 90 d; the API
/// takes any length in bounds, which is how tests use short timers).
pub const MIN_TIMER_MS: u64 = 1000;
/// The longest disappearing timer (a year).
pub const MAX_TIMER_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest reaction, in bytes (an emoji with modifiers and joiners).
pub const MAX_REACTION_BYTES: usize = 64;

/// Is `emoji` a reaction: empty (taking one back) or exactly one emoji, skin tones and
/// joined sequences included.
pub fn is_reaction(emoji: &str) -> bool {
    emoji.is_empty() || (emoji.len() <= MAX_REACTION_BYTES && emojis::get(emoji).is_some())
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

/// The most message ids in one receipt or read receipt.
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
        self.post().map(|(text, _, _)| text)
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
            Body::Receipt(ids) | Body::Read(ids) if ids.len() > MAX_RECEIPT_IDS => {
                Err(ContentError::Invalid("a receipt names too many messages"))
            }
            Body::Post(p) if p.text.len() > MAX_TEXT_BYTES => Err(ContentError::TextTooLong {
                limit: MAX_TEXT_BYTES,
                got: p.text.len(),
            }),
            Body::Post(Post {
                expires_in_ms: Some(t),
                ..
            })
            | Body::Timer(Some(t))
                if !(MIN_TIMER_MS..=MAX_TIMER_MS).contains(t) =>
            {
                Err(ContentError::Invalid(
                    "a disappearing timer out of its bounds",
                ))
            }
            Body::Edit { text, .. } if text.is_empty() || text.len() > MAX_TEXT_BYTES => {
                Err(ContentError::Invalid("an edit's text is empty or too long"))
            }
            Body::React { emoji, .. } if !is_reaction(emoji) => {
                Err(ContentError::Invalid("a reaction that is not one emoji"))
            }
            Body::Media(m) if m.post.text.len() > MAX_TEXT_BYTES => {
                Err(ContentError::TextTooLong {
                    limit: MAX_TEXT_BYTES,
                    got: m.post.text.len(),
                })
            }
            Body::Media(m)
                if !is_file_name(&m.attachment.name)
                    || m.attachment.mime.is_empty()
                    || m.attachment.mime.len() > MAX_MIME_BYTES
                    || m.attachment.blob.chunks().is_err()
                    || m.attachment.source.as_ref().is_some_and(|s| {
                        s.peer_id.len() > 128
                            || s.addrs.len() > crate::card::MAX_ADDRS
                            || s.addrs.iter().any(|a| a.len() > crate::card::MAX_ADDR_LEN)
                    }) =>
            {
                Err(ContentError::Invalid("an attachment out of its bounds"))
            }
            Body::Media(Media {
                post:
                    Post {
                        expires_in_ms: Some(t),
                        ..
                    },
                ..
            }) if !(MIN_TIMER_MS..=MAX_TIMER_MS).contains(t) => Err(ContentError::Invalid(
                "a disappearing timer out of its bounds",
            )),
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

    /// Is this a message the node sends and handles by itself (presence, receipts, and
    /// what changes another message: reactions, edits, deletes), never shown to the user as
    /// a message of its own?
    pub fn is_control(&self) -> bool {
        !matches!(self.body, Body::Text(_) | Body::Post(_) | Body::Media(_))
    }

    /// The file of a message that carries one.
    pub fn attachment(&self) -> Option<&Attachment> {
        match &self.body {
            Body::Media(m) => Some(&m.attachment),
            _ => None,
        }
    }

    /// The text, the message it replies to and its disappearing timer, for a message that
    /// is one (text or post).
    pub fn post(&self) -> Option<(&str, Option<MessageId>, Option<u64>)> {
        match &self.body {
            Body::Text(t) => Some((t, None, None)),
            Body::Post(p) => Some((&p.text, p.reply_to, p.expires_in_ms)),
            Body::Media(m) => Some((&m.post.text, m.post.reply_to, m.post.expires_in_ms)),
            _ => None,
        }
    }

    /// A message: plain [`Body::Text`] when it neither replies nor disappears (every
    /// version reads it), else a [`Body::Post`]. Refuses text over [`MAX_TEXT_BYTES`].
    pub fn message(
        id: MessageId,
        sent_at: u64,
        text: impl Into<String>,
        reply_to: Option<MessageId>,
        expires_in_ms: Option<u64>,
    ) -> Result<Self, ContentError> {
        let mut content = Content::text(id, sent_at, text)?;
        if reply_to.is_some() || expires_in_ms.is_some() {
            let Body::Text(text) = content.body else {
                return Err(ContentError::Empty);
            };
            content.body = Body::Post(Post {
                text,
                reply_to,
                expires_in_ms,
            });
        }
        Ok(content)
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

    #[test]
    fn media_round_trips_and_is_bounded() {
        let media = |name: &str, size: u64, addrs: usize| Content {
            id: MessageId([4; 16]),
            sent_at: 9,
            body: Body::Media(Media {
                post: Post {
                    text: "look".into(),
                    reply_to: None,
                    expires_in_ms: None,
                },
                attachment: Attachment {
                    blob: crate::blob::BlobRef {
                        root: [1; 32],
                        key: [2; 32],
                        size,
                    },
                    name: name.into(),
                    mime: "image/png".into(),
                    kind: AttachmentKind::File,
                    source: Some(Source {
                        peer_id: vec![0; 38],
                        addrs: vec!["/ip4/127.0.0.1/tcp/1".into(); addrs],
                    }),
                },
            }),
        };
        let good = media("cat.png", 1 << 20, 8);
        assert!(!good.is_control());
        assert_eq!(good.as_text(), Some("look"));
        let back = Content::from_bytes(&good.to_bytes().unwrap()).unwrap();
        assert_eq!(back, good);
        assert_eq!(back.attachment().unwrap().name, "cat.png");
        for bad in [
            media("../etc/passwd", 1, 1),
            media("", 1, 1),
            media("a\nb", 1, 1),
            media(&"x".repeat(MAX_NAME_BYTES + 1), 1, 1),
            media("big.bin", crate::blob::MAX_BLOB_BYTES + 1, 1),
            media("many.bin", 1, crate::card::MAX_ADDRS + 1),
        ] {
            let bytes = bad.to_bytes().unwrap();
            assert!(Content::from_bytes(&bytes).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn changes_round_trip_and_are_checked() {
        let to = MessageId([9; 16]);
        for body in [
            Body::React {
                to,
                emoji: "👍🏽".into(),
            },
            Body::React {
                to,
                emoji: String::new(),
            },
            Body::Edit {
                to,
                text: "new".into(),
            },
            Body::Delete { to },
            Body::Read(vec![to; 3]),
            Body::Timer(Some(86_400_000)),
            Body::Timer(None),
        ] {
            let c = Content {
                id: MessageId([1; 16]),
                sent_at: 5,
                body,
            };
            assert!(c.is_control());
            assert_eq!(Content::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        }
        for bad in [
            Body::React {
                to,
                emoji: "ok".into(),
            },
            Body::React {
                to,
                emoji: "👍👍".into(),
            },
            Body::Edit {
                to,
                text: String::new(),
            },
            Body::Read(vec![to; MAX_RECEIPT_IDS + 1]),
            Body::Timer(Some(10)),
            Body::Timer(Some(MAX_TIMER_MS + 1)),
            Body::Post(Post {
                text: "x".into(),
                reply_to: None,
                expires_in_ms: Some(0),
            }),
        ] {
            let c = Content {
                id: MessageId([1; 16]),
                sent_at: 5,
                body: bad,
            };
            assert!(
                Content::from_bytes(&c.to_bytes().unwrap()).is_err(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn plain_text_stays_text_and_the_rest_is_a_post() {
        let id = MessageId([1; 16]);
        let plain = Content::message(id, 1, "hi", None, None).unwrap();
        assert_eq!(plain, Content::text(id, 1, "hi").unwrap());
        let reply = Content::message(id, 1, "hi", Some(MessageId([2; 16])), Some(60_000)).unwrap();
        assert!(matches!(reply.body, Body::Post(_)));
        assert!(!reply.is_control());
        assert_eq!(
            reply.post(),
            Some(("hi", Some(MessageId([2; 16])), Some(60_000)))
        );
        assert_eq!(
            Content::from_bytes(&reply.to_bytes().unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn reactions_are_one_emoji() {
        for ok in ["", "👍", "👍🏽", "❤️", "👩‍👩‍👧", "🇫🇷"] {
            assert!(is_reaction(ok), "{ok:?}");
        }
        for bad in ["ok", "👍👍", "a👍", " 👍", "\u{202e}"] {
            assert!(!is_reaction(bad), "{bad:?}");
        }
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
