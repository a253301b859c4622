//! The history (messages in and out, by sequence number), the ids of every message ever
//! received or sent (for deduplication), and the digests of envelopes already taken.

use sotto_protocol::content::MessageId;
use sotto_protocol::identity::AccountKey;

use super::schema::Tree;
use super::{be_u64, Batch, Message, Seq, Store, StoreError};

impl Store {
    pub fn message(&self, seq: Seq) -> Result<Option<Message>, StoreError> {
        self.get(Tree::Messages, &seq.key(), "message")
    }

    /// Every message, in sequence order.
    pub fn messages(&self) -> Result<Vec<(Seq, Message)>, StoreError> {
        Ok(self
            .collect::<Message>(Tree::Messages, &[], "message")?
            .into_iter()
            .filter_map(|(k, m)| Seq::from_key(&k).map(|s| (s, m)))
            .collect())
    }

    /// The sequence numbers of the messages exchanged with `key`.
    pub fn messages_with(&self, key: &AccountKey) -> Result<Vec<Seq>, StoreError> {
        let mut out = Vec::new();
        self.walk::<Message>(Tree::Messages, &[], "message", |k, m| {
            if m.contact == *key {
                out.extend(Seq::from_key(k));
            }
            true
        })?;
        Ok(out)
    }

    /// Whether the message `id` is known: `Some(Some(seq))` for one in the history,
    /// `Some(None)` for a control message remembered only for deduplication.
    pub fn message_seq(&self, id: &MessageId) -> Result<Option<Option<Seq>>, StoreError> {
        Ok(self
            .get_raw(Tree::MessageIds, &id.0)?
            .map(|v| be_u64(&v).filter(|s| *s != 0).map(Seq)))
    }

    /// Was the envelope with this digest taken before?
    pub fn is_seen(&self, digest: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.get_raw(Tree::Seen, digest)?.is_some())
    }

    /// Forget the digests of envelopes received before `before` (ms); returns how many.
    /// (A replay of one so old fails to decrypt, and its message id is still known.)
    pub fn prune_seen(&self, before: u64) -> Result<usize, StoreError> {
        let tree = self.tree(Tree::Seen);
        let mut old = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            if be_u64(&v).unwrap_or(0) < before {
                old.push(k);
            }
        }
        for k in &old {
            tree.remove(k)?;
        }
        Ok(old.len())
    }
}

impl Batch {
    pub fn put_message(&mut self, seq: Seq, message: &Message) -> Result<(), StoreError> {
        self.put(Tree::Messages, seq.key(), message)
    }

    pub fn remove_message(&mut self, seq: Seq) {
        self.remove(Tree::Messages, seq.key());
    }

    /// Remember the message id `id`: stored under `seq`, or (`None`) a control message kept
    /// only so that a copy of it is known as a duplicate.
    pub fn index_message(&mut self, id: &MessageId, seq: Option<Seq>) {
        let seq = seq.map_or(0, |s| s.0);
        self.put_raw(Tree::MessageIds, id.0, seq.to_be_bytes());
    }

    /// The envelope with this digest was taken at `now_ms`.
    pub fn mark_seen(&mut self, digest: &[u8; 32], now_ms: u64) {
        self.put_raw(Tree::Seen, digest.as_slice(), now_ms.to_be_bytes());
    }
}
