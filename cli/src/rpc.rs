//! The control-socket client: JSON-RPC 2.0 over a Unix stream socket, one JSON object per
//! line (docs/api.md, "Transport").
//!
//! [`Client::call`] sends one request and waits for its response; notifications that the
//! daemon pushes meanwhile (after `events.subscribe`) are kept, in order, for
//! [`Client::next_notification`]. Everything read is bounded: a response line of at most
//! [`MAX_RESPONSE_LINE`] bytes, at most [`MAX_PENDING`] notifications held back.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Map, Value};

use crate::input::InvalidInput;

/// The longest response line accepted from the daemon.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;

/// The longest request line the daemon accepts (docs/api.md); longer ones are refused here.
pub const MAX_REQUEST_LINE: usize = 262_144;

/// The most notifications held back while waiting for a response (the daemon keeps 10,000
/// events, all of which `events.subscribe` may replay before answering).
pub const MAX_PENDING: usize = 20_000;

/// How long a call waits for the daemon's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The control socket could not be connected to (exit code 3).
#[derive(Debug)]
pub struct ConnectError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => write!(
                f,
                "the sotto daemon is not running (no socket at {path}); start it with: sottod"
            ),
            io::ErrorKind::ConnectionRefused => write!(
                f,
                "the sotto daemon is not running (nothing listens on {path}); start it with: sottod"
            ),
            _ => write!(
                f,
                "cannot connect to the sotto daemon at {path}: {}",
                self.source
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// An error object the daemon answered with. `message` is written for a person; `code` is
/// what the exit code is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DaemonError {}

/// A notification pushed by the daemon: a request object without `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

/// One line read from the daemon.
#[derive(Debug, PartialEq)]
enum Incoming {
    Response {
        id: Value,
        outcome: Result<Value, DaemonError>,
    },
    Notification(Notification),
}

/// A connection to the daemon's control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    pending: VecDeque<Notification>,
}

impl Client {
    /// Connect to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ConnectError> {
        let fail = |source| ConnectError {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(fail)?;
        stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(fail)?;
        let writer = stream.try_clone().map_err(fail)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            pending: VecDeque::new(),
        })
    }

    /// Call `method` and return its result, or the daemon's error as a [`DaemonError`].
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        if line.len() > MAX_REQUEST_LINE {
            return Err(InvalidInput(format!(
                "the request is {} bytes long; the daemon accepts at most {MAX_REQUEST_LINE}",
                line.len()
            ))
            .into());
        }
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| anyhow!("cannot send the request to the daemon: {e}"))?;

        self.reader.get_ref().set_read_timeout(Some(CALL_TIMEOUT))?;
        loop {
            match self.read_incoming()? {
                None => bail!("the daemon closed the connection without answering {method}"),
                Some(Incoming::Notification(notification)) => {
                    if self.pending.len() >= MAX_PENDING {
                        bail!("the daemon sent more than {MAX_PENDING} notifications before answering {method}");
                    }
                    self.pending.push_back(notification);
                }
                Some(Incoming::Response { id: got, outcome }) => {
                    if got == json!(id) {
                        return Ok(outcome?);
                    }
                    // A request the daemon could not read at all is answered with id null.
                    if let (Value::Null, Err(error)) = (&got, outcome) {
                        return Err(error.into());
                    }
                    bail!("the daemon answered request {got} while request {id} was waiting");
                }
            }
        }
    }

    /// The next notification, waiting as long as it takes; `None` once the daemon has
    /// closed the connection.
    pub fn next_notification(&mut self) -> anyhow::Result<Option<Notification>> {
        if let Some(notification) = self.pending.pop_front() {
            return Ok(Some(notification));
        }
        self.reader.get_ref().set_read_timeout(None)?;
        match self.read_incoming()? {
            None => Ok(None),
            Some(Incoming::Notification(notification)) => Ok(Some(notification)),
            Some(Incoming::Response { id, .. }) => {
                bail!("the daemon sent a response (id {id}) that no request was waiting for")
            }
        }
    }

    /// Read and classify the next non-empty line; `None` at the end of the connection.
    fn read_incoming(&mut self) -> anyhow::Result<Option<Incoming>> {
        loop {
            let line = match read_line(&mut self.reader, MAX_RESPONSE_LINE) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!(
                        "the daemon did not answer within {} seconds",
                        CALL_TIMEOUT.as_secs()
                    )
                }
                Err(e) => return Err(e).context("cannot read from the daemon"),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value =
                serde_json::from_slice(&line).context("the daemon sent a line that is not JSON")?;
            return classify(value).map(Some);
        }
    }
}

