//! Groups: membership as a log of signed changes every member replays the same way, a
//! group secret that changes with every change of membership, and per-member Megolm sender
//! keys.
//!
//! - **Changes.** Membership, roles, name and description change only through a
//!   [`Change`] signed by its author's account key. Every member keeps the group's changes
//!   in a [`Log`] and computes the group's [`State`] by replaying them in one order,
//!   `(lamport, hash)`, checking at each step that the author may make the change (an admin,
//!   or, to leave or rekey, a member). A change that may not be made at its place is skipped
//!   by everyone alike. So members that hold the same changes hold the same state, whatever
//!   order the changes arrived in: concurrent changes converge. Each change names its
//!   `parents` (what its author had seen), and a removal wins over the changes of the
//!   removed made concurrently with it, so that a removed admin cannot act "before" its
//!   removal by picking an old lamport (`Log::analyse` has the rules; docs/protocol.md §14.1).
//! - **Secret.** A change that adds or removes a member carries a [`Rekey`]: a
//!   fresh group secret sealed to the seal key (from the card) of each member of the group
//!   after the change, and to nobody else. The last rekey in replay order names the
//!   current secret. A removed member never learns the next secret; a new member learns
//!   no earlier one. A member who leaves does not choose the next secret: an admin rekeys
//!   after it ([`State::stale_key`]). The secret yields the group's dead drops (rotating per epoch like a
//!   pair's) and the key of the group envelopes left there ([`seal_payload`]).
//! - **Sender keys.** Each member encrypts its messages with its own Megolm session and
//!   announces the session key in a [`SenderKey`] signed by its account key, inside a group
//!   envelope under the current secret: only current members can read it. A new secret
//!   means a new session.
//!
//! Sans-I/O: time and randomness come in as arguments. (The judgements of removals are
//! remembered process-wide by hash, a pure function's memo.)

use std::collections::{BTreeMap, BTreeSet};

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload as AeadPayload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use vodozemac::megolm::{GroupSession, InboundGroupSession};
use vodozemac::megolm::{
    GroupSessionPickle, InboundGroupSessionPickle, MegolmMessage, SessionConfig, SessionKey,
};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey};
use zeroize::Zeroizing;

use crate::codec::{self, CodecError};
use crate::deaddrop;
use crate::envelope::SealKey;
use crate::identity::{AccountKey, Identity};
use crate::padding;

/// The group formats this code writes and reads.
pub const VERSION: u8 = 1;
/// Members at most.
pub const MAX_MEMBERS: usize = 1_024;
/// Changes a group's log holds at most.
pub const MAX_CHANGES: usize = 4_096;
/// The longest group name and description, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 100;
pub const MAX_DESCRIPTION_BYTES: usize = 1_024;
/// The longest member name (from the member's card).
pub const MAX_MEMBER_NAME_BYTES: usize = 64;
/// Parents a change names at most (the newest heads of its author's log).
pub const MAX_PARENTS: usize = 16;
/// Members added by one change at most (so that a change fits one invitation part).
pub const MAX_ADDED: usize = 128;
/// The largest encoded change (a rekey for [`MAX_MEMBERS`] members fits).
pub const MAX_CHANGE_BYTES: usize = 60 * 1024;
/// The largest payload of one group envelope.
pub const MAX_PAYLOAD_BYTES: usize = 62 * 1024;
/// Messages a sender encrypts with one Megolm session before it starts another.
pub const SESSION_MESSAGES: u32 = 100;
/// The longest a sender uses one Megolm session.
pub const SESSION_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Bytes of a sealed secret for one member: the secret and the AEAD tag.
const BOX_BYTES: usize = 32 + 16;

const CHANGE_DOMAIN: &[u8] = b"sotto/group/change/v1";
const SENDER_KEY_DOMAIN: &[u8] = b"sotto/group/sender-key/v1";
const ID_DOMAIN: &[u8] = b"sotto/group/id/v1";
const REKEY_INFO: &[u8] = b"sotto/group/rekey/v1";
const DROP_INFO: &[u8] = b"sotto/group/drop/v1";
const ENVELOPE_INFO: &[u8] = b"sotto/group/envelope/v1";
const HINT_INFO: &[u8] = b"sotto/group/hint/v1";
/// Bytes of a group envelope's hint ([`hint`]).
const HINT_BYTES: usize = 4;

/// Why a group message or change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the change is for another group")]
    OtherGroup,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the group's log is full ({MAX_CHANGES} changes)")]
    LogFull,
    #[error("the group envelope does not open with this secret")]
    Unopenable,
    #[error("megolm: {0}")]
    Megolm(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A group's id: random, bound to its creator (see [`GroupId::derive`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// The id of a group `creator` made with `nonce`: nobody else can make a create change
    /// for it.
    pub fn derive(creator: &AccountKey, nonce: &[u8; 16]) -> Self {
        let d = Sha256::new()
            .chain_update(ID_DOMAIN)
            .chain_update(creator.0)
            .chain_update(nonce)
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        GroupId(id)
    }

    /// Parse the 32-hex-digit form printed by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        codec::parse_hex16(s).map(GroupId)
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        codec::write_hex(&self.0, f)
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({self})")
    }
}

/// A member as a change names it: the account, the seal key its group secrets are sealed
/// to, and the name its card gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub account: AccountKey,
    pub seal_key: [u8; 32],
    pub name: String,
}

