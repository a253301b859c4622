//! The control server: JSON-RPC 2.0 over a Unix socket, one JSON object per line.
//! `docs/api.md` is the contract; this file and that page change together.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::events::cursor_of;
use crate::mailbox::Host;
use crate::paths::Paths;
use crate::service::Service;

mod methods;

use methods::{dispatch, opt_u64_param};

/// The longest request line, in bytes.
pub const MAX_LINE: usize = 256 * 1024;
/// Control connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Lines waiting to be written to one client, at most.
const OUT_QUEUE: usize = 256;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const NO_ACCOUNT: i64 = -32001;
pub const ACCOUNT_EXISTS: i64 = -32002;
pub const UNKNOWN_CONTACT: i64 = -32003;
pub const BAD_CARD: i64 = -32004;
pub const NAME_TAKEN: i64 = -32005;
pub const OWN_CARD: i64 = -32006;
pub const UNKNOWN_GROUP: i64 = -32010;
pub const NOT_ADMIN: i64 = -32011;
pub const NOT_MEMBER: i64 = -32012;

/// What the control server serves: the service, the mailbox host and the private paths
/// (for their figures).
#[derive(Clone)]
struct Node {
    service: Service,
    host: Arc<Host>,
    paths: Paths,
    /// Whether this node's own mailbox work takes private paths.
    private: bool,
}

/// An error answer.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// Accept control connections until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    service: Service,
    host: Arc<Host>,
    (paths, private): (Paths, bool),
    mut shutdown: watch::Receiver<bool>,
) {
    let node = Node {
        service,
        host,
        paths,
        private,
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!("control socket: too many connections; refusing one");
                        let mut stream = stream;
                        let line = error_line(Value::Null, &RpcError::new(INTERNAL_ERROR, "too many control connections"));
                        let _ = stream.write_all(line.as_bytes()).await;
                        continue;
                    };
                    let node = node.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        connection(stream, node, shutdown).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn error_line(id: Value, e: &RpcError) -> String {
    let mut s =
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
            .to_string();
    s.push('\n');
    s
}

fn result_line(id: Value, result: Value) -> String {
    let mut s = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    s.push('\n');
    s
}

fn notification_line(method: &str, params: Value) -> String {
    let mut s = json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string();
    s.push('\n');
    s
}

/// Read one line of at most `MAX_LINE` bytes. `Ok(None)` at end of stream; `Err(true)` when
/// the line is too long.
pub async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<()>, bool> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await.map_err(|_| false)?;
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Ok(Some(()))
            };
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > MAX_LINE {
            return Err(true);
        }
        buf.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(()));
        }
    }
}

async fn connection(stream: UnixStream, node: Node, mut shutdown: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let (out, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let line = tokio::select! {
            l = read_line(&mut reader, &mut buf) => l,
            _ = shutdown.changed() => break,
        };
        match line {
            Ok(None) => break,
            Err(false) => break,
            Err(true) => {
                let e = RpcError::new(
                    INVALID_REQUEST,
                    format!("request line longer than {MAX_LINE} bytes; closing the connection"),
                );
                let _ = out.send(error_line(Value::Null, &e)).await;
                break;
            }
            Ok(Some(())) => {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(reply) = handle_line(&buf, &node, &out, &mut subscription).await {
                    if out.send(reply).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let Some(s) = subscription {
        s.abort();
    }
    drop(out);
    let _ = writer.await;
}

async fn handle_line(
    line: &[u8],
    node: &Node,
    out: &mpsc::Sender<String>,
    subscription: &mut Option<tokio::task::JoinHandle<()>>,
) -> Option<String> {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_line(
                Value::Null,
                &RpcError::new(PARSE_ERROR, format!("not JSON: {e}")),
            ))
        }
    };
    let id = request.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    let Some(obj) = request.as_object() else {
        return Some(error_line(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "a request is a JSON object"),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_line(
            reply_id,
            &RpcError::new(INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""),
        ));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return Some(error_line(
            reply_id,
            &RpcError::new(INVALID_REQUEST, "\"method\" must be a string"),
        ));
    };
    if id
        .as_ref()
        .is_some_and(|i| !(i.is_string() || i.is_number() || i.is_null()))
    {
        return Some(error_line(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "\"id\" must be a string or a number"),
        ));
    }
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    let result = match method {
        "events.subscribe" => subscribe(&node.service, &params, out, subscription),
        "events.unsubscribe" => {
            if let Some(s) = subscription.take() {
                s.abort();
            }
            Ok(json!({}))
        }
        _ => dispatch(node, method, &params).await,
    };
    id.as_ref()?;
    Some(match result {
        Ok(v) => result_line(reply_id, v),
        Err(e) => error_line(reply_id, &e),
    })
}

fn subscribe(
    service: &Service,
    params: &Value,
    out: &mpsc::Sender<String>,
    subscription: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<Value, RpcError> {
    let since = opt_u64_param(params, "since")?;
    if let Some(s) = subscription.take() {
        s.abort();
    }
    let events = service.events().clone();
    // Subscribe to the live feed before reading the backlog, so nothing falls in between.
    let mut live = events.subscribe();
    let latest = events
        .latest()
        .map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string()))?;
    let out = out.clone();
    *subscription = Some(tokio::spawn(async move {
        let mut last = since.unwrap_or(latest);
        if since.is_some() {
            loop {
                let batch = match events.since(last, 256) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("cannot read stored events: {e}");
                        break;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    last = cursor_of(&event);
                    if out.send(notification_line("event", event)).await.is_err() {
                        return;
                    }
                }
            }
        }
        loop {
            match live.recv().await {
                Ok(event) => {
                    if cursor_of(&event) <= last {
                        continue;
                    }
                    last = cursor_of(&event);
                    if out.send(notification_line("event", event)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = out
                        .send(notification_line(
                            "events.overflow",
                            json!({"cursor": last}),
                        ))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }));
    Ok(json!({"cursor": latest}))
}
