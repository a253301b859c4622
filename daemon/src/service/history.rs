//! The conversation history: listing it, and moving an outgoing message's state forward.

use std::collections::HashMap;

use serde_json::Value;

use super::{MessageError, MessageView, Service};
use crate::store::{self, Batch, Direction, Seq, State, StoreError};

/// When a message was written, by the sender's clock, but never later than it arrived: a
/// sender's clock cannot move a message down the conversation.
pub(super) fn written_at(sent_at: u64, received_at: Option<u64>) -> u64 {
    received_at.map_or(sent_at, |r| sent_at.min(r))
}

/// Views in the order written (arrival order breaks ties: a message fetched from a mailbox
/// can arrive after a later one that came directly), the newest `limit` of them.
pub(super) fn in_order(mut out: Vec<(u64, MessageView)>, limit: Option<usize>) -> Vec<MessageView> {
    out.sort_by_key(|(when, _)| *when);
    let mut out: Vec<MessageView> = out.into_iter().map(|(_, v)| v).collect();
    if let Some(limit) = limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    out
}

/// A direction as the API names it.
pub(super) fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

/// A message state as the API names it.
pub(super) fn state_name(s: State) -> &'static str {
    match s {
        State::Queued => "queued",
        State::OnHosts => "on_hosts",
        State::Delivered => "delivered",
        State::Received => "received",
    }
}

impl Service {
    pub(super) fn view_message(&self, m: &store::Message, contact_name: &str) -> MessageView {
        MessageView {
            id: m.id.to_string(),
            contact: contact_name.to_owned(),
            group: None,
            direction: direction_name(m.direction),
            from: match m.direction {
                Direction::In => contact_name.to_owned(),
                Direction::Out => "me".to_owned(),
            },
            text: m.text.clone(),
            sent_at: m.sent_at,
            received_at: m.received_at,
            state: state_name(m.state),
            reply_to: None,
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
            expires_at: None,
            read_at: None,
            notice: false,
            attachments: Vec::new(),
        }
    }

    /// The name the contact `key` goes by (its address if it is gone).
    fn contact_name(
        &self,
        key: &sotto_protocol::identity::AccountKey,
    ) -> Result<String, StoreError> {
        Ok(self
            .inner
            .store
            .contact(key)?
            .map(|c| c.name)
            .unwrap_or_else(|| key.address()))
    }

    /// Move the outgoing message `seq` forward to `state` (`OnHosts` or `Delivered`; never
    /// backward) in `batch`, and stage the event that says so. Returns the staged events, to
    /// publish after the batch is committed (hold [`crate::events::Events::order`] from
    /// here until then).
    pub fn stage_message_state(
        &self,
        batch: &mut Batch,
        seq: Seq,
        state: State,
    ) -> Result<Vec<Value>, StoreError> {
        let Some(mut m) = self.inner.store.message(seq)? else {
            return Ok(Vec::new());
        };
        if m.direction != Direction::Out || m.state.rank() >= state.rank() {
            return Ok(Vec::new());
        }
        m.state = state;
        batch.put_message(seq, &m)?;
        let name = self.contact_name(&m.contact)?;
        let kind = if state == State::Delivered {
            "message.delivered"
        } else {
            "message.on_hosts"
        };
        let mut view = self.view_message(&m, &name);
        if let Some(me) = self.own_account() {
            self.dress(&mut view, seq, &self.inner.store.extras(seq)?, None, &me)?;
        }
        Ok(vec![self
            .inner
            .events
            .stage(batch, kind, "message", &view)?])
    }

    /// `message.list`
    pub fn messages(
        &self,
        with: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<MessageView>, MessageError> {
        if let Some(group) = with.filter(|w| self.is_group(w).unwrap_or(false)) {
            return self
                .group_messages(group, limit)
                .map_err(|e| MessageError::Group(Box::new(e)));
        }
        let filter = with.map(|w| self.resolve(w)).transpose()?.map(|(k, _)| k);
        let Some(me) = self.own_account() else {
            return Ok(Vec::new());
        };
        let mut names = HashMap::new();
        let mut out = Vec::new();
        for (seq, m) in self.inner.store.messages()? {
            if filter.is_some_and(|k| k != m.contact) {
                continue;
            }
            let name = match names.get(&m.contact) {
                Some(n) => n,
                None => {
                    let n = self.contact_name(&m.contact)?;
                    names.entry(m.contact).or_insert(n)
                }
            };
            let mut view = self.view_message(&m, name);
            self.dress(&mut view, seq, &self.inner.store.extras(seq)?, None, &me)?;
            out.push((written_at(m.sent_at, m.received_at), view));
        }
        Ok(in_order(out, limit))
    }
}