/// What a change does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Make the group; the author, who must be one of `members`, is its first admin.
    /// `nonce` makes the id.
    Create {
        nonce: [u8; 16],
        name: String,
        description: String,
        members: Vec<Member>,
    },
    Add(Vec<Member>),
    Remove(AccountKey),
    Leave,
    Rename(String),
    Describe(String),
    MakeAdmin(AccountKey),
    /// A new secret and nothing else (after a member left, or when a member was not
    /// covered by the last rekey).
    Rekey,
}

impl Op {
    /// Does this change carry a new secret? Every change of who is in the group but a
    /// leave: the member who leaves must not choose the next secret. After a leave an
    /// admin rekeys ([`State::stale_key`]).
    pub fn rekeys(&self) -> bool {
        matches!(
            self,
            Op::Create { .. } | Op::Add(_) | Op::Remove(_) | Op::Rekey
        )
    }
}

/// A fresh group secret, sealed to each member's seal key: X25519 between a one-off key
/// and the member's, HKDF-SHA-256, ChaCha20-Poly1305 (the member's account key as
/// associated data). Boxes name their member by the first 8 bytes of its account key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekey {
    pub ephemeral: [u8; 32],
    pub boxes: Vec<([u8; 8], Vec<u8>)>,
}

/// One signed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub group: GroupId,
    /// One more than the highest lamport of its parents.
    pub lamport: u64,
    /// The hashes of the changes its author's log ended in when it was made (the heads of
    /// the log: applied changes no other applied change names), sorted, at most
    /// [`MAX_PARENTS`]; none for the create change. What the author had seen is these and
    /// their ancestors.
    pub parents: Vec<[u8; 32]>,
    pub author: AccountKey,
    /// Milliseconds since the Unix epoch, by the author's clock (shown, never trusted).
    pub at_ms: u64,
    pub op: Op,
    /// The SHA-256 of the rekey's encoding: what the signature covers, so that a change can
    /// travel without its rekey once the rekey has done its work ([`Change::stripped`]).
    pub rekey_digest: Option<[u8; 32]>,
    pub rekey: Option<Rekey>,
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct Signed<'a> {
    group: &'a GroupId,
    lamport: u64,
    parents: &'a [[u8; 32]],
    author: &'a AccountKey,
    at_ms: u64,
    op: &'a Op,
    rekey_digest: &'a Option<[u8; 32]>,
}

fn rekey_digest(rekey: &Rekey) -> [u8; 32] {
    Sha256::digest(codec::encode(rekey).unwrap_or_default()).into()
}

impl Change {
    /// A change by `identity` after `parents` (see [`Log::heads`] and
    /// [`Log::next_lamport`]), signed, with `rekey` if given.
    pub fn new(
        identity: &Identity,
        group: GroupId,
        lamport: u64,
        parents: Vec<[u8; 32]>,
        at_ms: u64,
        op: Op,
        rekey: Option<Rekey>,
    ) -> Result<Self, GroupError> {
        let mut change = Change {
            group,
            lamport,
            parents,
            author: identity.public(),
            at_ms,
            op,
            rekey_digest: rekey.as_ref().map(rekey_digest),
            rekey,
            signature: Vec::new(),
        };
        change.check_bounds()?;
        change.signature = identity
            .sign(CHANGE_DOMAIN, &change.signed_bytes()?)
            .to_vec();
        Ok(change)
    }

    fn signed_bytes(&self) -> Result<Vec<u8>, GroupError> {
        Ok(codec::encode_limited(
            &Signed {
                group: &self.group,
                lamport: self.lamport,
                parents: &self.parents,
                author: &self.author,
                at_ms: self.at_ms,
                op: &self.op,
                rekey_digest: &self.rekey_digest,
            },
            MAX_CHANGE_BYTES as u64,
        )?)
    }

    /// The change's hash: its place among changes of the same lamport, and its name. The
    /// same with or without the rekey.
    pub fn hash(&self) -> [u8; 32] {
        let signed = self.signed_bytes().unwrap_or_default();
        Sha256::new()
            .chain_update(&signed)
            .chain_update(&self.signature)
            .finalize()
            .into()
    }

    /// The change without its rekey (still verifiable).
    pub fn stripped(&self) -> Change {
        Change {
            rekey: None,
            ..self.clone()
        }
    }

    fn check_bounds(&self) -> Result<(), GroupError> {
        let member_ok = |m: &Member| m.name.len() <= MAX_MEMBER_NAME_BYTES;
        match &self.op {
            Op::Create {
                name,
                description,
                members,
                ..
            } => {
                if name.is_empty() || name.len() > MAX_NAME_BYTES {
                    return Err(GroupError::Invalid("a group name is 1 to 100 bytes"));
                }
                if description.len() > MAX_DESCRIPTION_BYTES {
                    return Err(GroupError::Invalid("the description is too long"));
                }
                if members.len() > MAX_ADDED || !members.iter().all(member_ok) {
                    return Err(GroupError::Invalid("too many members, or a name too long"));
                }
            }
            Op::Add(members)
                if members.is_empty()
                    || members.len() > MAX_ADDED
                    || !members.iter().all(member_ok) =>
            {
                return Err(GroupError::Invalid(
                    "an add names 1 to 128 members with names of at most 64 bytes",
                ));
            }
            Op::Rename(name) if name.is_empty() || name.len() > MAX_NAME_BYTES => {
                return Err(GroupError::Invalid("a group name is 1 to 100 bytes"));
            }
            Op::Describe(d) if d.len() > MAX_DESCRIPTION_BYTES => {
                return Err(GroupError::Invalid("the description is too long"));
            }
            _ => {}
        }
        let creates = matches!(self.op, Op::Create { .. });
        if self.parents.len() > MAX_PARENTS
            || !self.parents.windows(2).all(|w| w[0] < w[1])
            || creates != self.parents.is_empty()
        {
            return Err(GroupError::Invalid(
                "a change names 1 to 16 sorted parents, a create change none",
            ));
        }
        if let Some(r) = &self.rekey {
            if r.boxes.len() > MAX_MEMBERS || r.boxes.iter().any(|(_, b)| b.len() != BOX_BYTES) {
                return Err(GroupError::Invalid("a malformed rekey"));
            }
        }
        if self.op.rekeys() != self.rekey_digest.is_some()
            || (self.rekey.is_some() && self.rekey_digest.is_none())
        {
            return Err(GroupError::Invalid(
                "a change of membership must carry a rekey, and only such a change",
            ));
        }
        Ok(())
    }

