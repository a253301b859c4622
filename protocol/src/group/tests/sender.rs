//! Sender keys: Megolm sessions signed by their member, shared over pairwise Olm sessions
//! in bundles, and split among the key dead drops for a large group.

use super::*;

#[test]
fn megolm_sender_keys_open_only_with_their_signature_and_only_forwards() {
    let alice = User::new("alice", 1);
    let eve = User::new("eve", 4);
    let group = GroupId([1; 16]);
    let mut session = new_session();
    let early = Sent::encrypt(group, alice.key(), &mut session, b"before you joined");
    let key = SenderKey::new(&alice.id, group, [5; 32], &session);
    let mut inbound = key.open().unwrap();
    let sent = Sent::encrypt(group, alice.key(), &mut session, b"hello");
    let (plain, index) = sent.decrypt(&mut inbound).unwrap();
    assert_eq!(plain, b"hello");
    assert_eq!(index, 1);
    // The key was shared at index 1: the message before it does not decrypt.
    assert!(early.decrypt(&mut inbound).is_err());
    // A key claimed for alice but signed by eve.
    let mut forged = SenderKey::new(&eve.id, group, [5; 32], &new_session());
    forged.member = alice.key();
    assert!(matches!(forged.open(), Err(GroupError::BadSignature)));
    // Alice's key moved to another secret's change.
    let mut moved = key.clone();
    moved.key_change = [6; 32];
    assert!(matches!(moved.open(), Err(GroupError::BadSignature)));
    // A message of another session.
    let other = Sent::encrypt(group, alice.key(), &mut new_session(), b"x");
    assert!(other.decrypt(&mut inbound).is_err());
}

#[test]
fn a_sender_key_travels_to_each_member_over_its_own_olm_session() {
    let mut alice = User::new("alice", 1);
    let mut bob = User::new("bob", 2);
    let carol = User::new("carol", 3);
    let group = GroupId([1; 16]);
    let mut rng = rng();
    let secret = GroupSecret::generate(&mut rng);
    let mut session = new_session();
    let key = SenderKey::new(&alice.id, group, [5; 32], &session);
    let (bundle_key, sealed) = SenderKeys::seal(&key, &mut rng).unwrap();
    // Alice's sessions with bob and carol, started from the keys their member records carry.
    let mut to_bob = Pairwise::new();
    let mut to_carol = Pairwise::new();
    let (b, c) = (bob.olm(), carol.olm());
    let boxes = vec![
        (
            bob.key(),
            to_bob
                .encrypt(&alice.device, &b.identity, &b.fallback, bundle_key.as_ref())
                .unwrap(),
        ),
        (
            carol.key(),
            to_carol
                .encrypt(&alice.device, &c.identity, &c.fallback, bundle_key.as_ref())
                .unwrap(),
        ),
    ];
    let bundles = SenderKeys::bundles(group, alice.key(), sealed, boxes);
    assert_eq!(bundles.len(), 1);
    let env = seal_payload(&secret, &Payload::SenderKeys(bundles[0].clone()), &mut rng).unwrap();
    let Payload::SenderKeys(got) = open_payload(&secret, &env).unwrap() else {
        panic!("not a sender-key bundle");
    };
    // Bob opens his own box with the session it starts, and reads alice's next message.
    let mut from_alice = Pairwise::new();
    let mine: Vec<_> = got.boxes_for(&bob.key()).collect();
    assert_eq!(mine.len(), 1);
    let opened = from_alice
        .decrypt(&mut bob.device, &alice.olm().identity, mine[0])
        .unwrap();
    let mut inbound = got.open(&opened).unwrap().open().unwrap();
    let sent = Sent::encrypt(group, alice.key(), &mut session, b"hello");
    assert_eq!(sent.decrypt(&mut inbound).unwrap().0, b"hello");
    // Carol's box does not open with bob's device, nor bob's as from someone else.
    let carols: Vec<_> = got.boxes_for(&carol.key()).collect();
    assert!(Pairwise::new()
        .decrypt(&mut bob.device, &alice.olm().identity, carols[0])
        .is_err());
    assert!(Pairwise::new()
        .decrypt(&mut bob.device, &carol.olm().identity, mine[0])
        .is_err());
    // Eve, whom alice did not name, has no box; a wrong bundle key opens nothing, nor does
    // the sealed key moved to another sender's bundle.
    assert_eq!(got.boxes_for(&User::new("eve", 4).key()).count(), 0);
    assert!(matches!(got.open(&[7; 32]), Err(GroupError::Unopenable)));
    let mut moved = got.clone();
    moved.member = carol.key();
    assert!(moved.open(&opened).is_err());
    // A second key on the same session: no longer a new session for bob.
    let second = SenderKey::new(&alice.id, group, [6; 32], &new_session());
    let (second_key, second_sealed) = SenderKeys::seal(&second, &mut rng).unwrap();
    let ct = to_bob
        .encrypt(&alice.device, &b.identity, &b.fallback, second_key.as_ref())
        .unwrap();
    let opened = from_alice
        .decrypt(&mut bob.device, &alice.olm().identity, &ct)
        .unwrap();
    let bundle = &SenderKeys::bundles(group, alice.key(), second_sealed, vec![(bob.key(), ct)])[0];
    assert_eq!(bundle.open(&opened).unwrap(), second);
    // A member's newer fallback key: signed by the member, refused if changed.
    alice.device.rotate_fallback_key();
    let keys = MemberKeys::new(&alice.id, group, alice.olm(), 7);
    keys.verify().unwrap();
    let mut forged = keys.clone();
    forged.olm.fallback = carol.olm().fallback;
    assert!(matches!(forged.verify(), Err(GroupError::BadSignature)));
}

