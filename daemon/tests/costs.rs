//! Costs that must not grow with what a node holds, counted in records read from the store
//! (a measure that, unlike time, does not depend on the machine): taking in a stranger's
//! first message reads the same few records with ten contacts as with a hundred more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::inproc::{card, config, free_port, private_dir};
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use sotto_protocol::chat::{seal_message, LocalAccount};
use sotto_protocol::content::{Content, MessageId};
use sotto_protocol::wire::Response;

/// A new account's card, as `sotto:` URI.
fn someone(rng: &mut impl rand::RngCore) -> (LocalAccount, String) {
    let account = LocalAccount::generate("Someone", rng);
    let card = account.card(Default::default(), 1).unwrap().to_uri();
    (account, card)
}

/// Records bob's store reads while taking a stranger's first message. (Bob's node is
/// stopped: its background work — fetch rounds, the outbox — reads the store too.)
async fn reads_for_a_stranger(bob: &Service, bob_card: &str) -> u64 {
    let mut rng = rand::thread_rng();
    let (stranger, own) = someone(&mut rng);
    let own = sotto_protocol::card::Card::from_uri(&own).unwrap();
    let to = sotto_protocol::card::Card::from_uri(bob_card).unwrap();
    let content = Content::text(MessageId::random(&mut rng), 1, "hello").unwrap();
    let mut pairwise = sotto_protocol::session::Pairwise::new();
    let envelope = seal_message(&stranger, Some(&own), &mut pairwise, &to, &content).unwrap();
    let store = bob.store();
    let before = store.records_read();
    assert_eq!(
        bob.receive("a stranger", &envelope).await,
        Response::Accepted
    );
    store.records_read() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_message_costs_the_same_however_many_contacts() {
    let dir = private_dir();
    let mut config = config(&dir, free_port());
    // No fetch rounds while contacts are added: they would look up every dead drop.
    config.mailbox.fetch_interval_ms = 3_600_000;
    // Each new contact's presence goes to its intro dead drop with a stamp: keep them cheap.
    config.mailbox.policy.stamp_difficulty = 8;
    let mut rng = rand::thread_rng();
    // Bob with `n` contacts, stopped; his service kept to call.
    let bob_with = |n: usize, rng: &mut rand::rngs::ThreadRng| {
        let cards: Vec<String> = (0..n).map(|_| someone(rng).1).collect();
        let config = config.clone();
        async move {
            let node = Node::start(&config).await.unwrap();
            let service = node.service().clone();
            if service.account().await.is_err() {
                service.create_account("bob").await.unwrap();
            }
            for c in cards {
                service.add_contact(&c, None).await.unwrap();
            }
            let bob_card = card(&service).await;
            drop(service);
            let service = node.service().clone();
            node.shutdown().await;
            (service, bob_card)
        }
    };
    let (bob, bob_card) = bob_with(10, &mut rng).await;
    let few = reads_for_a_stranger(&bob, &bob_card).await;
    drop(bob);
    let (bob, bob_card) = bob_with(100, &mut rng).await;
    let many = reads_for_a_stranger(&bob, &bob_card).await;
    println!("records read for a stranger's message: {few} with 10 contacts, {many} with 110");
    assert_eq!(few, many, "the cost does not grow with the contacts");
    assert!(few < 20, "{few} records");
}