    /// Check the bounds and the author's signature (not whether the author may make it:
    /// that depends on the state, see [`Log::state`]).
    pub fn verify(&self) -> Result<(), GroupError> {
        self.check_bounds()?;
        if let Op::Create { nonce, .. } = &self.op {
            if GroupId::derive(&self.author, nonce) != self.group {
                return Err(GroupError::Invalid("a create change for another group id"));
            }
        }
        if let (Some(rekey), Some(digest)) = (&self.rekey, &self.rekey_digest) {
            if &rekey_digest(rekey) != digest {
                return Err(GroupError::BadSignature);
            }
        }
        self.author
            .verify(CHANGE_DOMAIN, &self.signed_bytes()?, &self.signature)
            .map_err(|_| GroupError::BadSignature)
    }
}

/// A member as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub seal_key: [u8; 32],
    pub name: String,
    pub admin: bool,
    /// The place `(lamport, hash)` of the change that made the member admin: its
    /// seniority among admins (smaller: more senior).
    pub admin_since: Option<(u64, [u8; 32])>,
    /// The lamport of the change that added the member.
    pub since: u64,
}

/// A group as the replay of its log leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub creator: AccountKey,
    pub created_ms: u64,
    pub members: BTreeMap<AccountKey, MemberState>,
    /// The hash of the change whose rekey holds the current secret.
    pub key_change: Option<[u8; 32]>,
    /// The hashes of every change that applied with a rekey: the only secrets a member
    /// takes (a rekey in a change the replay skips is a forgery's, or a removed member's).
    pub rekeys: BTreeSet<[u8; 32]>,
    /// Changes skipped in the replay: their author could not make them there.
    pub skipped: usize,
    /// The highest lamport in the log.
    pub lamport: u64,
}

impl State {
    pub fn is_member(&self, key: &AccountKey) -> bool {
        self.members.contains_key(key)
    }

    pub fn is_admin(&self, key: &AccountKey) -> bool {
        self.members.get(key).is_some_and(|m| m.admin)
    }

    /// Was the current secret sealed to someone who is no member now (a member who left),
    /// or not to every member? Then an admin should rekey. False when the log no longer
    /// holds that rekey.
    pub fn stale_key(&self, log: &Log) -> bool {
        let Some(rekey) = self
            .key_change
            .and_then(|h| log.by_hash(&h))
            .and_then(|c| c.rekey.as_ref())
        else {
            return false;
        };
        let members: BTreeSet<[u8; 8]> = self.members.keys().map(tag).collect();
        let covered: BTreeSet<[u8; 8]> = rekey.boxes.iter().map(|(t, _)| *t).collect();
        members != covered
    }

    /// The admin that rekeys when the key is stale: the one with the smallest account key,
    /// so that admins do not all rekey at once.
    pub fn rekeying_admin(&self) -> Option<AccountKey> {
        self.members.iter().find(|(_, m)| m.admin).map(|(k, _)| *k)
    }

    /// Where `me` stands among the admins, by account key, for rekeying a stale key: 0 for
    /// [`State::rekeying_admin`], who rekeys as soon as it takes the change that made the
    /// key stale; `n` for the next admins, each of whom rekeys once the key has been stale
    /// for `n` grace periods (the admins before it may be offline). `None`: not an admin.
    pub fn rekey_rank(&self, me: &AccountKey) -> Option<usize> {
        self.members
            .iter()
            .filter(|(_, m)| m.admin)
            .position(|(k, _)| k == me)
    }

    /// Since when the key is stale, if it is: the earliest time (by its author's clock) of
    /// the changes of membership (leaves, adds) after the one that holds the current
    /// secret. An author's clock may be
    /// wrong; at worst an admin rekeys early (one more rekey) or its turn comes late (the
    /// admins before it still rekey in theirs).
    pub fn stale_since(&self, log: &Log) -> Option<u64> {
        if !self.stale_key(log) {
            return None;
        }
        let key = self.key_change?;
        let place = log.changes.iter().find(|(_, c)| c.hash() == key)?.0;
        log.changes
            .range((
                std::ops::Bound::Excluded(*place),
                std::ops::Bound::Unbounded,
            ))
            .filter(|(_, c)| matches!(c.op, Op::Leave | Op::Add(_)))
            .map(|(_, c)| c.at_ms)
            .min()
    }

