//! Following the daemon's event stream for `sotto watch`, without I/O.
//!
//! [`Follow`] is fed the notifications read from the socket and says what to do with each:
//! show it, skip it (a duplicate by cursor, or a notification it does not know), or
//! subscribe again after `events.overflow` with `since` = the overflow cursor so that
//! nothing is missed (docs/api.md, `events.subscribe`). It also remembers the cursor to
//! resume from with `sotto watch --since` when the connection ends.

use serde_json::{json, Value};

use crate::rpc::Notification;

/// What to do with one notification.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// A new event: print it. `params` is the Event object.
    Show(&'a Value),
    /// The daemon stopped sending after an overflow: subscribe again with these params.
    Resubscribe { since: Option<u64> },
    /// Nothing to show (a duplicate, or a notification of another kind).
    Skip,
    /// An `event` notification without a cursor.
    Malformed,
}

/// The state of one `sotto watch`.
#[derive(Debug, Default)]
pub struct Follow {
    /// The highest cursor seen in an event or overflow notice, or given with `--since`.
    seen: Option<u64>,
    /// The cursor `events.subscribe` answered with (the newest stored event then).
    subscribed_at: Option<u64>,
}

impl Follow {
    /// Start following after `since` (all stored events after it are replayed), or from
    /// now on when `None`.
    pub fn new(since: Option<u64>) -> Follow {
        Follow {
            seen: since,
            subscribed_at: None,
        }
    }

    /// The params of the next `events.subscribe` call.
    pub fn subscribe_params(&self) -> Value {
        match self.seen {
            Some(since) => json!({ "since": since }),
            None => json!({}),
        }
    }

    /// Record the answer to `events.subscribe` (`{"cursor": n}`).
    pub fn subscribed(&mut self, answer: &Value) {
        if let Some(cursor) = answer.get("cursor").and_then(Value::as_u64) {
            self.subscribed_at = Some(cursor);
        }
    }

    /// Decide what to do with `notification`.
    pub fn handle<'a>(&mut self, notification: &'a Notification) -> Step<'a> {
        let params = &notification.params;
        let cursor = params.get("cursor").and_then(Value::as_u64);
        let kind = params.get("kind").and_then(Value::as_str);
        match (notification.method.as_str(), kind) {
            ("events.overflow", _) | ("event", Some("events.overflow")) => {
                self.advance(cursor);
                Step::Resubscribe { since: self.seen }
            }
            ("event", _) => match cursor {
                None => Step::Malformed,
                Some(cursor) if self.seen.is_some_and(|seen| cursor <= seen) => Step::Skip,
                Some(cursor) => {
                    self.advance(Some(cursor));
                    Step::Show(params)
                }
            },
            _ => Step::Skip,
        }
    }

    /// The cursor to pass to `sotto watch --since` to carry on where this one stopped.
    pub fn resume_cursor(&self) -> Option<u64> {
        self.seen.or(self.subscribed_at)
    }

    fn advance(&mut self, cursor: Option<u64>) {
        self.seen = self.seen.max(cursor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cursor: u64) -> Notification {
        Notification {
            method: "event".to_owned(),
            params: json!({"cursor": cursor, "kind": "message.received", "message": {}}),
        }
    }

    fn overflow(cursor: u64) -> Notification {
        Notification {
            method: "events.overflow".to_owned(),
            params: json!({"cursor": cursor}),
        }
    }

    #[test]
    fn shows_new_events_and_skips_replayed_ones() {
        let mut follow = Follow::new(None);
        assert_eq!(follow.subscribe_params(), json!({}));
        follow.subscribed(&json!({"cursor": 4}));
        assert_eq!(follow.resume_cursor(), Some(4));

        let (five, six) = (event(5), event(6));
        assert_eq!(follow.handle(&five), Step::Show(&five.params));
        assert_eq!(follow.handle(&six), Step::Show(&six.params));
        assert_eq!(follow.handle(&five), Step::Skip);
        assert_eq!(follow.resume_cursor(), Some(6));
    }

    #[test]
    fn since_replays_after_the_given_cursor() {
        let mut follow = Follow::new(Some(10));
        assert_eq!(follow.subscribe_params(), json!({"since": 10}));
        // The answer may name a newer cursor than the replayed events: they still show.
        follow.subscribed(&json!({"cursor": 12}));
        let (ten, eleven) = (event(10), event(11));
        assert_eq!(follow.handle(&ten), Step::Skip);
        assert_eq!(follow.handle(&eleven), Step::Show(&eleven.params));
    }

    #[test]
    fn overflow_resubscribes_from_the_overflow_cursor() {
        let mut follow = Follow::new(None);
        follow.subscribed(&json!({"cursor": 0}));
        let one = event(1);
        assert_eq!(follow.handle(&one), Step::Show(&one.params));
        assert_eq!(
            follow.handle(&overflow(3)),
            Step::Resubscribe { since: Some(3) }
        );
        assert_eq!(follow.subscribe_params(), json!({"since": 3}));
        let (three, four) = (event(3), event(4));
        assert_eq!(follow.handle(&three), Step::Skip);
        assert_eq!(follow.handle(&four), Step::Show(&four.params));
    }

    #[test]
    fn overflow_as_an_event_kind_is_understood_too() {
        let mut follow = Follow::new(Some(2));
        let note = Notification {
            method: "event".to_owned(),
            params: json!({"cursor": 7, "kind": "events.overflow"}),
        };
        assert_eq!(follow.handle(&note), Step::Resubscribe { since: Some(7) });
    }

    #[test]
    fn odd_notifications() {
        let mut follow = Follow::new(None);
        let no_cursor = Notification {
            method: "event".to_owned(),
            params: json!({"kind": "x"}),
        };
        assert_eq!(follow.handle(&no_cursor), Step::Malformed);
        let other = Notification {
            method: "node.bored".to_owned(),
            params: Value::Null,
        };
        assert_eq!(follow.handle(&other), Step::Skip);
        assert_eq!(follow.resume_cursor(), None);
    }
}
