use super::*;
use crate::session::{Device, Pairwise};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng};

/// A user: account identity, seal key and Olm device.
struct User {
    id: Identity,
    seal: SealKey,
    device: Device,
    name: &'static str,
}

impl User {
    fn new(name: &'static str, seed: u8) -> User {
        User {
            id: Identity::from_seed(&[seed; 32]),
            seal: SealKey::from_secret(&[seed.wrapping_add(100); 32]),
            device: Device::new(),
            name,
        }
    }

    fn olm(&self) -> OlmKeys {
        OlmKeys {
            identity: self.device.session_key(),
            fallback: self.device.fallback_key(),
        }
    }

    fn member(&self) -> Member {
        Member {
            account: self.id.public(),
            seal_key: self.seal.public(),
            olm: self.olm(),
            name: self.name.into(),
        }
    }

    fn key(&self) -> AccountKey {
        self.id.public()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// A rekey of a fresh secret to the members `state` would have after `op` (the caller
/// names them).
fn rekey_to(members: &[&User], rng: &mut StdRng) -> (GroupSecret, Rekey) {
    let secret = GroupSecret::generate(rng);
    let to: Vec<(AccountKey, [u8; 32])> =
        members.iter().map(|u| (u.key(), u.seal.public())).collect();
    let rekey = secret.rekey(&to, rng).unwrap();
    (secret, rekey)
}

fn create(by: &User, others: &[&User], rng: &mut StdRng) -> (Log, GroupSecret) {
    let nonce = [9u8; 16];
    let id = GroupId::derive(&by.key(), &nonce);
    let mut all = vec![by];
    all.extend_from_slice(others);
    let (secret, rekey) = rekey_to(&all, rng);
    let change = Change::new(
        &by.id,
        id,
        0,
        Vec::new(),
        1,
        Op::Create {
            nonce,
            name: "friends".into(),
            description: String::new(),
            members: all.iter().map(|u| u.member()).collect(),
        },
        Some(rekey),
    )
    .unwrap();
    let mut log = Log::new(id);
    assert!(log.insert(change).unwrap());
    (log, secret)
}

/// alice, bob and carol.
fn three() -> (User, User, User) {
    (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("carol", 3),
    )
}

/// A group alice made with bob and carol, bob made admin.
fn with_two_admins(alice: &User, bob: &User, carol: &User, rng: &mut StdRng) -> Log {
    let (mut log, _) = create(alice, &[bob, carol], rng);
    log.insert(change(alice, &log, Op::MakeAdmin(bob.key()), None))
        .unwrap();
    log
}

fn change(by: &User, log: &Log, op: Op, rekey: Option<Rekey>) -> Change {
    Change::new(
        &by.id,
        log.id(),
        log.next_lamport(),
        log.heads(),
        2,
        op,
        rekey,
    )
    .unwrap()
}

#[test]
fn the_creator_is_admin_and_every_member_opens_the_secret_nobody_else() {
    let mut rng = rng();
    let (alice, bob, carol, eve) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("carol", 3),
        User::new("eve", 4),
    );
    let (log, secret) = create(&alice, &[&bob, &carol], &mut rng);
    let state = log.state().unwrap();
    assert_eq!(state.members.len(), 3);
    assert!(state.is_admin(&alice.key()));
    assert!(!state.is_admin(&bob.key()));
    assert_eq!(state.name, "friends");
    let rekey = log
        .by_hash(&state.key_change.unwrap())
        .unwrap()
        .rekey
        .clone()
        .unwrap();
    for u in [&alice, &bob, &carol] {
        let opened = GroupSecret::open_rekey(&rekey, &u.key(), &u.seal).unwrap();
        assert_eq!(opened.bytes(), secret.bytes());
    }
    assert!(GroupSecret::open_rekey(&rekey, &eve.key(), &eve.seal).is_none());
    // Eve's key with bob's tag: the AEAD binds the box to bob's account and seal key.
    assert!(GroupSecret::open_rekey(&rekey, &bob.key(), &eve.seal).is_none());
    assert!(state.uncovered(&log).is_empty());
}

#[test]
fn a_forged_or_tampered_change_is_refused_and_a_non_admin_change_is_skipped() {
    let mut rng = rng();
    let (alice, bob, eve) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("eve", 4),
    );
    let (mut log, _) = create(&alice, &[&bob], &mut rng);
    // Tampered: the op changed after signing.
    let mut c = change(&alice, &log, Op::Rename("new".into()), None);
    c.op = Op::Rename("evil".into());
    assert!(matches!(log.insert(c), Err(GroupError::BadSignature)));
    // Claimed by alice, signed by eve.
    let mut c = change(&eve, &log, Op::Rename("evil".into()), None);
    c.author = alice.key();
    assert!(matches!(log.insert(c), Err(GroupError::BadSignature)));
    // Another group.
    let mut other = change(&alice, &log, Op::Rename("x".into()), None);
    other.group = GroupId([0; 16]);
    assert!(matches!(log.insert(other), Err(GroupError::OtherGroup)));
    // A membership change without a rekey.
    assert!(Change::new(
        &alice.id,
        log.id(),
        1,
        log.heads(),
        0,
        Op::Remove(bob.key()),
        None
    )
    .is_err());
    // Signed properly by a member who is not an admin, and by a stranger: kept in the
    // log (they verify) but skipped by the replay.
    let (_, rekey) = rekey_to(&[&alice, &bob, &eve], &mut rng);
    let bobs_add = change(&bob, &log, Op::Add(vec![eve.member()]), Some(rekey));
    let bobs_hash = bobs_add.hash();
    let create_hash = log.changes().next().unwrap().hash();
    log.insert(bobs_add).unwrap();
    log.insert(change(&eve, &log, Op::Rename("eve's".into()), None))
        .unwrap();
    let state = log.state().unwrap();
    assert!(!state.is_member(&eve.key()));
    assert_eq!(state.name, "friends");
    assert_eq!(state.skipped, 2);
    // The secret bob's skipped add sealed to alice is not the group's, nor one to keep.
    assert_eq!(state.key_change, Some(create_hash));
    assert!(!state.rekeys.contains(&bobs_hash));
    // A create change for this id by someone else cannot be made.
    let forged = Change::new(
        &eve.id,
        log.id(),
        0,
        Vec::new(),
        0,
        Op::Create {
            nonce: [9; 16],
            name: "mine".into(),
            description: String::new(),
            members: vec![eve.member()],
        },
        Some(rekey_to(&[&eve], &mut rng).1),
    )
    .unwrap();
    assert!(matches!(log.insert(forged), Err(GroupError::Invalid(_))));
}