    /// Members the current secret was not sealed to (added by a change concurrent with the
    /// last rekey): an admin should rekey. Empty when the log holds that rekey no more.
    pub fn uncovered(&self, log: &Log) -> Vec<AccountKey> {
        let Some(rekey) = self
            .key_change
            .and_then(|h| log.by_hash(&h))
            .and_then(|c| c.rekey.as_ref())
        else {
            return Vec::new();
        };
        let covered: BTreeSet<[u8; 8]> = rekey.boxes.iter().map(|(t, _)| *t).collect();
        self.members
            .keys()
            .filter(|k| !covered.contains(&tag(k)))
            .copied()
            .collect()
    }
}

fn tag(key: &AccountKey) -> [u8; 8] {
    let mut t = [0u8; 8];
    t.copy_from_slice(&key.0[..8]);
    t
}

/// A group's changes, in replay order.
#[derive(Clone, Debug)]
pub struct Log {
    id: GroupId,
    changes: BTreeMap<(u64, [u8; 32]), Change>,
}

impl Log {
    /// An empty log of group `id`.
    pub fn new(id: GroupId) -> Self {
        Log {
            id,
            changes: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Add a change after checking its signature. `Ok(false)`: already there (a copy
    /// with its rekey replaces one without).
    pub fn insert(&mut self, change: Change) -> Result<bool, GroupError> {
        if change.group != self.id {
            return Err(GroupError::OtherGroup);
        }
        change.verify()?;
        let key = (change.lamport, change.hash());
        if let Some(have) = self.changes.get_mut(&key) {
            if have.rekey.is_none() && change.rekey.is_some() {
                *have = change;
            }
            return Ok(false);
        }
        // An honest change's lamport is at most the number of changes its author holds, so
        // below MAX_CHANGES; a larger one would push every later change out of order (and
        // near u64::MAX overflow). The same bound everywhere, so that it cannot split members.
        if change.lamport >= MAX_CHANGES as u64 {
            return Err(GroupError::Invalid("a lamport beyond any log's"));
        }
        if self.changes.len() >= MAX_CHANGES {
            return Err(GroupError::LogFull);
        }
        self.changes.insert(key, change);
        Ok(true)
    }

    /// Add a change read back from this node's own store, whose signature was checked when
    /// it arrived.
    pub fn insert_trusted(&mut self, change: Change) {
        if change.group == self.id && self.changes.len() < MAX_CHANGES {
            self.changes.insert((change.lamport, change.hash()), change);
        }
    }

    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.changes.values()
    }

    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<&Change> {
        self.changes.values().find(|c| &c.hash() == hash)
    }

    /// Drop every rekey but the one that holds the current secret (`current`): the others
    /// did their work when they arrived.
    pub fn strip_rekeys(&mut self, current: Option<[u8; 32]>) {
        for ((_, hash), change) in self.changes.iter_mut() {
            if Some(*hash) != current {
                change.rekey = None;
            }
        }
    }

    /// The lamport for this node's next change: one more than that of the newest of
    /// [`Log::heads`] (0 without a create change).
    pub fn next_lamport(&self) -> u64 {
        self.next().0
    }

    /// The parents of this node's next change: the applied changes no other applied change
    /// names, the newest [`MAX_PARENTS`] of them, sorted.
    pub fn heads(&self) -> Vec<[u8; 32]> {
        self.next().1
    }

    /// [`Log::next_lamport`] and [`Log::heads`] from one replay.
    pub fn next(&self) -> (u64, Vec<[u8; 32]>) {
        let analysis = self.analyse();
        let lamport = analysis
            .heads
            .iter()
            .map(|&i| analysis.dag.changes[i].lamport.saturating_add(1))
            .max()
            .unwrap_or(0);
        let mut heads: Vec<[u8; 32]> = analysis
            .heads
            .iter()
            .map(|&i| analysis.dag.hashes[i])
            .collect();
        heads.sort_unstable();
        (lamport, heads)
    }

    /// Replay the log. `None` until the log holds the group's create change.
    pub fn state(&self) -> Option<State> {
        self.analyse().state
    }

    /// The replay (see the module's documentation and docs/protocol.md §14.1):
    /// 1. changes are taken in `(lamport, hash)` order; a change is *whole* when every
    ///    parent is present and whole with a lower lamport (a create change has none); the
    ///    others wait;
    /// 2. every whole removal (a `Remove`, a `Leave`) is judged in the replay of its own
    ///    causal past, which nothing made later or concurrently can change: *effective* if
    ///    its author could make it there; its author's seniority is the place of the change
    ///    that made that author admin, there;
    /// 3. effective removals are taken most senior author first; one whose author was
    ///    removed by a removal taken before it and concurrent with it (neither had seen the
    ///    other) is void, the others *stand*;
    /// 4. every change concurrent with a standing removal of its author is skipped (unless it
    ///    is a standing removal itself), so
    ///    that a removed admin cannot act "before" its removal by signing a change with
    ///    an old lamport and old parents;
    /// 5. the rest is replayed in order, each change checked against the state at its
    ///    place, but a removal applies only if it stands (and then always).
    fn analyse(&self) -> Analysis<'_> {
        let dag = Dag::of(self);
        let n = dag.changes.len();
        let mut removals: Vec<Option<Removal>> = vec![None; n];
        for i in 0..n {
            let c = dag.changes[i];
            if !dag.whole[i] || !matches!(c.op, Op::Remove(_) | Op::Leave) {
                continue;
            }
            // A whole change's hash fixes its whole past (each names its parents by hash),
            // so a removal is judged once per process.
            if let Some(judged) = judged(&dag.hashes[i]) {
                removals[i] = judged;
                continue;
            }
            let past: Vec<usize> = (0..i).filter(|&j| dag.is_ancestor(j, i)).collect();
            let (before, _) = replay(self.id, &dag, &past, &removals);
            let Some(before) = before else {
                remember(dag.hashes[i], None);
                continue;
            };
            removals[i] = Some(match &c.op {
                Op::Remove(target) => Removal {
                    target: *target,
                    author: c.author,
                    effective: before.is_admin(&c.author)
                        && before.is_member(target)
                        && target != &c.author,
                    seniority: before
                        .members
                        .get(&c.author)
                        .and_then(|m| m.admin_since)
                        .unwrap_or((u64::MAX, [0xff; 32])),
                },
                _ => Removal {
                    target: c.author,
                    author: c.author,
                    effective: before.is_member(&c.author),
                    seniority: (u64::MAX, [0xff; 32]),
                },
            });
            remember(dag.hashes[i], removals[i]);
        }
        let all: Vec<usize> = (0..n).collect();
        let (state, applied) = replay(self.id, &dag, &all, &removals);
        let mut named = vec![false; n];
        for &i in &applied {
            for p in &dag.changes[i].parents {
                if let Some(&j) = dag.index.get(p) {
                    named[j] = true;
                }
            }
        }
        let mut heads: Vec<usize> = applied.into_iter().filter(|&i| !named[i]).collect();
        // Newest first, then cut.
        heads.sort_unstable_by(|a, b| b.cmp(a));
        heads.truncate(MAX_PARENTS);
        Analysis { dag, state, heads }
    }
}

/// Removals judged so far in this process, by hash; at most [`JUDGED`] (then forgotten all
/// at once: they are judged again as needed).
static JUDGEMENTS: std::sync::Mutex<Option<std::collections::HashMap<[u8; 32], Option<Removal>>>> =
    std::sync::Mutex::new(None);
const JUDGED: usize = 65_536;

/// How the removal `hash` was judged, if it was.
fn judged(hash: &[u8; 32]) -> Option<Option<Removal>> {
    let cache = JUDGEMENTS.lock().unwrap_or_else(|p| p.into_inner());
    cache.as_ref().and_then(|m| m.get(hash).copied())
}

fn remember(hash: [u8; 32], removal: Option<Removal>) {
    let mut cache = JUDGEMENTS.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(std::collections::HashMap::new);
    if map.len() >= JUDGED {
        map.clear();
    }
    map.insert(hash, removal);
}

/// What [`Log::analyse`] finds.
struct Analysis<'a> {
    dag: Dag<'a>,
    state: Option<State>,
    /// The heads (indices), newest first.
    heads: Vec<usize>,
}

