//! Events for clients: stored with a cursor so that a client that reconnects can ask for
//! what it missed, and broadcast live over a bounded channel.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::{Batch, Store, StoreError, Tree};

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

    /// Add an event to `batch`; publish it with [`Events::publish`] once the batch is
    /// committed.
    pub fn stage(
        &self,
        batch: &mut Batch,
        kind: &'static str,
        key: &str,
        value: Value,
    ) -> Result<Value, StoreError> {
        let cursor = self.store.next_id()?;
        let mut payload = serde_json::Map::new();
        payload.insert(key.to_owned(), value);
        let event = Event {
            cursor,
            kind,
            payload,
        }
        .to_value();
        batch.put_raw(
            Tree::Events,
            cursor.to_be_bytes().to_vec(),
            serde_json::to_vec(&event).unwrap_or_default(),
        );
        Ok(event)
    }

    pub fn publish(&self, events: Vec<Value>) {
        for e in events {
            let _ = self.live.send(e);
        }
        if let Err(e) = self.store.prune_events() {
            tracing::warn!("cannot prune old events: {e}");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.live.subscribe()
    }

    /// Stored events after `since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.store
            .range_after(Tree::Events, &since.to_be_bytes(), limit)?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    what: "event",
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// The newest cursor, or 0.
    pub fn latest(&self) -> Result<u64, StoreError> {
        Ok(self
            .store
            .last_key(Tree::Events)?
            .and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }
}

/// The cursor of an event value.
pub fn cursor_of(event: &Value) -> u64 {
    event.get("cursor").and_then(Value::as_u64).unwrap_or(0)
}