#[test]
fn a_removed_member_cannot_open_the_next_secret_and_a_new_one_no_earlier_secret() {
    let mut rng = rng();
    let (alice, bob, carol, dave) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("carol", 3),
        User::new("dave", 5),
    );
    let (mut log, first) = create(&alice, &[&bob, &carol], &mut rng);
    let first_rekey = log.changes().next().unwrap().rekey.clone().unwrap();
    let (second, rekey) = rekey_to(&[&alice, &bob], &mut rng);
    log.insert(change(&alice, &log, Op::Remove(carol.key()), Some(rekey)))
        .unwrap();
    let (third, rekey) = rekey_to(&[&alice, &bob, &dave], &mut rng);
    log.insert(change(
        &alice,
        &log,
        Op::Add(vec![dave.member()]),
        Some(rekey),
    ))
    .unwrap();
    let state = log.state().unwrap();
    assert!(!state.is_member(&carol.key()));
    assert!(state.is_member(&dave.key()));
    let rekeys: Vec<Rekey> = log.changes().filter_map(|c| c.rekey.clone()).collect();
    assert_eq!(rekeys.len(), 3);
    // Carol holds the first secret only.
    assert!(GroupSecret::open_rekey(&rekeys[1], &carol.key(), &carol.seal).is_none());
    assert!(GroupSecret::open_rekey(&rekeys[2], &carol.key(), &carol.seal).is_none());
    // Dave holds the third only.
    assert!(GroupSecret::open_rekey(&first_rekey, &dave.key(), &dave.seal).is_none());
    assert!(GroupSecret::open_rekey(&rekeys[1], &dave.key(), &dave.seal).is_none());
    let d = GroupSecret::open_rekey(&rekeys[2], &dave.key(), &dave.seal).unwrap();
    assert_eq!(d.bytes(), third.bytes());
    // Each secret has its own dead drops.
    let addrs: BTreeSet<_> = [&first, &second, &third]
        .iter()
        .map(|s| s.drop_secret().drop_key(5).address())
        .collect();
    assert_eq!(addrs.len(), 3);
    // What is sealed under the second secret does not open with the first or the third.
    let env = seal_payload(
        &second,
        &Payload::Change(log.changes().last().unwrap().clone()),
        &mut rng,
    )
    .unwrap();
    assert!(padding::is_bucket(env.len()));
    assert!(matches!(
        open_payload(&first, &env),
        Err(GroupError::Unopenable)
    ));
    assert!(matches!(
        open_payload(&third, &env),
        Err(GroupError::Unopenable)
    ));
    assert!(open_payload(&second, &env).is_ok());
    // Its hint (after version and nonce) is bound to it: changed, it opens under no secret.
    let mut hinted = env.clone();
    hinted[13] ^= 1;
    assert!(matches!(
        open_payload(&second, &hinted),
        Err(GroupError::Unopenable)
    ));
    // And two envelopes under one secret carry unrelated hints (a fresh nonce each).
    let again = seal_payload(
        &second,
        &Payload::Change(log.changes().last().unwrap().clone()),
        &mut rng,
    )
    .unwrap();
    assert_ne!(env[13..17], again[13..17]);
}

