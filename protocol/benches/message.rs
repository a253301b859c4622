//! One message through sotto-protocol, per message, beside raw vodozemac Olm.
//!
//! - `sotto/seal`: encode + encrypt + seal (`chat::seal_message`).
//! - `sotto/open`: open + decrypt + decode (`chat::open_envelope` + `chat::open_message`),
//!   on a fresh envelope each iteration (Olm ratchets: a message decrypts only once).
//! - `sotto/round_trip`: both, one after the other.
//! - `olm/encrypt`, `olm/decrypt`, `olm/round_trip`: the same on a bare vodozemac
//!   `Session`, with the encoded `Content` bytes as plaintext, so the ratchet does the same work.
//! - `parts/*`: the pieces sotto adds, alone (content codec, Noise `X` seal and open), and
//!   the X25519 operations both stacks are built from.
//!
//! Every session is confirmed (one message each way) before it is measured, so all messages
//! are normal Olm messages, not pre-key ones. Run with
//! `cargo bench -p sotto-protocol --bench message`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use rand::{rngs::StdRng, SeedableRng};
use sotto_protocol::card::{Card, Hints};
use sotto_protocol::chat::{open_envelope, open_message, seal_message, LocalAccount};
use sotto_protocol::content::{Content, MessageId};
use sotto_protocol::envelope;
use sotto_protocol::session::Pairwise;
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey};

/// The two message sizes measured: a typical chat line and a long one.
const SIZES: [(&str, usize); 2] = [("100B", 100), ("4KiB", 4096)];

