//! Events for clients: stored with a cursor so that a client that reconnects can ask for
//! what it missed, and broadcast live over a bounded channel.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::{Batch, Store, StoreError, MAX_EVENTS};

/// Live events buffered per subscriber before it is told it overflowed.
pub const LIVE_BUFFER: usize = 1024;

/// One event, as clients see it: `{"cursor", "kind", ...payload}`.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub cursor: u64,
    pub kind: &'static str,
    #[serde(flatten)]
    pub payload: serde_json::Map<String, Value>,
}

impl Event {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The event log and its live feed.
#[derive(Clone)]
pub struct Events {
    store: Store,
    live: broadcast::Sender<Value>,
    order: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Events {
    pub fn new(store: Store) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Events {
            store,
            live,
            order: Default::default(),
        }
    }

    /// Hold this from staging events until they are published, so that events are
    /// published (and committed) in cursor order and a subscriber never sees a lower cursor
    /// after a higher one. Take it after the account lock, never before.
    pub async fn order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    /// Add an event of `kind`, whose payload is `value` under `key`, to `batch`; publish it
    /// with [`Events::publish`] once the batch is committed.
    pub fn stage(
        &self,
        batch: &mut Batch,
        kind: &'static str,
        key: &str,
        value: &impl Serialize,
    ) -> Result<Value, StoreError> {
        let cursor = self.store.next_id()?;
        let mut payload = serde_json::Map::new();
        payload.insert(
            key.to_owned(),
            serde_json::to_value(value).map_err(|e| StoreError::Corrupt {
                what: "event",
                detail: e.to_string(),
            })?,
        );
        let event = Event {
            cursor,
            kind,
            payload,
        }
        .to_value();
        // A disappearing message's text is never written to sled (`store::vanishing`): its
        // events are stored without it, and published live with it.
        let mut stored = event.clone();
        if let Some(m) = stored.get_mut(key).and_then(Value::as_object_mut) {
            if m.get("expires_at").is_some_and(|e| !e.is_null()) && m.contains_key("text") {
                m.insert("text".into(), Value::String(String::new()));
            }
        }
        batch.put_event(cursor, serde_json::to_vec(&stored).unwrap_or_default());
        Ok(event)
    }

    pub fn publish(&self, events: Vec<Value>) {
        for e in events {
            let _ = self.live.send(e);
        }
        if self.store.event_count() > MAX_EVENTS {
            if let Err(e) = self.store.trim_events(MAX_EVENTS) {
                tracing::warn!("cannot prune old events: {e}");
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.live.subscribe()
    }

    /// Stored events after `since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.store
            .events_after(since, limit)?
            .into_iter()
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    what: "event",
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// The newest cursor, or 0.
    pub fn latest(&self) -> Result<u64, StoreError> {
        self.store.last_event_cursor()
    }
}

/// The cursor of an event value.
pub fn cursor_of(event: &Value) -> u64 {
    event.get("cursor").and_then(Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_events_up_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let events = Events::new(store.clone());
        let mut cursors = Vec::new();
        for i in 0..MAX_EVENTS + 10 {
            let mut batch = Batch::new();
            let e = events
                .stage(&mut batch, "message.received", "n", &i)
                .unwrap();
            store.apply(&batch).unwrap();
            cursors.push(cursor_of(&e));
            events.publish(vec![e]);
        }
        assert_eq!(store.event_count(), MAX_EVENTS);
        let oldest = events.since(0, 1).unwrap();
        assert_eq!(
            cursor_of(&oldest[0]),
            cursors[10],
            "the ten oldest were dropped"
        );
        assert_eq!(events.latest().unwrap(), *cursors.last().unwrap());
        // A reopened log knows its size.
        drop(events);
        let again = Events::new(store.clone());
        let mut batch = Batch::new();
        let e = again
            .stage(&mut batch, "message.received", "n", &0)
            .unwrap();
        store.apply(&batch).unwrap();
        again.publish(vec![e]);
        assert_eq!(store.event_count(), MAX_EVENTS);
        drop(again);
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            reopened.event_count(),
            MAX_EVENTS,
            "the count survives a reopen"
        );
        assert_eq!(
            reopened.events_after(0, usize::MAX).unwrap().len(),
            MAX_EVENTS
        );
    }
}