/// `bundle_key` in a box from `from` to each of `n` new members (each a fresh device and
/// account), over a new Olm session each.
fn boxes_for(
    from: &User,
    bundle_key: &[u8],
    n: usize,
    rng: &mut StdRng,
) -> Vec<(AccountKey, crate::session::Ciphertext)> {
    (0..n)
        .map(|_| {
            let other = Device::new();
            let ct = Pairwise::new()
                .encrypt(
                    &from.device,
                    &other.session_key(),
                    &other.fallback_key(),
                    bundle_key,
                )
                .unwrap();
            (Identity::generate(rng).public(), ct)
        })
        .collect()
}

#[test]
fn sender_keys_for_a_full_group_fit_few_envelopes() {
    let alice = User::new("alice", 1);
    let group = GroupId([1; 16]);
    let mut rng = rng();
    let secret = GroupSecret::generate(&mut rng);
    let key = SenderKey::new(&alice.id, group, [5; 32], &new_session());
    let (bundle_key, sealed) = SenderKeys::seal(&key, &mut rng).unwrap();
    let boxes = boxes_for(&alice, bundle_key.as_ref(), MAX_MEMBERS - 1, &mut rng);
    let bundles = SenderKeys::bundles(group, alice.key(), sealed, boxes);
    assert!(bundles.len() <= 4, "{} bundles", bundles.len());
    assert_eq!(
        bundles.iter().map(|b| b.boxes.len()).sum::<usize>(),
        MAX_MEMBERS - 1
    );
    for b in bundles {
        b.check().unwrap();
        let env = seal_payload(&secret, &Payload::SenderKeys(b), &mut rng).unwrap();
        assert!(env.len() <= crate::envelope::MAX_BYTES);
    }
}

/// A sender key for many members is split among the key dead drops: each member's box is
/// in the bundle of its bucket under the secret and in no other, so that a member fetches
/// one small envelope, not every member's box; a small group's stays one bundle at the
/// group's dead drop.
#[test]
fn a_large_sender_key_is_split_among_the_key_drops_by_bucket() {
    let alice = User::new("alice", 1);
    let group = GroupId([1; 16]);
    let mut rng = rng();
    let secret = GroupSecret::generate(&mut rng);
    let key = SenderKey::new(&alice.id, group, [5; 32], &new_session());
    let (bundle_key, sealed) = SenderKeys::seal(&key, &mut rng).unwrap();
    let small = boxes_for(&alice, bundle_key.as_ref(), 7, &mut rng);
    let placed = SenderKeys::placed(
        &secret,
        group,
        alice.key(),
        sealed.clone(),
        small,
        MAX_SHARED_BUNDLE_BYTES,
    );
    assert_eq!(placed.len(), 1);
    assert_eq!(
        placed[0].0, None,
        "a small group's bundle stays at the group's drop"
    );

    let boxes = boxes_for(&alice, bundle_key.as_ref(), 255, &mut rng);
    let members: Vec<AccountKey> = boxes.iter().map(|(k, _)| *k).collect();
    let placed = SenderKeys::placed(
        &secret,
        group,
        alice.key(),
        sealed,
        boxes,
        MAX_SHARED_BUNDLE_BYTES,
    );
    assert!(placed
        .iter()
        .all(|(b, _)| b.is_some_and(|b| b < KEY_BUCKETS)));
    assert!(placed.len() > 8, "{} bundles", placed.len());
    for m in &members {
        let bucket = secret.key_bucket(m);
        let holding: Vec<Option<u8>> = placed
            .iter()
            .filter(|(_, b)| b.boxes_for(m).next().is_some())
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(
            holding,
            [Some(bucket)],
            "one box, in its own bucket's bundle"
        );
    }
    for (_, b) in &placed {
        b.check().unwrap();
        let env = seal_payload(&secret, &Payload::SenderKeys(b.clone()), &mut rng).unwrap();
        assert!(
            env.len() <= 16 * 1024,
            "a bundle of 255 members' takes {}",
            env.len()
        );
        assert_eq!(b.open(bundle_key.as_ref()).unwrap(), key);
    }
    // Buckets are drawn anew with each secret, and their drops differ from the group's.
    let next = GroupSecret::generate(&mut rng);
    assert!(members
        .iter()
        .any(|m| secret.key_bucket(m) != next.key_bucket(m)));
    let drops: BTreeSet<[u8; 32]> = (0..KEY_BUCKETS)
        .map(|b| *secret.key_drop_secret(b).bytes())
        .chain([*secret.drop_secret().bytes()])
        .collect();
    assert_eq!(drops.len(), usize::from(KEY_BUCKETS) + 1);
}
