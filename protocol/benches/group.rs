//! What a group message costs in CPU against raw Megolm: the sender encrypting once in its
//! Megolm session and sealing the group envelope, a member opening and decrypting it; and
//! what a change of membership costs: a fresh secret sealed to every member, at 8 to 1,024
//! members; what sharing a new sender key with every member over pairwise Olm sessions
//! costs; and what a node pays per group secret it tries on an envelope that is not
//! sealed under it. Run with `cargo bench -p sotto-protocol --bench group`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use rand::{rngs::StdRng, SeedableRng};
use sotto_protocol::content::{Content, MessageId};
use sotto_protocol::envelope::SealKey;
use sotto_protocol::group::{self, Change, GroupId, GroupSecret, Op, Payload, SenderKey, Sent};
use sotto_protocol::identity::{AccountKey, Identity};
use sotto_protocol::session::{Device, Pairwise};

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let alice = Identity::generate(&mut rng);
    let id = GroupId([1; 16]);
    let secret = GroupSecret::generate(&mut rng);
    // A 31-byte text, as in the other message benchmarks.
    let content = Content::text(MessageId([2; 16]), 1, "see you at the station at eight")
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut g = c.benchmark_group("group");
    g.measurement_time(Duration::from_secs(3));

    let mut raw = group::new_session();
    g.bench_function("raw_megolm_encrypt", |b| {
        b.iter(|| raw.encrypt(black_box(&content)))
    });
    let mut session = group::new_session();
    g.bench_function("send_encrypt_and_seal", |b| {
        b.iter(|| {
            let sent = Sent::encrypt(id, alice.public(), &mut session, black_box(&content));
            group::seal_payload(&secret, &Payload::Message(sent), &mut rng).unwrap()
        })
    });

    // Receiving: open the envelope, decrypt in the sender's inbound session.
    let mut sender = group::new_session();
    let key = SenderKey::new(&alice, id, [0; 32], &sender);
    let envelopes: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let sent = Sent::encrypt(id, alice.public(), &mut sender, &content);
            group::seal_payload(&secret, &Payload::Message(sent), &mut rng).unwrap()
        })
        .collect();
    let mut next = 0usize;
    let mut inbound = key.open().unwrap();
    g.bench_function("receive_open_and_decrypt", |b| {
        b.iter_batched(
            || {
                let e = envelopes[next % envelopes.len()].clone();
                next += 1;
                e
            },
            |e| match group::open_payload(&secret, &e).unwrap() {
                Payload::Message(sent) => sent.decrypt(&mut inbound).ok(),
                _ => None,
            },
            BatchSize::SmallInput,
        )
    });

    // A node tries the secrets of its groups (the newest two of each) on an envelope pushed
    // to it that is not sealed to it: what one secret that does not fit costs.
    let other = GroupSecret::generate(&mut rng);
    let pushed = envelopes[0].clone();
    g.bench_function("try_a_secret_that_does_not_fit", |b| {
        b.iter(|| group::open_payload(black_box(&other), black_box(&pushed)).is_err())
    });
    // The same for the largest envelope: a rekey for 1,024 members.
    let to: Vec<(AccountKey, [u8; 32])> = (0..1024)
        .map(|_| {
            (
                Identity::generate(&mut rng).public(),
                SealKey::generate(&mut rng).public(),
            )
        })
        .collect();
    let rekey = GroupSecret::generate(&mut rng)
        .rekey(&to, &mut rng)
        .unwrap();
    let parents: Vec<[u8; 32]> = (0..group::MAX_PARENTS as u8).map(|i| [i; 32]).collect();
    let change = Change::new(&alice, id, 1, parents, 0, Op::Rekey, Some(rekey)).unwrap();
    let large = group::seal_payload(&secret, &Payload::Change(change), &mut rng).unwrap();
    g.bench_function(
        format!("try_a_secret_that_does_not_fit_{}_bytes", large.len()),
        |b| b.iter(|| group::open_payload(black_box(&other), black_box(&large)).is_err()),
    );

    // Replaying a group's log (what every member does on every change it takes): N changes
    // of which half are removals (an admin adding and removing members in turn), each
    // removal judged in the replay of its own causal past.
    for n in [100usize, 1_000, 4_000] {
        let members: Vec<group::Member> = (0..8)
            .map(|i| group::Member {
                account: if i == 0 {
                    alice.public()
                } else {
                    Identity::generate(&mut rng).public()
                },
                seal_key: [0; 32],
                olm: group::OlmKeys {
                    identity: [0; 32],
                    fallback: [0; 32],
                },
                name: "m".into(),
            })
            .collect();
        let nonce = [3u8; 16];
        let gid = GroupId::derive(&alice.public(), &nonce);
        let mut log_of_gid = group::Log::new(gid);
        let rekey = group::Rekey {
            ephemeral: [0; 32],
            boxes: Vec::new(),
        };
        let create = Change::new(
            &alice,
            gid,
            0,
            Vec::new(),
            0,
            Op::Create {
                nonce,
                name: "g".into(),
                description: String::new(),
                members,
            },
            Some(rekey.clone()),
        )
        .unwrap();
        log_of_gid.insert(create).unwrap();
        let mut parent = log_of_gid.heads();
        let mut last = alice.public();
        for i in 1..n {
            let op = if i % 2 == 1 {
                last = AccountKey([(i % 251) as u8; 32]);
                Op::Add(vec![group::Member {
                    account: last,
                    seal_key: [0; 32],
                    olm: group::OlmKeys {
                        identity: [0; 32],
                        fallback: [0; 32],
                    },
                    name: "x".into(),
                }])
            } else {
                Op::Remove(last)
            };
            let c = Change::new(
                &alice,
                gid,
                i as u64,
                parent.clone(),
                0,
                op,
                Some(rekey.clone()),
            )
            .unwrap();
            parent = vec![c.hash()];
            log_of_gid.insert(c).unwrap();
        }
        let log = log_of_gid;
        assert_eq!(log.len(), n);
        // The first replay judges every removal in its own past (then remembered).
        let cold = std::time::Instant::now();
        assert_eq!(log.state().unwrap().skipped, 0);
        eprintln!(
            "group/replay_{n}_changes_half_removals, first (cold): {:?}",
            cold.elapsed()
        );
        g.bench_function(format!("replay_{n}_changes_half_removals"), |b| {
            b.iter(|| black_box(&log).state())
        });
    }

    // A change of membership: a new secret sealed to every member.
    g.sample_size(10);
    for members in [8usize, 64, 256, 1024] {
        let to: Vec<(AccountKey, [u8; 32])> = (0..members)
            .map(|_| {
                (
                    Identity::generate(&mut rng).public(),
                    SealKey::generate(&mut rng).public(),
                )
            })
            .collect();
        g.bench_function(format!("rekey_{members}_members"), |b| {
            b.iter(|| {
                GroupSecret::generate(&mut rng)
                    .rekey(black_box(&to), &mut rng)
                    .unwrap()
            })
        });
    }

    // A new Megolm session shared with every other member: one Olm message each over the
    // pairwise session (started first when there is none), bundled (split among the key
    // dead drops past 8 KiB, as the daemon does) and sealed in group envelopes. What a sender pays once per session (every 100 messages, 7 days, or
    // secret).
    let device = Device::new();
    let key = SenderKey::new(&alice, id, [0; 32], &group::new_session());
    for members in [8usize, 64, 256, 1024] {
        let others: Vec<(AccountKey, [u8; 32], [u8; 32])> = (1..members)
            .map(|_| {
                let d = Device::new();
                (
                    Identity::generate(&mut rng).public(),
                    d.session_key(),
                    d.fallback_key(),
                )
            })
            .collect();
        let share = |sessions: &mut Vec<Pairwise>, rng: &mut StdRng| {
            let (bundle_key, sealed) = group::SenderKeys::seal(&key, rng).unwrap();
            let boxes = others
                .iter()
                .zip(sessions.iter_mut())
                .map(|((k, identity, fallback), p)| {
                    let ct = p
                        .encrypt(&device, identity, fallback, bundle_key.as_ref())
                        .unwrap();
                    (*k, ct)
                })
                .collect();
            group::SenderKeys::placed(
                &secret,
                id,
                alice.public(),
                sealed,
                boxes,
                group::MAX_SHARED_BUNDLE_BYTES,
            )
            .into_iter()
            .map(|(_, b)| group::seal_payload(&secret, &Payload::SenderKeys(b), rng).unwrap())
            .map(|e| e.len())
            .collect::<Vec<usize>>()
        };
        let sizes = share(
            &mut others.iter().map(|_| Pairwise::new()).collect(),
            &mut rng,
        );
        eprintln!(
            "group/share_sender_key_{members}_members: {} group envelopes, {} bytes, the largest {} bytes",
            sizes.len(),
            sizes.iter().sum::<usize>(),
            sizes.iter().max().unwrap_or(&0)
        );
        g.bench_function(
            format!("share_sender_key_{members}_members_new_sessions"),
            |b| {
                b.iter_batched(
                    || others.iter().map(|_| Pairwise::new()).collect::<Vec<_>>(),
                    |mut sessions| share(&mut sessions, &mut rng),
                    BatchSize::LargeInput,
                )
            },
        );
        let mut sessions: Vec<Pairwise> = others.iter().map(|_| Pairwise::new()).collect();
        share(&mut sessions, &mut rng);
        g.bench_function(
            format!("share_sender_key_{members}_members_sessions_held"),
            |b| b.iter(|| share(&mut sessions, &mut rng)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
