//! Replays, in-process with two real nodes: an envelope that arrives again — later, after a
//! restart, as a host or an attacker would replay it — is answered `Duplicate`, shown once,
//! and leaves the session working both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sotto_daemon::config::Config;
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use sotto_daemon::store::OutboxEntry;
use sotto_protocol::wire::Response;
use tempfile::TempDir;

fn private_dir() -> TempDir {
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

fn config(dir: &TempDir, port: u16) -> Config {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn card(service: &Service) -> String {
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

async fn texts(service: &Service, with: &str) -> Vec<String> {
    let list = service.messages(Some(with), None).unwrap();
    serde_json::to_value(list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_text(service: &Service, with: &str, text: &str) {
    for _ in 0..600 {
        if texts(service, with).await.iter().any(|t| t == text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{text:?} did not arrive within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_envelope_is_a_duplicate_and_the_session_survives() {
    let (da, db) = (private_dir(), private_dir());
    let (ca, cb) = (config(&da, free_port()), config(&db, free_port()));
    let alice = Node::start(&ca).await.unwrap();
    let bob = Node::start(&cb).await.unwrap();
    alice.service().create_account("alice").await.unwrap();
    bob.service().create_account("bob").await.unwrap();
    let (card_a, card_b) = (card(alice.service()).await, card(bob.service()).await);
    alice
        .service()
        .add_contact(&card_b, Some("bob"))
        .await
        .unwrap();
    bob.service()
        .add_contact(&card_a, Some("alice"))
        .await
        .unwrap();
    alice.service().send("bob", "hello").await.unwrap();
    wait_text(bob.service(), "alice", "hello").await;

    // Bob goes away; alice's next message waits in her outbox, where its envelope can be
    // copied as anyone who carried it could.
    bob.shutdown().await;
    alice.service().send("bob", "once only").await.unwrap();
    let mut envelope = None;
    for _ in 0..100 {
        let entries: Vec<OutboxEntry> = alice.service().store().outbox().unwrap();
        envelope = entries.into_iter().find(|e| !e.control).map(|e| e.envelope);
        if envelope.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let envelope = envelope.expect("the message waits in the outbox");

    let bob = Node::start(&cb).await.unwrap();
    // Bob writing makes the nodes connect, and alice's outbox tries bob again at once.
    bob.service().send("alice", "back").await.unwrap();
    wait_text(bob.service(), "alice", "once only").await;

    // The same envelope again: now, and after a restart of bob.
    assert_eq!(
        bob.service().receive("a replaying host", &envelope).await,
        Response::Duplicate
    );
    bob.shutdown().await;
    let bob = Node::start(&cb).await.unwrap();
    assert_eq!(
        bob.service().receive("a replaying host", &envelope).await,
        Response::Duplicate
    );
    let shown = texts(bob.service(), "alice").await;
    assert_eq!(
        shown.iter().filter(|t| *t == "once only").count(),
        1,
        "{shown:?}"
    );

    // The session was not reset: both directions still work.
    alice
        .service()
        .send("bob", "after the replay")
        .await
        .unwrap();
    wait_text(bob.service(), "alice", "after the replay").await;
    bob.service().send("alice", "and back").await.unwrap();
    wait_text(alice.service(), "bob", "and back").await;

    bob.shutdown().await;
    alice.shutdown().await;
}