#[test]
fn the_last_admin_leaving_makes_the_longest_standing_member_admin() {
    let mut rng = rng();
    let (alice, bob, carol) = three();
    let (mut log, _) = create(&alice, &[&bob], &mut rng);
    let (_, rekey) = rekey_to(&[&alice, &bob, &carol], &mut rng);
    log.insert(change(
        &alice,
        &log,
        Op::Add(vec![carol.member()]),
        Some(rekey),
    ))
    .unwrap();
    assert!(
        Change::new(
            &alice.id,
            log.id(),
            9,
            log.heads(),
            0,
            Op::Leave,
            Some(rekey_to(&[&bob], &mut rng).1)
        )
        .is_err(),
        "a leaver does not choose the next secret"
    );
    log.insert(change(&alice, &log, Op::Leave, None)).unwrap();
    let state = log.state().unwrap();
    assert!(state.is_admin(&bob.key()), "bob was there first");
    assert!(!state.is_admin(&carol.key()));
    // The secret was sealed to alice too: bob (the admin) rekeys.
    assert!(state.stale_key(&log));
    assert_eq!(state.rekeying_admin(), Some(bob.key()));
    let (_, rekey) = rekey_to(&[&bob, &carol], &mut rng);
    log.insert(change(&bob, &log, Op::Rekey, Some(rekey)))
        .unwrap();
    assert!(!log.state().unwrap().stale_key(&log));
}

#[test]
fn after_a_leave_every_admin_has_a_turn_to_rekey_counted_from_the_leave() {
    let mut rng = rng();
    let (alice, bob, carol) = three();
    let mut log = with_two_admins(&alice, &bob, &carol, &mut rng);
    let state = log.state().unwrap();
    assert_eq!(state.stale_since(&log), None, "not stale: nobody left");
    let leave = Change::new(
        &carol.id,
        log.id(),
        log.next_lamport(),
        log.heads(),
        5_000,
        Op::Leave,
        None,
    );
    log.insert(leave.unwrap()).unwrap();
    log.insert(change(&alice, &log, Op::Rename("later".into()), None))
        .unwrap();
    let state = log.state().unwrap();
    assert_eq!(
        state.stale_since(&log),
        Some(5_000),
        "from the leave, not the rename"
    );
    let mut ranks = [
        state.rekey_rank(&alice.key()).unwrap(),
        state.rekey_rank(&bob.key()).unwrap(),
    ];
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1], "one turn each");
    let first = if state.rekey_rank(&alice.key()) == Some(0) {
        alice.key()
    } else {
        bob.key()
    };
    assert_eq!(state.rekeying_admin(), Some(first));
    assert_eq!(state.rekey_rank(&carol.key()), None, "gone");
    // Whoever rekeys, the key is fresh for all.
    let second = if first == alice.key() { &bob } else { &alice };
    let (_, rekey) = rekey_to(&[&alice, &bob], &mut rng);
    log.insert(change(second, &log, Op::Rekey, Some(rekey)))
        .unwrap();
    let state = log.state().unwrap();
    assert!(!state.stale_key(&log));
    assert_eq!(state.stale_since(&log), None);
}