/// A removal as judged in its own causal past.
#[derive(Clone, Copy, Debug)]
struct Removal {
    /// Who is removed (the author, for a leave).
    target: AccountKey,
    author: AccountKey,
    effective: bool,
    /// Where its author became admin (smaller: more senior); the last place for a leave.
    seniority: (u64, [u8; 32]),
}

/// The log's changes in replay order with their causal order.
struct Dag<'a> {
    changes: Vec<&'a Change>,
    hashes: Vec<[u8; 32]>,
    index: std::collections::HashMap<[u8; 32], usize>,
    /// Every parent present and whole, with a lower lamport.
    whole: Vec<bool>,
    /// For each whole change, the set of its ancestors (a bit per index).
    ancestors: Vec<Vec<u64>>,
}

impl<'a> Dag<'a> {
    fn of(log: &'a Log) -> Self {
        let changes: Vec<&Change> = log.changes.values().collect();
        let hashes: Vec<[u8; 32]> = log.changes.keys().map(|(_, h)| *h).collect();
        let index: std::collections::HashMap<[u8; 32], usize> =
            hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let n = changes.len();
        let words = n.div_ceil(64);
        let mut whole = vec![false; n];
        let mut ancestors = vec![Vec::new(); n];
        for i in 0..n {
            let c = changes[i];
            let mut ok = matches!(c.op, Op::Create { .. }) == c.parents.is_empty();
            let mut set = vec![0u64; words];
            for p in &c.parents {
                match index.get(p) {
                    Some(&j) if whole[j] && changes[j].lamport < c.lamport => {
                        set[j / 64] |= 1 << (j % 64);
                        for (w, a) in set.iter_mut().zip(&ancestors[j]) {
                            *w |= a;
                        }
                    }
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            whole[i] = ok;
            if ok {
                ancestors[i] = set;
            }
        }
        Dag {
            changes,
            hashes,
            index,
            whole,
            ancestors,
        }
    }

    /// Is `a` an ancestor of `b`?
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        self.ancestors[b]
            .get(a / 64)
            .is_some_and(|w| (w >> (a % 64)) & 1 == 1)
    }

    /// Had neither of `a` and `b` seen the other?
    fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.is_ancestor(a, b) && !self.is_ancestor(b, a)
    }
}

