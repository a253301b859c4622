//! Replays, in-process with two real nodes: an envelope that arrives again — later, after a
//! restart, as a host or an attacker would replay it — is answered `Duplicate`, shown once,
//! and leaves the session working both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::inproc::{card, config, free_port, introduce, private_dir, texts, wait_text};
use sotto_daemon::node::Node;
use sotto_daemon::store::OutboxEntry;
use sotto_protocol::wire::Response;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_envelope_is_a_duplicate_and_the_session_survives() {
    let (da, db) = (private_dir(), private_dir());
    let (ca, cb) = (config(&da, free_port()), config(&db, free_port()));
    let alice = Node::start(&ca).await.unwrap();
    let bob = Node::start(&cb).await.unwrap();
    introduce(&alice, &bob).await;
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

/// The first envelope in `node`'s outbox that carries a message for the user.
async fn waiting_envelope(node: &Node) -> Vec<u8> {
    for _ in 0..100 {
        let entries: Vec<OutboxEntry> = node.service().store().outbox().unwrap();
        if let Some(e) = entries.into_iter().find(|e| !e.control) {
            return e.envelope;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no message waits in the outbox");
}

/// A pre-key message replayed after the receiver forgot its digest (it keeps digests 30
/// days) and evicted the session it began decrypts again, on the fallback key — but its
/// message id is known, so nothing it did to the sessions is kept: the stale session it
/// would create is not put first (bob's next message would go out on it, and alice could
/// not read it), and the conversation goes on both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_key_message_replayed_after_its_digest_is_forgotten_changes_no_session() {
    let (da, db) = (private_dir(), private_dir());
    let (ca, cb) = (config(&da, free_port()), config(&db, free_port()));
    let alice = Node::start(&ca).await.unwrap();
    let bob = Node::start(&cb).await.unwrap();
    alice.service().create_account("alice").await.unwrap();
    bob.service().create_account("bob").await.unwrap();
    let (card_a, card_b) = (card(alice.service()).await, card(bob.service()).await);
    // Alice writes first, while bob is away: pre-key messages (she has heard nothing from
    // him yet). Her message is copied from her outbox.
    bob.shutdown().await;
    alice
        .service()
        .add_contact(&card_b, Some("bob"))
        .await
        .unwrap();
    alice.service().send("bob", "first").await.unwrap();
    let envelope = waiting_envelope(&alice).await;
    let bob = Node::start(&cb).await.unwrap();
    bob.service()
        .add_contact(&card_a, Some("alice"))
        .await
        .unwrap();
    bob.service().send("alice", "wake up").await.unwrap();
    wait_text(bob.service(), "alice", "first").await;
    wait_text(alice.service(), "bob", "wake up").await;
    for i in 0..3 {
        alice.service().send("bob", &format!("a{i}")).await.unwrap();
        wait_text(bob.service(), "alice", &format!("a{i}")).await;
        bob.service().send("alice", &format!("b{i}")).await.unwrap();
        wait_text(alice.service(), "bob", &format!("b{i}")).await;
    }

    // Thirty days later bob has forgotten the digest, and the session that message began
    // has been evicted (a contact keeps at most four; here all are dropped, so that the
    // replay can start a new one); the envelope comes again.
    bob.service().store().prune_seen(u64::MAX).unwrap();
    let (alice_key, _) = bob.service().resolve("alice").unwrap();
    let mut evict = sotto_daemon::store::Batch::new();
    evict.put_sessions(&alice_key, &[]).unwrap();
    bob.service().store().commit(evict).await.unwrap();
    assert_eq!(
        bob.service().receive("a replaying host", &envelope).await,
        Response::Duplicate
    );
    assert_eq!(
        texts(bob.service(), "alice")
            .await
            .iter()
            .filter(|t| *t == "first")
            .count(),
        1
    );
    // Bob's next messages still reach alice, and hers reach him.
    bob.service()
        .send("alice", "after the replay")
        .await
        .unwrap();
    wait_text(alice.service(), "bob", "after the replay").await;
    alice.service().send("bob", "and back").await.unwrap();
    wait_text(bob.service(), "alice", "and back").await;
    bob.shutdown().await;
    alice.shutdown().await;
}

/// A first message from a stranger holding `card`, sealed as the stranger would seal it.
fn first_message_to(card: &str, text: &str) -> Vec<u8> {
    use sotto_protocol::chat::{seal_message, LocalAccount};
    use sotto_protocol::content::{Content, MessageId};
    let mut rng = rand::thread_rng();
    let stranger = LocalAccount::generate("Stranger", &mut rng);
    let own = stranger.card(Default::default(), 1).unwrap();
    let to = sotto_protocol::card::Card::from_uri(card).unwrap();
    let content = Content::text(MessageId::random(&mut rng), 1, text).unwrap();
    let mut pairwise = sotto_protocol::session::Pairwise::new();
    seal_message(&stranger, Some(&own), &mut pairwise, &to, &content).unwrap()
}

fn fallback_key(card: &str) -> [u8; 32] {
    sotto_protocol::card::Card::from_uri(card)
        .unwrap()
        .body()
        .fallback_key
}

/// The fallback key in the card is replaced every rotation period (30 days by default);
/// the one it replaced keeps working until the next replacement, then stops: a card is
/// good for first contact for at least one period, and an old pre-key message opens for
/// at most two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_key_rotates_and_the_old_one_works_for_one_more_period() {
    let dir = private_dir();
    let config = config(&dir, free_port());
    let bob = Node::start(&config).await.unwrap();
    bob.service().create_account("bob").await.unwrap();
    let old_card = card(bob.service()).await;
    let now = sotto_daemon::clock::unix_ms();
    let period = config.keys.fallback_rotation_ms;
    assert!(!bob.service().rotate_keys_if_due(now).await.unwrap());
    assert!(bob
        .service()
        .rotate_keys_if_due(now + period)
        .await
        .unwrap());
    let new_card = card(bob.service()).await;
    assert_ne!(fallback_key(&old_card), fallback_key(&new_card));
    // Within the grace period the old card still starts a conversation.
    assert_eq!(
        bob.service()
            .receive(
                "a stranger",
                &first_message_to(&old_card, "from an old card")
            )
            .await,
        Response::Accepted
    );
    // The replacement survives a restart.
    bob.shutdown().await;
    let bob = Node::start(&config).await.unwrap();
    assert_eq!(
        fallback_key(&card(bob.service()).await),
        fallback_key(&new_card)
    );
    // One more period: the old key is gone, the one before the current still works.
    assert!(!bob
        .service()
        .rotate_keys_if_due(now + period + period / 2)
        .await
        .unwrap());
    assert!(bob
        .service()
        .rotate_keys_if_due(now + 2 * period)
        .await
        .unwrap());
    assert_eq!(
        bob.service()
            .receive("a stranger", &first_message_to(&old_card, "too old"))
            .await,
        Response::Refused(sotto_protocol::wire::Refusal::Unopenable),
        "a card two rotations old no longer opens a session"
    );
    assert_eq!(
        bob.service()
            .receive("a stranger", &first_message_to(&new_card, "previous card"))
            .await,
        Response::Accepted
    );
    bob.shutdown().await;
}

/// A reaction and an edit that arrive before the message they name (as when a mailbox host
/// holding the later envelopes is fetched first) wait for it, and apply when it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_arrive_before_their_message_wait_for_it() {
    let (da, db) = (private_dir(), private_dir());
    let (ca, cb) = (config(&da, free_port()), config(&db, free_port()));
    let alice = Node::start(&ca).await.unwrap();
    let bob = Node::start(&cb).await.unwrap();
    introduce(&alice, &bob).await;
    alice.service().send("bob", "hello").await.unwrap();
    wait_text(bob.service(), "alice", "hello").await;

    // Bob goes away; alice writes, reacts to and edits what she wrote. The three envelopes
    // wait in her outbox, and she goes away too before bob is back.
    bob.shutdown().await;
    let sent = alice.service().send("bob", "lunch?").await.unwrap();
    alice.service().react("bob", &sent.id, "🍝").await.unwrap();
    alice
        .service()
        .edit("bob", &sent.id, "lunch at 1?")
        .await
        .unwrap();
    let mut entries: Vec<OutboxEntry> = Vec::new();
    for _ in 0..100 {
        entries = alice.service().store().outbox().unwrap();
        if entries.iter().filter(|e| e.seq.0 > 0).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alice.shutdown().await;
    entries.sort_by_key(|e| e.seq);
    let message = entries
        .iter()
        .position(|e| !e.control)
        .expect("the message");
    let changes: Vec<Vec<u8>> = entries[message + 1..]
        .iter()
        .map(|e| e.envelope.clone())
        .collect();
    assert_eq!(changes.len(), 2, "a reaction and an edit after the message");

    // Bob gets the changes first, then the message.
    let bob = Node::start(&cb).await.unwrap();
    for envelope in &changes {
        assert_eq!(
            bob.service().receive("a host", envelope).await,
            Response::Accepted
        );
    }
    assert_eq!(
        bob.service()
            .receive("a host", &entries[message].envelope)
            .await,
        Response::Accepted
    );
    let list = bob.service().messages(Some("alice"), None).unwrap();
    let lunch = list.iter().find(|m| m.id == sent.id).unwrap();
    assert_eq!(lunch.text, "lunch at 1?");
    assert!(lunch.edited_at.is_some());
    assert_eq!(lunch.reactions.len(), 1);
    assert_eq!(lunch.reactions[0].emoji, "🍝");
    assert_eq!(lunch.reactions[0].from, "alice");
}