/// A change by `by` made on the log `seen` (its heads and lamport), at `at_ms`.
fn change_on(by: &User, seen: &Log, op: Op, rekey: Option<Rekey>) -> Change {
    Change::new(
        &by.id,
        seen.id(),
        seen.next_lamport(),
        seen.heads(),
        7,
        op,
        rekey,
    )
    .unwrap()
}

#[test]
fn a_removed_admin_cannot_act_before_its_removal_by_signing_with_an_old_lamport() {
    let mut rng = rng();
    let (alice, bob, carol) = three();
    let mut log = with_two_admins(&alice, &bob, &carol, &mut rng);
    // What bob had seen when alice went on without him.
    let seen = log.clone();
    log.insert(change(&alice, &log, Op::Rename("later".into()), None))
        .unwrap();
    let (_, rekey) = rekey_to(&[&alice, &carol], &mut rng);
    let removal = change(&alice, &log, Op::Remove(bob.key()), Some(rekey));
    let removal_lamport = removal.lamport;
    log.insert(removal).unwrap();
    // Removed, bob signs changes after what he had seen, with lamports below his removal's:
    // removing alice, making carol admin, renaming, and rekeying to himself and carol.
    let (_, rekey) = rekey_to(&[&bob, &carol], &mut rng);
    let backdated = [
        change_on(&bob, &seen, Op::Remove(alice.key()), Some(rekey)),
        change_on(&bob, &seen, Op::MakeAdmin(carol.key()), None),
        change_on(&bob, &seen, Op::Rename("bob's".into()), None),
    ];
    for c in &backdated {
        assert!(c.lamport < removal_lamport, "placed before the removal");
        log.insert(c.clone()).unwrap();
    }
    let state = log.state().unwrap();
    assert!(!state.is_member(&bob.key()), "bob is out");
    assert!(state.is_admin(&alice.key()), "alice stays, and admin");
    assert!(!state.is_admin(&carol.key()));
    assert_eq!(state.name, "later");
    assert!(
        !state.rekeys.contains(&backdated[0].hash()),
        "bob's secret is not the group's"
    );
    assert_eq!(state.skipped, 3);
    // alice's next change does not name bob's.
    let heads = log.heads();
    assert!(backdated.iter().all(|c| !heads.contains(&c.hash())));
}

#[test]
fn of_two_admins_removing_each_other_at_once_the_senior_stays() {
    let mut rng = rng();
    let (alice, bob, carol) = three();
    let mut log = with_two_admins(&alice, &bob, &carol, &mut rng);
    // Neither saw the other's; bob's even takes an earlier place (a lower lamport is his to
    // pick).
    let (_, r1) = rekey_to(&[&alice, &carol], &mut rng);
    let (_, r2) = rekey_to(&[&bob, &carol], &mut rng);
    let by_alice = Change::new(
        &alice.id,
        log.id(),
        log.next_lamport() + 1,
        log.heads(),
        7,
        Op::Remove(bob.key()),
        Some(r1),
    )
    .unwrap();
    let by_bob = change(&bob, &log, Op::Remove(alice.key()), Some(r2));
    for c in [by_bob, by_alice] {
        log.insert(c).unwrap();
    }
    let state = log.state().unwrap();
    assert!(
        state.is_admin(&alice.key()),
        "alice made bob admin: she is senior"
    );
    assert!(!state.is_member(&bob.key()));

    // Removals that do not remove each other both stand, whoever is senior: bob removes
    // alice while she removes carol.
    let mut log = with_two_admins(&alice, &bob, &carol, &mut rng);
    let (_, r1) = rekey_to(&[&alice, &bob], &mut rng);
    let (_, r2) = rekey_to(&[&bob, &carol], &mut rng);
    let a = change(&alice, &log, Op::Remove(carol.key()), Some(r1));
    let b = change(&bob, &log, Op::Remove(alice.key()), Some(r2));
    log.insert(a).unwrap();
    log.insert(b).unwrap();
    let state = log.state().unwrap();
    assert_eq!(state.members.keys().collect::<Vec<_>>(), vec![&bob.key()]);
    assert!(state.is_admin(&bob.key()));
}