/// Replay the changes `subset` (indices in order, causally closed) of `dag` as
/// [`Log::analyse`] says, with `removals` judged for every whole removal among them. The
/// state, and the indices of the changes that applied.
fn replay(
    id: GroupId,
    dag: &Dag<'_>,
    subset: &[usize],
    removals: &[Option<Removal>],
) -> (Option<State>, Vec<usize>) {
    // Effective removals, most senior author first; void if their author was removed by
    // one taken before that they had not seen (nor it them).
    let mut candidates: Vec<(usize, Removal)> = subset
        .iter()
        .filter_map(|&i| removals[i].filter(|r| r.effective).map(|r| (i, r)))
        .collect();
    candidates.sort_by_key(|(i, r)| (r.seniority, *i));
    let mut standing: BTreeMap<AccountKey, Vec<usize>> = BTreeMap::new();
    let mut stands = BTreeSet::new();
    for (d, r) in candidates {
        let void = standing
            .get(&r.author)
            .is_some_and(|es| es.iter().any(|&e| dag.concurrent(d, e)));
        if !void {
            standing.entry(r.target).or_default().push(d);
            stands.insert(d);
        }
    }
    let mut state: Option<State> = None;
    let mut applied = Vec::new();
    let mut skipped = 0;
    for &i in subset {
        let change = dag.changes[i];
        let lamport = change.lamport;
        let hash = dag.hashes[i];
        // A standing removal applies even if its author was removed concurrently by a
        // junior admin (both stand: each had the right where it was made).
        let suppressed = !stands.contains(&i)
            && standing
                .get(&change.author)
                .is_some_and(|ds| ds.iter().any(|&d| dag.concurrent(i, d)));
        if !dag.whole[i] || suppressed {
            skipped += 1;
            if let Some(s) = state.as_mut() {
                s.lamport = lamport;
            }
            continue;
        }
        match state.as_mut() {
            None => match created(id, change, (lamport, hash)) {
                Some(s) => {
                    state = Some(s);
                    applied.push(i);
                }
                None => skipped += 1,
            },
            Some(s) => {
                let ok = match &change.op {
                    Op::Remove(_) | Op::Leave if stands.contains(&i) => {
                        let target = removals[i].map(|r| r.target).unwrap_or(change.author);
                        s.members.remove(&target);
                        ensure_admin(s, (lamport, hash));
                        true
                    }
                    Op::Remove(_) | Op::Leave => false,
                    _ => apply(s, change, (lamport, hash)),
                };
                if ok {
                    if change.rekey_digest.is_some() {
                        s.key_change = Some(hash);
                        s.rekeys.insert(hash);
                    }
                    applied.push(i);
                } else {
                    skipped += 1;
                }
                s.lamport = lamport;
            }
        }
    }
    (
        state.map(|mut s| {
            s.skipped = skipped;
            s
        }),
        applied,
    )
}

/// The state a create change makes, if it is one its author may make.
fn created(id: GroupId, change: &Change, at: (u64, [u8; 32])) -> Option<State> {
    let Op::Create {
        name,
        description,
        members,
        ..
    } = &change.op
    else {
        return None;
    };
    if !members.iter().any(|m| m.account == change.author) {
        return None;
    }
    let mut s = State {
        id,
        name: name.clone(),
        description: description.clone(),
        creator: change.author,
        created_ms: change.at_ms,
        members: BTreeMap::new(),
        key_change: Some(at.1),
        rekeys: BTreeSet::from([at.1]),
        skipped: 0,
        lamport: at.0,
    };
    for m in members {
        add(&mut s, m, at.0);
    }
    if let Some(creator) = s.members.get_mut(&change.author) {
        creator.admin = true;
        creator.admin_since = Some(at);
    }
    Some(s)
}

fn add(s: &mut State, m: &Member, lamport: u64) -> bool {
    if s.members.contains_key(&m.account) {
        return true;
    }
    if s.members.len() >= MAX_MEMBERS {
        return false;
    }
    s.members.insert(
        m.account,
        MemberState {
            seal_key: m.seal_key,
            name: m.name.clone(),
            admin: false,
            admin_since: None,
            since: lamport,
        },
    );
    true
}

/// Apply one change other than a removal at its place `at` in the replay; false (and no
/// effect) if its author may not make it there.
fn apply(s: &mut State, c: &Change, at: (u64, [u8; 32])) -> bool {
    let admin = s.is_admin(&c.author);
    let member = s.is_member(&c.author);
    match &c.op {
        Op::Add(members) if admin => {
            let new: BTreeSet<&AccountKey> = members
                .iter()
                .map(|m| &m.account)
                .filter(|k| !s.members.contains_key(k))
                .collect();
            if s.members.len() + new.len() > MAX_MEMBERS {
                return false;
            }
            for m in members {
                add(s, m, at.0);
            }
            true
        }
        Op::Rename(name) if admin => {
            s.name = name.clone();
            true
        }
        Op::Describe(d) if admin => {
            s.description = d.clone();
            true
        }
        Op::MakeAdmin(key) if admin && s.members.contains_key(key) => {
            if let Some(m) = s.members.get_mut(key) {
                if !m.admin {
                    m.admin = true;
                    m.admin_since = Some(at);
                }
            }
            true
        }
        Op::Rekey if member => true,
        _ => false,
    }
}

/// A group left without an admin makes its longest-standing member one (the smallest
/// `since`, then the smallest key): every member picks the same.
fn ensure_admin(s: &mut State, at: (u64, [u8; 32])) {
    if s.members.values().any(|m| m.admin) {
        return;
    }
    if let Some(key) = s
        .members
        .iter()
        .min_by_key(|(k, m)| (m.since, **k))
        .map(|(k, _)| *k)
    {
        if let Some(m) = s.members.get_mut(&key) {
            m.admin = true;
            m.admin_since = Some(at);
        }
    }
}

/// A group secret. Neither `Debug` nor `Serialize`.
#[derive(Clone)]
pub struct GroupSecret(Zeroizing<[u8; 32]>);

impl GroupSecret {
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(s.as_mut());
        GroupSecret(s)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        GroupSecret(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA-256 output length.
        let _ = Hkdf::<Sha256>::new(None, self.0.as_ref()).expand(info, out.as_mut());
        out
    }