/// Read one `\n`-terminated line of at most `max` bytes (without the terminator).
/// `Ok(None)` at a clean end of input; an error for a longer line or a line cut short.
fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let what = if line.len() > max {
            format!("the daemon sent a line longer than {max} bytes")
        } else {
            "the daemon closed the connection in the middle of a message".to_owned()
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, what));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Sort a JSON object from the daemon into a response or a notification.
fn classify(value: Value) -> anyhow::Result<Incoming> {
    let Value::Object(mut object) = value else {
        bail!(
            "the daemon sent JSON that is not a JSON-RPC object: {}",
            excerpt(&value)
        );
    };
    if let Some(Value::String(method)) = object.get("method") {
        if !object.contains_key("id") {
            let method = method.clone();
            let params = object.remove("params").unwrap_or(Value::Null);
            return Ok(Incoming::Notification(Notification { method, params }));
        }
    }
    let Some(id) = object.remove("id") else {
        bail!(
            "the daemon sent a JSON-RPC object without id: {}",
            excerpt(&Value::Object(object))
        );
    };
    let outcome = match (object.remove("result"), object.remove("error")) {
        (_, Some(error)) if !error.is_null() => Err(daemon_error(error)?),
        (Some(result), _) => Ok(result),
        _ => bail!("the daemon sent a response with neither result nor error"),
    };
    Ok(Incoming::Response { id, outcome })
}

/// Read a JSON-RPC error object.
fn daemon_error(error: Value) -> anyhow::Result<DaemonError> {
    let mut object: Map<String, Value> = match error {
        Value::Object(object) => object,
        other => bail!("the daemon sent a malformed error: {}", excerpt(&other)),
    };
    let code = object.get("code").and_then(Value::as_i64);
    let message = object
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (code, message) {
        (Some(code), Some(message)) => Ok(DaemonError {
            code,
            message,
            data: object.remove("data").filter(|d| !d.is_null()),
        }),
        _ => bail!(
            "the daemon sent a malformed error: {}",
            excerpt(&Value::Object(object))
        ),
    }
}

/// The start of a JSON value, for error messages.
fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(input: &[u8], max: usize) -> Vec<io::Result<Option<Vec<u8>>>> {
        let mut reader = Cursor::new(input.to_vec());
        (0..3).map(|_| read_line(&mut reader, max)).collect()
    }

    #[test]
    fn reads_lines_and_clean_end() {
        let got = lines(b"{\"a\":1}\r\n[]\n", 64);
        assert_eq!(got[0].as_ref().ok(), Some(&Some(b"{\"a\":1}".to_vec())));
        assert_eq!(got[1].as_ref().ok(), Some(&Some(b"[]".to_vec())));
        assert_eq!(got[2].as_ref().ok(), Some(&None));
    }

    #[test]
    fn line_of_exactly_max_bytes_is_accepted_one_more_is_not() {
        let got = lines(b"12345\n", 5);
        assert_eq!(got[0].as_ref().ok(), Some(&Some(b"12345".to_vec())));
        let err = read_line(&mut Cursor::new(b"123456\n".to_vec()), 5).err();
        assert!(err.is_some_and(|e| e.to_string().contains("longer than 5 bytes")));
    }

    #[test]
    fn line_cut_short_is_an_error() {
        let err = read_line(&mut Cursor::new(b"{\"id\":1".to_vec()), 64).err();
        assert!(err.is_some_and(|e| e.to_string().contains("middle of a message")));
    }

    #[test]
    fn classifies_results_errors_and_notifications() {
        let ok = classify(json!({"jsonrpc": "2.0", "id": 3, "result": {"cursor": 1}}));
        assert_eq!(
            ok.ok(),
            Some(Incoming::Response {
                id: json!(3),
                outcome: Ok(json!({"cursor": 1}))
            })
        );

        let err = classify(json!({"jsonrpc": "2.0", "id": 4,
            "error": {"code": -32003, "message": "no contact named bob"}}));
        assert_eq!(
            err.ok(),
            Some(Incoming::Response {
                id: json!(4),
                outcome: Err(DaemonError {
                    code: -32003,
                    message: "no contact named bob".to_owned(),
                    data: None
                })
            })
        );

        let note = classify(json!({"jsonrpc": "2.0", "method": "event", "params": {"cursor": 9}}));
        assert_eq!(
            note.ok(),
            Some(Incoming::Notification(Notification {
                method: "event".to_owned(),
                params: json!({"cursor": 9})
            }))
        );
    }

    #[test]
    fn malformed_objects_are_errors_not_panics() {
        for value in [
            json!([1, 2]),
            json!("hello"),
            json!({"jsonrpc": "2.0"}),
            json!({"id": 1}),
            json!({"id": 1, "error": "boom"}),
            json!({"id": 1, "error": {"code": "x", "message": "m"}}),
            json!({"id": 1, "error": {"code": -1}}),
        ] {
            assert!(classify(value.clone()).is_err(), "{value} accepted");
        }
    }

    #[test]
    fn excerpt_cuts_long_values_on_char_boundaries() {
        let long = Value::String("é".repeat(500));
        assert!(excerpt(&long).chars().count() <= 201);
    }
}
