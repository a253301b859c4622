//! Fixtures for tests that run real nodes inside the test process (through the daemon
//! library, as `sotto-sim` does), when a test needs the service API or the store directly.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sotto_daemon::config::Config;
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

#[allow(unused_imports)]
pub use super::free_port;

pub fn private_dir() -> TempDir {
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

pub fn config(dir: &TempDir, port: u16) -> Config {
    Config {
        data_dir: dir.path().join("data"),
        socket: dir.path().join("sottod.sock"),
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
        bootstrap: Vec::new(),
        announce: Vec::new(),
        mailbox: sotto_daemon::config::Mailbox {
            publish_address: true,
            fetch_interval_ms: 1_000,
            ..Default::default()
        },
        harness: Default::default(),
        limits: Default::default(),
        keys: Default::default(),
    }
}

pub async fn card(service: &Service) -> String {
    for _ in 0..100 {
        let view = service.account().await.unwrap();
        if view.card.len() > 200 {
            let card = sotto_protocol::card::Card::from_uri(&view.card).unwrap();
            if !card.body().hints.addrs.is_empty() {
                return view.card;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no card with an address");
}

/// One field of every message with `with`, in history order.
fn field_of_messages(service: &Service, with: &str, field: &str) -> Vec<String> {
    let list = service.messages(Some(with), None).unwrap();
    serde_json::to_value(list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[field].as_str().unwrap().to_owned())
        .collect()
}

pub async fn texts(service: &Service, with: &str) -> Vec<String> {
    field_of_messages(service, with, "text")
}

#[allow(dead_code)]
pub async fn states(service: &Service, with: &str) -> Vec<String> {
    field_of_messages(service, with, "state")
}

pub async fn wait_text(service: &Service, with: &str, text: &str) {
    for _ in 0..600 {
        if texts(service, with).await.iter().any(|t| t == text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{text:?} did not arrive within 30 s");
}

/// One JSON-RPC call (no parameters) on a node's control socket; its result.
#[allow(dead_code)]
pub async fn rpc(socket: &Path, method: &str) -> Value {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let line = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}})
    );
    s.write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await.unwrap();
    let mut v: Value = serde_json::from_str(&reply).unwrap();
    v["result"].take()
}

/// Wait (at most `secs` seconds) until `f` holds.
#[allow(dead_code)]
pub async fn until<F: std::future::Future<Output = bool>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// A network for private paths: `configs[0]` is the hub the others bootstrap from, the
/// last two are alice and bob (mailbox-only, relaying for nobody), the rest relays. Starts
/// them all, waits until alice and bob know five relays, makes their accounts and makes
/// them each other's contacts. Returns the relays, alice and bob.
#[allow(dead_code)]
pub async fn paths_network(configs: &mut [Config]) -> (Vec<Node>, Node, Node) {
    let n = configs.len();
    for c in &mut configs[n - 2..] {
        c.mailbox.mailbox_only = true;
        c.limits.relay = false;
    }
    let hub = Node::start(&configs[0]).await.unwrap();
    let hub_addr = format!(
        "{}/p2p/{}",
        configs[0].listen[0],
        hub.service().network().peer_id()
    );
    for c in &mut configs[1..] {
        c.bootstrap = vec![hub_addr.parse().unwrap()];
    }
    let mut relays = vec![hub];
    for c in &configs[1..n - 2] {
        relays.push(Node::start(c).await.unwrap());
    }
    let alice = Node::start(&configs[n - 2]).await.unwrap();
    let bob = Node::start(&configs[n - 1]).await.unwrap();
    for node in [&alice, &bob] {
        until(60, "relays known", || async {
            rpc(node.socket(), "paths.status").await["relays_known"]
                .as_u64()
                .unwrap()
                >= 5
        })
        .await;
    }
    introduce(&alice, &bob).await;
    (relays, alice, bob)
}

/// Accounts for `alice` and `bob` (so named), each the other's contact.
#[allow(dead_code)]
pub async fn introduce(alice: &Node, bob: &Node) {
    alice.service().create_account("alice").await.unwrap();
    bob.service().create_account("bob").await.unwrap();
    let card_a = alice.service().account().await.unwrap().card;
    let card_b = bob.service().account().await.unwrap().card;
    alice
        .service()
        .add_contact(&card_b, Some("bob"))
        .await
        .unwrap();
    bob.service()
        .add_contact(&card_a, Some("alice"))
        .await
        .unwrap();
}

/// Wait until every message to `with` is on mailbox hosts (or delivered).
#[allow(dead_code)]
pub async fn until_on_hosts(service: &Service, with: &str) {
    until(120, "the message on hosts", || async {
        states(service, with)
            .await
            .iter()
            .all(|s| s == "on_hosts" || s == "delivered")
    })
    .await;
}