    /// The secret of the group's dead drops under this group secret.
    pub fn drop_secret(&self) -> deaddrop::Secret {
        deaddrop::Secret::from_bytes(*self.derive(DROP_INFO))
    }

    /// Seal this secret to each of `members` (account, seal key).
    pub fn rekey(
        &self,
        members: &[(AccountKey, [u8; 32])],
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Rekey, GroupError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let ephemeral = Curve25519SecretKey::from_slice(&seed);
        let ephemeral_public = Curve25519PublicKey::from(&ephemeral).to_bytes();
        let mut boxes = Vec::with_capacity(members.len());
        for (account, seal) in members {
            let key = box_key(&ephemeral, seal)
                .ok_or(GroupError::Invalid("a member's seal key is not usable"))?;
            let sealed = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
                .encrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    AeadPayload {
                        msg: self.0.as_ref(),
                        aad: &box_aad(&ephemeral_public, account),
                    },
                )
                .map_err(|_| GroupError::Invalid("sealing a secret failed"))?;
            boxes.push((tag(account), sealed));
        }
        Ok(Rekey {
            ephemeral: ephemeral_public,
            boxes,
        })
    }

    /// The secret `rekey` sealed to `me`, if it sealed one.
    pub fn open_rekey(rekey: &Rekey, me: &AccountKey, seal: &SealKey) -> Option<GroupSecret> {
        let (_, sealed) = rekey.boxes.iter().find(|(t, _)| t == &tag(me))?;
        let mine = Curve25519SecretKey::from_slice(&seal.secret_bytes());
        let shared = mine.diffie_hellman(&Curve25519PublicKey::from_bytes(rekey.ephemeral))?;
        let key = hkdf32(shared.as_bytes(), REKEY_INFO);
        let plain = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
            .decrypt(
                Nonce::from_slice(&[0u8; 12]),
                AeadPayload {
                    msg: sealed,
                    aad: &box_aad(&rekey.ephemeral, me),
                },
            )
            .ok()?;
        let bytes: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(GroupSecret::from_bytes(bytes))
    }
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, ikm).expand(info, out.as_mut());
    out
}

fn box_key(ephemeral: &Curve25519SecretKey, seal: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = ephemeral.diffie_hellman(&Curve25519PublicKey::from_bytes(*seal))?;
    Some(hkdf32(shared.as_bytes(), REKEY_INFO))
}

fn box_aad(ephemeral: &[u8; 32], account: &AccountKey) -> Vec<u8> {
    let mut aad = ephemeral.to_vec();
    aad.extend_from_slice(&account.0);
    aad
}

/// A member's Megolm session key, signed by its account key, for the secret made by the
/// change `key_change` (so that a key cannot be resealed under another secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKey {
    pub group: GroupId,
    pub member: AccountKey,
    pub key_change: [u8; 32],
    pub session_key: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SenderKey {
    pub fn new(
        identity: &Identity,
        group: GroupId,
        key_change: [u8; 32],
        session: &GroupSession,
    ) -> Self {
        let session_key = session.session_key().to_bytes();
        let signature = identity
            .sign(
                SENDER_KEY_DOMAIN,
                &sender_key_bytes(&group, &key_change, &session_key),
            )
            .to_vec();
        SenderKey {
            group,
            member: identity.public(),
            key_change,
            session_key,
            signature,
        }
    }

    /// The inbound session, if the signature holds.
    pub fn open(&self) -> Result<InboundGroupSession, GroupError> {
        self.member
            .verify(
                SENDER_KEY_DOMAIN,
                &sender_key_bytes(&self.group, &self.key_change, &self.session_key),
                &self.signature,
            )
            .map_err(|_| GroupError::BadSignature)?;
        let key = SessionKey::from_bytes(&self.session_key)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        Ok(InboundGroupSession::new(&key, SessionConfig::version_1()))
    }
}

fn sender_key_bytes(group: &GroupId, key_change: &[u8; 32], session_key: &[u8]) -> Vec<u8> {
    let mut m = group.0.to_vec();
    m.extend_from_slice(key_change);
    m.extend_from_slice(session_key);
    m
}

/// A group message: content encrypted in its sender's Megolm session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub group: GroupId,
    pub sender: AccountKey,
    pub session_id: String,
    pub megolm: Vec<u8>,
}

impl Sent {
    /// Encrypt `plaintext` in `session`.
    pub fn encrypt(
        group: GroupId,
        sender: AccountKey,
        session: &mut GroupSession,
        plaintext: &[u8],
    ) -> Self {
        Sent {
            group,
            sender,
            session_id: session.session_id(),
            megolm: session.encrypt(plaintext).to_bytes(),
        }
    }

    /// Decrypt with the sender's inbound session: the plaintext and the message index.
    pub fn decrypt(&self, session: &mut InboundGroupSession) -> Result<(Vec<u8>, u32), GroupError> {
        if session.session_id() != self.session_id {
            return Err(GroupError::Invalid("not this session's message"));
        }
        let message = MegolmMessage::from_bytes(&self.megolm)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        let d = session
            .decrypt(&message)
            .map_err(|e| GroupError::Megolm(e.to_string()))?;
        Ok((d.plaintext, d.message_index))
    }
}

/// What one group envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Change(Change),
    SenderKey(SenderKey),
    Message(Sent),
    /// Part of the group's log, without rekeys: left under a new secret after a rekey for
    /// members a concurrent change left out, so that they catch up on changes they missed.
    Changes(Vec<Change>),
}