#[test]
fn a_change_waits_for_its_parents() {
    let mut rng = rng();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let (mut log, _) = create(&alice, &[&bob], &mut rng);
    let mut ahead = log.clone();
    let first = change(&alice, &ahead, Op::Rename("one".into()), None);
    ahead.insert(first.clone()).unwrap();
    let second = change(&alice, &ahead, Op::Describe("two".into()), None);
    // The second arrives first: kept, not applied.
    log.insert(second).unwrap();
    let state = log.state().unwrap();
    assert_eq!((state.name.as_str(), state.skipped), ("friends", 1));
    assert_eq!(
        log.heads().len(),
        1,
        "only the create: nothing names a change that waits"
    );
    log.insert(first).unwrap();
    let state = log.state().unwrap();
    assert_eq!(
        (state.name.as_str(), state.description.as_str()),
        ("one", "two")
    );
    assert_eq!(state.skipped, 0);
    // A parent that names a change of a later lamport, or none at all, never applies.
    let mut bad = change(&alice, &log, Op::Rename("x".into()), None);
    bad.lamport = 1;
    assert!(
        log.insert(bad).is_err(),
        "no longer verifies: the lamport is signed"
    );
}

#[test]
fn a_member_added_beside_a_concurrent_rekey_is_reported_uncovered() {
    let mut rng = rng();
    let (alice, bob, carol, dave) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("carol", 3),
        User::new("dave", 5),
    );
    let (mut log, _) = create(&alice, &[&bob], &mut rng);
    let lamport = log.next_lamport();
    // Alice adds carol while bob (made admin) adds dave: same lamport, neither saw the other.
    log.insert(change(&alice, &log, Op::MakeAdmin(bob.key()), None))
        .unwrap();
    let lamport = lamport + 1;
    let (_, r1) = rekey_to(&[&alice, &bob, &carol], &mut rng);
    let (_, r2) = rekey_to(&[&alice, &bob, &dave], &mut rng);
    let c1 = Change::new(
        &alice.id,
        log.id(),
        lamport,
        log.heads(),
        3,
        Op::Add(vec![carol.member()]),
        Some(r1),
    )
    .unwrap();
    let c2 = Change::new(
        &bob.id,
        log.id(),
        lamport,
        log.heads(),
        3,
        Op::Add(vec![dave.member()]),
        Some(r2),
    )
    .unwrap();
    log.insert(c1).unwrap();
    log.insert(c2).unwrap();
    let state = log.state().unwrap();
    assert_eq!(state.members.len(), 4);
    assert_eq!(state.uncovered(&log).len(), 1, "the loser's new member");
}

#[test]
fn the_log_is_bounded() {
    let mut rng = rng();
    let alice = User::new("alice", 1);
    let (mut log, _) = create(&alice, &[], &mut rng);
    let root = log.heads();
    for i in 1..MAX_CHANGES {
        let c = Change::new(
            &alice.id,
            log.id(),
            i as u64,
            root.clone(),
            0,
            Op::Rename(format!("{i}")),
            None,
        )
        .unwrap();
        log.insert(c).unwrap();
    }
    let one_more = Change::new(
        &alice.id,
        log.id(),
        5,
        root.clone(),
        0,
        Op::Rename("more".into()),
        None,
    )
    .unwrap();
    assert!(matches!(log.insert(one_more), Err(GroupError::LogFull)));
    // A lamport no log can reach is refused whatever the log holds (no overflow either).
    let mut fresh = Log::new(log.id());
    fresh.insert(log.changes().next().unwrap().clone()).unwrap();
    for lamport in [MAX_CHANGES as u64, u64::MAX] {
        let c = Change::new(
            &alice.id,
            log.id(),
            lamport,
            root.clone(),
            0,
            Op::Rename("far".into()),
            None,
        )
        .unwrap();
        assert!(matches!(fresh.insert(c), Err(GroupError::Invalid(_))));
    }
    assert_eq!(fresh.next_lamport(), 1);
}

#[test]
fn a_rekey_for_the_largest_group_fits_one_change() {
    let mut rng = rng();
    let users: Vec<(Identity, SealKey)> = (0..MAX_MEMBERS)
        .map(|_| (Identity::generate(&mut rng), SealKey::generate(&mut rng)))
        .collect();
    let to: Vec<(AccountKey, [u8; 32])> = users
        .iter()
        .map(|(id, seal)| (id.public(), seal.public()))
        .collect();
    let secret = GroupSecret::generate(&mut rng);
    let rekey = secret.rekey(&to, &mut rng).unwrap();
    // With as many parents as a change may name.
    let parents: Vec<[u8; 32]> = (0..MAX_PARENTS as u8).map(|i| [i; 32]).collect();
    let c = Change::new(
        &users[0].0,
        GroupId([1; 16]),
        3,
        parents,
        0,
        Op::Rekey,
        Some(rekey.clone()),
    )
    .unwrap();
    let env = seal_payload(&secret, &Payload::Change(c), &mut rng).unwrap();
    assert!(env.len() <= crate::envelope::MAX_BYTES);
    let (id, seal) = users.last().unwrap();
    assert!(GroupSecret::open_rekey(&rekey, &id.public(), seal).is_some());
}

