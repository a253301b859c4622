//! The log of a group's changes and its replay: which changes apply, in what order, and
//! the state they leave (docs/protocol.md §14.1).

use super::*;

/// A member as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub seal_key: [u8; 32],
    pub olm: OlmKeys,
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
            olm: m.olm,
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