/// `changes` without their rekeys, in chunks of at most `max_bytes` encoded (a change
/// larger than that gets a chunk of its own).
pub fn chunk_changes(changes: &[Change], max_bytes: usize) -> Vec<Vec<Change>> {
    let mut chunks: Vec<Vec<Change>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for c in changes {
        let c = c.stripped();
        let size = codec::encode(&c).map(|b| b.len()).unwrap_or(0);
        if bytes + size > max_bytes && chunks.last().is_some_and(|l| !l.is_empty()) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = chunks.last_mut() {
            last.push(c);
        }
    }
    chunks
}

/// `payload` in a group envelope under `secret`: a version byte, a random 12-byte nonce,
/// ChaCha20-Poly1305 of the padded encoding, the whole one of the envelope bucket sizes.
pub fn seal_payload(
    secret: &GroupSecret,
    payload: &Payload,
    rng: &mut impl rand::RngCore,
) -> Result<Vec<u8>, GroupError> {
    let plain = codec::encode_limited(payload, MAX_PAYLOAD_BYTES as u64)?;
    let total = padding::bucket_for(HEADER_BYTES + 16 + 4 + plain.len())
        .ok_or(GroupError::Invalid("the payload is too large"))?;
    let padded = Zeroizing::new(
        padding::pad_to(&plain, total - HEADER_BYTES - 16)
            .ok_or(GroupError::Invalid("the payload is too large"))?,
    );
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let hint = hint(secret, &nonce);
    let key = secret.derive(ENVELOPE_INFO);
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            AeadPayload {
                msg: padded.as_slice(),
                aad: &aad(&hint),
            },
        )
        .map_err(|_| GroupError::Invalid("sealing failed"))?;
    let mut out = Vec::with_capacity(total);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&hint);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Version, nonce and hint.
const HEADER_BYTES: usize = 1 + 12 + HINT_BYTES;

/// A group envelope's hint: the first bytes of `HKDF-SHA-256(secret, "sotto/group/hint/v1"
/// ‖ nonce)`. Unlinkable without the secret (a fresh nonce each time), it lets a node that
/// holds many secrets tell in a microsecond which one an envelope may be sealed under,
/// instead of trying to decrypt the whole envelope under each.
fn hint(secret: &GroupSecret, nonce: &[u8; 12]) -> [u8; HINT_BYTES] {
    let mut info = Vec::with_capacity(HINT_INFO.len() + nonce.len());
    info.extend_from_slice(HINT_INFO);
    info.extend_from_slice(nonce);
    let full = secret.derive(&info);
    let mut out = [0u8; HINT_BYTES];
    out.copy_from_slice(&full[..HINT_BYTES]);
    out
}

/// The associated data of a group envelope: its version and hint.
fn aad(hint: &[u8; HINT_BYTES]) -> [u8; 1 + HINT_BYTES] {
    let mut out = [VERSION; 1 + HINT_BYTES];
    out[1..].copy_from_slice(hint);
    out
}

/// Open a group envelope under `secret`.
pub fn open_payload(secret: &GroupSecret, envelope: &[u8]) -> Result<Payload, GroupError> {
    if !padding::is_bucket(envelope.len()) {
        return Err(GroupError::Invalid("not an envelope size"));
    }
    if envelope.len() < HEADER_BYTES + 16 || envelope[0] != VERSION {
        return Err(GroupError::Unopenable);
    }
    let (header, sealed) = envelope.split_at(HEADER_BYTES);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[1..13]);
    let mut hinted = [0u8; HINT_BYTES];
    hinted.copy_from_slice(&header[13..]);
    // Not under this secret, known without decrypting (or, one time in 2^32, found by the
    // AEAD below).
    if hint(secret, &nonce) != hinted {
        return Err(GroupError::Unopenable);
    }
    let key = secret.derive(ENVELOPE_INFO);
    let padded = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
            .decrypt(
                Nonce::from_slice(&nonce),
                AeadPayload {
                    msg: sealed,
                    aad: &aad(&hinted),
                },
            )
            .map_err(|_| GroupError::Unopenable)?,
    );
    let plain = padding::unpad(&padded).ok_or(GroupError::Invalid("bad padding"))?;
    Ok(codec::decode_limited(plain, MAX_PAYLOAD_BYTES as u64)?)
}

/// A new Megolm session for this member's messages.
pub fn new_session() -> GroupSession {
    GroupSession::new(SessionConfig::version_1())
}

/// A session pickled under `key`, for the store.
pub fn pickle_session(session: &GroupSession, key: &[u8; 32]) -> String {
    session.pickle().encrypt(key)
}

pub fn unpickle_session(pickle: &str, key: &[u8; 32]) -> Result<GroupSession, GroupError> {
    GroupSessionPickle::from_encrypted(pickle, key)
        .map(GroupSession::from_pickle)
        .map_err(|e| GroupError::Megolm(e.to_string()))
}

/// A member's session pickled under `key`, for the store.
pub fn pickle_inbound(session: &InboundGroupSession, key: &[u8; 32]) -> String {
    session.pickle().encrypt(key)
}

pub fn unpickle_inbound(pickle: &str, key: &[u8; 32]) -> Result<InboundGroupSession, GroupError> {
    InboundGroupSessionPickle::from_encrypted(pickle, key)
        .map(InboundGroupSession::from_pickle)
        .map_err(|e| GroupError::Megolm(e.to_string()))
}

#[cfg(test)]
mod tests;