/// Random changes by two admins and a member, some of which the replay must skip: each
/// made after the base log's heads and a random choice of the earlier ones (so that many
/// are concurrent, and some backdated: an old lamport after old parents).
fn ops(users: &[User], picks: &[(u8, u8, u8)], rng: &mut StdRng, log: &Log) -> Vec<Change> {
    let base = log.heads();
    let base_lamport = log.next_lamport();
    let mut made: Vec<Change> = Vec::new();
    for (i, (who, what, whom)) in picks.iter().enumerate() {
        let by = &users[usize::from(*who) % 3];
        let target = &users[usize::from(*whom) % users.len()];
        let all: Vec<&User> = users.iter().collect();
        let op = match what % 6 {
            0 => Op::Add(vec![target.member()]),
            1 => Op::Remove(target.key()),
            2 => Op::Rename(format!("name {i}")),
            3 => Op::MakeAdmin(target.key()),
            4 => Op::Leave,
            _ => Op::Describe(format!("about {i}")),
        };
        let rekey = op.rekeys().then(|| rekey_to(&all, rng).1);
        let mut parents: Vec<[u8; 32]> = base.clone();
        let mut lamport = base_lamport;
        for earlier in &made {
            if rng.gen_bool(0.4) {
                parents.push(earlier.hash());
                lamport = lamport.max(earlier.lamport + 1);
            }
        }
        parents.sort_unstable();
        parents.dedup();
        parents.truncate(MAX_PARENTS);
        // Sometimes a lamport above what the parents ask (as after a skipped change).
        let lamport = lamport + u64::from(*what % 2);
        made.push(Change::new(&by.id, log.id(), lamport, parents, 0, op, rekey).unwrap());
    }
    made
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn members_holding_the_same_changes_hold_the_same_state(
        picks in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..16),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let users: Vec<User> = (0..5).map(|i| User::new("u", i + 1)).collect();
        let (mut base, _) = create(&users[0], &[&users[1], &users[2]], &mut rng);
        base.insert(change(&users[0], &base, Op::MakeAdmin(users[1].key()), None)).unwrap();
        let changes = ops(&users, &picks, &mut rng, &base);
        let mut states = Vec::new();
        for _ in 0..3 {
            let mut order = changes.clone();
            order.shuffle(&mut rng);
            let mut log = base.clone();
            for c in order {
                log.insert(c).unwrap();
            }
            states.push(log.state().unwrap());
        }
        prop_assert_eq!(&states[0], &states[1]);
        prop_assert_eq!(&states[0], &states[2]);
        prop_assert!(states[0].members.is_empty() || states[0].members.values().any(|m| m.admin));
    }

    #[test]
    fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let secret = GroupSecret::from_bytes([3; 32]);
        let _ = open_payload(&secret, &bytes);
        let mut padded = bytes.clone();
        padded.resize(512, 0);
        let _ = open_payload(&secret, &padded);
        let _ = codec::decode_limited::<Change>(&bytes, MAX_CHANGE_BYTES as u64);
    }
}

#[test]
fn a_change_travels_without_its_rekey_and_keeps_its_place() {
    let mut rng = rng();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let (log, _) = create(&alice, &[&bob], &mut rng);
    let full = log.changes().next().unwrap().clone();
    let stripped = full.stripped();
    assert!(stripped.rekey.is_none());
    stripped.verify().unwrap();
    assert_eq!(stripped.hash(), full.hash());
    // A stripped copy first, the full one later: the rekey is kept.
    let mut other = Log::new(log.id());
    assert!(other.insert(stripped).unwrap());
    assert!(!other.insert(full.clone()).unwrap());
    assert!(other.changes().next().unwrap().rekey.is_some());
    // A rekey swapped for another breaks the signature.
    let mut swapped = full;
    swapped.rekey = Some(rekey_to(&[&alice], &mut rng).1);
    assert!(matches!(swapped.verify(), Err(GroupError::BadSignature)));
}

mod sender;
