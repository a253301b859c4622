//! Typed views of the objects the control API returns (docs/api.md, "Objects" and
//! "Methods").
//!
//! Only the human output reads them: `--json` passes the daemon's JSON through untouched,
//! so fields the daemon adds later reach scripts without a change here. Unknown fields are
//! ignored; a missing or mistyped field is an error that names the method.

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The result of `account.get` and `account.create`.
#[derive(Debug, Deserialize)]
pub struct Account {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub card: String,
}

/// The result of `node.status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: Vec<String>,
    pub outbox: u64,
    pub account: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// A Contact object.
#[derive(Debug, Deserialize)]
pub struct Contact {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub request: bool,
}

/// The result of `contact.verify`.
#[derive(Debug, Deserialize)]
pub struct Verification {
    pub contact: String,
    pub safety_number: String,
    pub fingerprint: String,
    pub own_fingerprint: String,
}

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// A Message object.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub id: String,
    pub contact: String,
    pub direction: Direction,
    pub from: String,
    pub text: String,
    pub sent_at: Option<i64>,
    #[serde(default)]
    pub received_at: Option<i64>,
    pub state: String,
    /// The group's name, for a group message.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    #[serde(default)]
    pub edited_at: Option<i64>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub notice: bool,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// A message's file (`attachment.get`, and in messages).
#[derive(Debug, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub mime: String,
    #[serde(default)]
    pub kind: String,
    pub size: u64,
    #[serde(default)]
    pub received: u64,
    pub state: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A reaction to a message.
#[derive(Debug, Deserialize)]
pub struct Reaction {
    pub from: String,
    pub emoji: String,
}

/// `chat.read`
#[derive(Debug, Deserialize)]
pub struct Read {
    pub chat: String,
    pub marked: u64,
    pub receipt_sent: bool,
}

/// `chat.disappearing`
#[derive(Debug, Deserialize)]
pub struct Timer {
    pub chat: String,
    pub seconds: Option<u64>,
}

/// A Group object (`group.list`, and the result of every `group.*` change).
#[derive(Debug, Deserialize)]
pub struct Group {
    pub name: String,
    pub id: String,
    pub status: String,
    pub role: String,
    pub member_count: u64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
}

/// A member in `group.info`.
#[derive(Debug, Deserialize)]
pub struct GroupMember {
    pub name: String,
    pub address: String,
    pub admin: bool,
}

/// The result of `group.info`.
#[derive(Debug, Deserialize)]
pub struct GroupInfo {
    #[serde(flatten)]
    pub group: Group,
    pub members: Vec<GroupMember>,
    #[serde(default)]
    pub created_ms: Option<i64>,
    #[serde(default)]
    pub key_stale: bool,
}

/// An Event object: the `params` of an `event` notification. (Its `cursor` is followed
/// by [`crate::events::Follow`], which reads it from the JSON.)
#[derive(Debug, Deserialize)]
pub struct Event {
    pub kind: String,
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub contact: Option<Contact>,
    #[serde(default)]
    pub group: Option<Group>,
}

/// Read `value`, the answer to `method`, as a `T`.
pub fn parse<T: DeserializeOwned>(value: &Value, method: &str) -> anyhow::Result<T> {
    T::deserialize(value).with_context(|| format!("unexpected answer from the daemon to {method}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_documented_message_and_ignores_new_fields() -> anyhow::Result<()> {
        let value = json!({"id": "00112233445566778899aabbccddeeff", "contact": "bob",
            "direction": "out", "from": "me", "text": "hi", "sent_at": 1764400000000_i64,
            "received_at": null, "state": "queued", "future_field": [1]});
        let message: Message = parse(&value, "message.send")?;
        assert_eq!(message.direction, Direction::Out);
        assert_eq!(message.received_at, None);
        Ok(())
    }

    #[test]
    fn a_missing_field_names_the_method() {
        let err = parse::<Account>(&json!({"name": "alice"}), "account.get").err();
        assert!(err.is_some_and(|e| format!("{e:#}").contains("account.get")));
    }
}
