//! Fixtures for tests that run real nodes inside the test process (through the daemon
//! library, as `sotto-sim` does), when a test needs the service API or the store directly.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sotto_daemon::config::Config;
use sotto_daemon::service::Service;
use tempfile::TempDir;

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
