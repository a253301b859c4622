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
//!   shares the session key, in a [`SenderKey`] signed by its account key, with each other
//!   current member over a pairwise Olm session started from that member's card keys
//!   ([`OlmKeys`]): [`SenderKeys`] bundles the Olm messages, inside group envelopes under
//!   the current secret. Only current members can read it, each only with its own session.
//!   A new secret means a new session.
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
/// Members added by one change at most (so that a change fits one invitation part: 64
/// members of up to 200 bytes each, 12.8 KB).
pub const MAX_ADDED: usize = 64;
/// The largest encoded change (a rekey for [`MAX_MEMBERS`] members fits).
pub const MAX_CHANGE_BYTES: usize = 60 * 1024;
/// The largest payload of one group envelope.
pub const MAX_PAYLOAD_BYTES: usize = 62 * 1024;
/// Messages a sender encrypts with one Megolm session before it starts another.
pub const SESSION_MESSAGES: u32 = 100;
/// The longest a sender uses one Megolm session.
pub const SESSION_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The key dead drops of a group secret: a sender key too large for one small envelope is
/// left in bundles, one per key dead drop, each for the members whose bucket it is
/// ([`GroupSecret::key_bucket`]), so that a member fetches its own bundle, not everyone's.
pub const KEY_BUCKETS: u8 = 16;
/// The largest sender-key bundle left at the group's dead drop itself (where every member
/// fetches it); a larger one is split among the key dead drops.
pub const MAX_SHARED_BUNDLE_BYTES: usize = 8 * 1024;

/// Bytes of a sealed secret for one member: the secret and the AEAD tag.
const BOX_BYTES: usize = 32 + 16;

const CHANGE_DOMAIN: &[u8] = b"sotto/group/change/v1";
const SENDER_KEY_DOMAIN: &[u8] = b"sotto/group/sender-key/v1";
const MEMBER_KEYS_DOMAIN: &[u8] = b"sotto/group/member-keys/v1";
const ID_DOMAIN: &[u8] = b"sotto/group/id/v1";
const REKEY_INFO: &[u8] = b"sotto/group/rekey/v1";
const DROP_INFO: &[u8] = b"sotto/group/drop/v1";
const KEY_DROP_INFO: &[u8] = b"sotto/group/key-drop/v1";
const KEY_BUCKET_INFO: &[u8] = b"sotto/group/key-bucket/v1";
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
/// to, its Olm keys, and the name its card gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub account: AccountKey,
    pub seal_key: [u8; 32],
    pub olm: OlmKeys,
    pub name: String,
}

/// A member's Olm keys, from its card: the identity key and the fallback key. The other
/// members start the pairwise Olm sessions its sender keys travel over with these (the
/// fallback key only to start one; a newer one comes in a [`MemberKeys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OlmKeys {
    pub identity: [u8; 32],
    pub fallback: [u8; 32],
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
                    "an add names 1 to 64 members with names of at most 64 bytes",
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

/// The first 8 bytes of an account key: how a rekey box or a sender-key box names its
/// member.
pub fn tag(key: &AccountKey) -> [u8; 8] {
    let mut t = [0u8; 8];
    t.copy_from_slice(&key.0[..8]);
    t
}

mod envelope;
mod keys;
mod log;
mod sender;

pub use envelope::{chunk_changes, open_payload, seal_payload, Payload};
pub use keys::GroupSecret;
pub use log::{Log, MemberState, State};
pub use sender::{
    new_session, pickle_inbound, pickle_session, unpickle_inbound, unpickle_session, MemberKeys,
    SenderKey, SenderKeys, Sent,
};

#[cfg(test)]
mod tests;