fn text(len: usize) -> String {
    "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

fn content(len: usize) -> Content {
    Content::text(MessageId([7; 16]), 1_700_000_000_000, text(len)).unwrap()
}

/// One side of a sotto conversation.
struct Person {
    account: LocalAccount,
    card: Card,
    with: Pairwise,
}

impl Person {
    fn new(name: &str, seed: u64) -> Self {
        let account = LocalAccount::generate(name, &mut StdRng::seed_from_u64(seed));
        // Realistic hints, so a card attached to a pre-key message has its real size.
        let hints = Hints {
            peer_id: Some(vec![0x5a; 38]),
            addrs: vec!["/ip4/192.0.2.1/tcp/4690".into()],
        };
        let card = account.card(hints, 1).unwrap();
        Person {
            account,
            card,
            with: Pairwise::new(),
        }
    }

    fn seal_for(&mut self, to: &Card, content: &Content) -> Vec<u8> {
        seal_message(&self.account, Some(&self.card), &mut self.with, to, content).unwrap()
    }

    fn open_from(&mut self, from: &Card, envelope: &[u8]) -> Content {
        let opened = open_envelope(&self.account, envelope).unwrap();
        open_message(&mut self.account, &mut self.with, from, &opened).unwrap()
    }
}

/// Alice and Bob with a confirmed session: the next message is a normal Olm message.
fn sotto_pair() -> (Person, Person) {
    let (mut alice, mut bob) = (Person::new("Alice", 1), Person::new("Bob", 2));
    let c = content(10);
    let env = alice.seal_for(&bob.card.clone(), &c);
    bob.open_from(&alice.card.clone(), &env);
    let env = bob.seal_for(&alice.card.clone(), &c);
    alice.open_from(&bob.card.clone(), &env);
    assert!(!alice.with.next_is_pre_key());
    (alice, bob)
}

/// Two bare Olm sessions, confirmed the same way (fallback key, one message each way).
fn olm_pair() -> (Session, Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_fallback_key();
    let fallback = *bob.fallback_key().values().next().unwrap();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), fallback)
        .unwrap();
    let OlmMessage::PreKey(first) = a.encrypt(b"hello").unwrap() else {
        unreachable!("a new session sends a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &first)
        .unwrap()
        .session;
    let reply = b.encrypt(b"hi").unwrap();
    a.decrypt(&reply).unwrap();
    assert!(matches!(a.encrypt(b"x").unwrap(), OlmMessage::Normal(_)));
    (a, b)
}

fn sotto(c: &mut Criterion) {
    for (label, len) in SIZES {
        let msg = content(len);
        {
            let (mut alice, bob) = sotto_pair();
            let env = alice.seal_for(&bob.card, &msg);
            println!(
                "sotto {label}: text {len} B, content {} B, envelope {} B",
                msg.to_bytes().unwrap().len(),
                env.len()
            );
        }
        let mut group = c.benchmark_group("sotto");

        let (mut alice, bob) = sotto_pair();
        group.bench_function(format!("seal/{label}"), |b| {
            b.iter(|| {
                seal_message(
                    &alice.account,
                    Some(&alice.card),
                    &mut alice.with,
                    &bob.card,
                    black_box(&msg),
                )
                .unwrap()
            })
        });

        let (mut alice, mut bob) = sotto_pair();
        let (alice_card, bob_card) = (alice.card.clone(), bob.card.clone());
        group.bench_function(format!("open/{label}"), |b| {
            b.iter_batched(
                || alice.seal_for(&bob_card, &msg),
                |env| bob.open_from(&alice_card, &env),
                BatchSize::SmallInput,
            )
        });

        let (mut alice, mut bob) = sotto_pair();
        let (alice_card, bob_card) = (alice.card.clone(), bob.card.clone());
        group.bench_function(format!("round_trip/{label}"), |b| {
            b.iter(|| {
                let env = alice.seal_for(&bob_card, black_box(&msg));
                bob.open_from(&alice_card, &env)
            })
        });
        group.finish();
    }
}

fn olm(c: &mut Criterion) {
    for (label, len) in SIZES {
        let plaintext = content(len).to_bytes().unwrap();
        let mut group = c.benchmark_group("olm");

        let (mut a, _) = olm_pair();
        group.bench_function(format!("encrypt/{label}"), |b| {
            b.iter(|| a.encrypt(black_box(&plaintext)).unwrap())
        });

        let (mut a, mut bob) = olm_pair();
        group.bench_function(format!("decrypt/{label}"), |b| {
            b.iter_batched(
                || a.encrypt(&plaintext).unwrap(),
                |m| bob.decrypt(&m).unwrap(),
                BatchSize::SmallInput,
            )
        });

        let (mut a, mut bob) = olm_pair();
        group.bench_function(format!("round_trip/{label}"), |b| {
            b.iter(|| {
                let m = a.encrypt(black_box(&plaintext)).unwrap();
                bob.decrypt(&m).unwrap()
            })
        });
        group.finish();
    }
}

/// What sotto adds, piece by piece: the content codec, and the Noise `X` seal and open of a
/// letter the size a real one has.
fn parts(c: &mut Criterion) {
    // The unit of cost of every X25519-based step: one Diffie-Hellman, and one public key
    // derived from a secret (vodozemac derives the ratchet public key on every encrypt).
    let mut group = c.benchmark_group("parts");
    let secret = Curve25519SecretKey::new();
    let public = Curve25519PublicKey::from(&Curve25519SecretKey::new());
    group.bench_function("x25519_dh", |b| {
        b.iter(|| black_box(&secret).diffie_hellman(black_box(&public)))
    });
    group.bench_function("x25519_public_key", |b| {
        b.iter(|| Curve25519PublicKey::from(black_box(&secret)))
    });
    group.finish();

    for (label, len) in SIZES {
        let msg = content(len);
        let (mut alice, bob) = sotto_pair();
        let letter_len = {
            let env = alice.seal_for(&bob.card, &msg);
            open_envelope(&bob.account, &env)
                .unwrap()
                .letter
                .to_bytes()
                .unwrap()
                .len()
        };
        let letter = vec![0x42u8; letter_len];
        let bob_seal = bob.card.body().seal_key;
        let mut group = c.benchmark_group("parts");
        group.bench_function(format!("content_encode/{label}"), |b| {
            b.iter(|| black_box(&msg).to_bytes().unwrap())
        });
        let bytes = msg.to_bytes().unwrap();
        group.bench_function(format!("content_decode/{label}"), |b| {
            b.iter(|| Content::from_bytes(black_box(&bytes)).unwrap())
        });
        group.bench_function(format!("noise_seal/{label}"), |b| {
            b.iter(|| envelope::seal(&alice.account.seal, &bob_seal, black_box(&letter)).unwrap())
        });
        let env = envelope::seal(&alice.account.seal, &bob_seal, &letter).unwrap();
        group.bench_function(format!("noise_open/{label}"), |b| {
            b.iter(|| envelope::open(&bob.account.seal, black_box(&env)).unwrap())
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = sotto, olm, parts
}
criterion_main!(benches);
