//! Fetching: on start, when woken (back online, or a contact's node connected), and every
//! fetch interval, this node
//! looks in each of its dead drops (its intro dead drop, and each contact's pairwise drops
//! of the epochs since its last complete fetch) at every host, hands what it finds to the
//! service, deletes what was taken, and sends each sender one receipt. It looks in the dead
//! drops of its groups too (of the newest two secrets it holds), at every host, from where
//! it last read there; group envelopes stay there for every other member,
//! until they expire. The hosts found for a dead drop are reused for a few minutes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;

use sotto_protocol::content::MessageId;
use sotto_protocol::deaddrop::{Address, DropKey};
use sotto_protocol::envelope;
use sotto_protocol::group::GroupId;
use sotto_protocol::identity::AccountKey;
use sotto_protocol::mailbox::{self, Delete, Fetch, Request, Response};
use sotto_protocol::wire;
use tokio::sync::watch;

use super::{Client, Error, Target};
use crate::clock::unix_ms;
use crate::store::Batch;

/// The most epochs back a fetch looks, however long the node was away.
pub const MAX_EPOCHS_BACK: u64 = 16;
/// The most pages fetched from one host for one dead drop in one round.
const MAX_PAGES: usize = 64;
/// The most envelopes taken from one host for one dead drop in one round: an honest host
/// holds at most its per-dead-drop quota (1,000 by default); the rest waits for the next
/// round.
pub const MAX_ENVELOPES_PER_ROUND: usize = 1_000;
/// Envelopes in a row that do not open at a pairwise dead drop (each with the pair's
/// deposit proof: a contact's junk) after which a round stops asking a host for that dead
/// drop (what is left waits for the next round).
pub const MAX_JUNK_IN_A_ROW: usize = 32;
/// The least time between two fetch rounds that new connections woke.
const MIN_WOKEN_GAP: Duration = Duration::from_secs(5);
/// Dead drops fetched at once in a round.
const DROPS_AT_ONCE: usize = 4;
/// How long a burst of new connections may settle before the fetch they woke.
const SETTLE: Duration = Duration::from_millis(200);
/// How long a fetch reuses the hosts it found for a dead drop (a host that does not answer
/// is looked up again at once): most rounds then need no lookup, which through a private
/// path costs a Kademlia lookup at an exit. Addresses change with the epoch anyway.
pub const FETCH_HOSTS_TTL: Duration = Duration::from_secs(180);
/// How long after an epoch begins a group's dead drop of the epoch before is still read,
/// at least (ms; three fetch intervals if that is longer). A deposit's address is chosen
/// when the attempt starts, and an attempt through a private path gives up within a minute.
const GROUP_EPOCH_GRACE: u64 = 5 * 60 * 1_000;

/// The least stamp this node asks of an envelope fetched from its intro dead drop: its own
/// hosting difficulty, but never more than the default (hosts that ask the default must
/// not be taken for forgers by a node that asks more).
pub fn stamp_floor(own: u8) -> u8 {
    own.min(sotto_protocol::pow::DEFAULT_DIFFICULTY)
}

/// What kind of dead drop a fetch looks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The intro dead drop: anyone with a stamp deposits there.
    Intro,
    /// A contact's pairwise drop: only the pair can deposit there (junk in it is the host's
    /// doing).
    Pairwise,
    /// A group's drop under one of its secrets (the hash of the change that made it): only
    /// members deposit there, nobody deletes.
    Group(GroupId, [u8; 32]),
}

impl Kind {
    fn proven(self) -> bool {
        !matches!(self, Kind::Intro)
    }
}

/// Where this node last read each group dead drop at each host, kept at most this many.
const MAX_CURSORS: usize = 4_096;

impl Client {
    /// The addresses and keys of every dead drop this node should look in now, each with
    /// its kind.
    async fn own_drops(&self) -> Result<Vec<(Address, DropKey, Kind)>, Error> {
        let service = &self.service;
        let now = unix_ms();
        let current = service.epoch_at(now);
        let last = service.store().last_fetch_epoch()?.unwrap_or(current);
        let first = last
            .saturating_sub(1)
            .max(current.saturating_sub(MAX_EPOCHS_BACK))
            .min(current.saturating_sub(1));
        let mut keys = Vec::new();
        let me = if let Some(account) = service.account_lock().lock().await.as_ref() {
            let intro = DropKey::from_seed(&account.intro.seed());
            keys.push((intro.intro_address(), intro, Kind::Intro));
            account.identity.public()
        } else {
            return Ok(keys);
        };
        for (_, c) in service.store().contacts()? {
            if !c.presence_sent {
                continue;
            }
            let secret = c.inbox.secret();
            keys.extend((first..=current).map(|e| {
                let key = secret.drop_key(e);
                (key.address(), key, Kind::Pairwise)
            }));
        }
        // A group's dead drop of the epoch before is read only near the epochs' boundary
        // (a deposit begun before it may land after it) and until a complete round in this
        // epoch: nothing is left there later but by depositors whose clocks are late.
        let grace = GROUP_EPOCH_GRACE.max(3 * service.mailbox_config().fetch_interval_ms);
        let group_first = if last < current || service.epoch_at(now.saturating_sub(grace)) < current
        {
            current.saturating_sub(1)
        } else {
            current
        };
        for (group, hash, secret) in service.group_drops(&me)? {
            keys.extend((group_first..=current).map(|e| {
                let key = secret.drop_key(e);
                (key.address(), key, Kind::Group(group, hash))
            }));
        }
        Ok(keys)
    }

    /// Fetch every dead drop of this node from its hosts, hand what arrived to the service,
    /// and delete it at the host. Returns how many envelopes were taken.
    ///
    /// Every dead drop is read at every host; a group dead drop, where envelopes stay for
    /// every member until they expire, from where this node last read there.
    pub async fn fetch_round(&self) -> Result<usize, Error> {
        let started = unix_ms();
        // Dead drops a few at a time, and each from all its hosts at once: through private
        // paths every page is a round trip through three relays, and a round that waited
        // for each in turn would take as many round trips as pages.
        let drops = self.own_drops().await?;
        let results: Vec<(usize, bool)> = futures::stream::iter(drops)
            .map(|(address, key, kind)| async move {
                let targets = self.fetch_targets(&address).await;
                if let Kind::Group(..) = kind {
                    let taken = self.fetch_group_drop(&targets, &address, &key, kind).await;
                    // Group dead drops are read by cursor, whatever the epochs of the last
                    // complete round: they do not keep a round from being complete.
                    return (taken, true);
                }
                let fetched = futures::future::join_all(
                    targets
                        .iter()
                        .map(|target| self.fetch_from(target, &address, &key, kind)),
                )
                .await;
                let taken: usize = fetched.iter().map(|(n, _)| n).sum();
                if fetched.iter().any(|(_, ok)| !ok) {
                    // A host that did not answer may have left: look the hosts up again.
                    self.fetch_hosts.forget(&address);
                }
                // This node alone is no proof that the dead drop was looked at.
                let reached = targets
                    .iter()
                    .zip(&fetched)
                    .any(|(t, (_, ok))| *ok && matches!(t, Target::Remote(..)));
                (taken, reached)
            })
            .buffer_unordered(DROPS_AT_ONCE)
            .collect()
            .await;
        let taken: usize = results.iter().map(|(n, _)| n).sum();
        let complete = results.iter().all(|(_, reached)| *reached);
        if !complete {
            // Some dead drop was out of reach: look at the same epochs again next time.
            return Ok(taken);
        }
        let mut batch = Batch::new();
        batch.put_last_fetch_epoch(self.service.epoch_at(started));
        self.service.store().apply(&batch)?;
        Ok(taken)
    }

    /// The hosts of `address` for a fetch: the ones found within [`FETCH_HOSTS_TTL`], else
    /// looked up (and kept when the lookup found a full set of remote hosts).
    async fn fetch_targets(&self, address: &Address) -> Vec<Target> {
        let replicas = self.service.mailbox_config().replicas.max(1);
        self.hosts_cached(&self.fetch_hosts, address, |t| {
            t.len() >= replicas && t.iter().any(|t| matches!(t, Target::Remote(..)))
        })
        .await
    }

    /// Read a group dead drop at every host. Returns how many envelopes were handled.
    async fn fetch_group_drop(
        &self,
        targets: &[Target],
        address: &Address,
        key: &DropKey,
        kind: Kind,
    ) -> usize {
        // Every host, as before f72e6f2: with one host a round, a member whose chosen host
        // lacked an envelope waited a fetch interval for the next, and a daemon group test
        // timed out once in CI.
        let fetched = futures::future::join_all(
            targets
                .iter()
                .map(|target| self.fetch_from(target, address, key, kind)),
        )
        .await;
        if fetched.iter().any(|(_, ok)| !ok) {
            self.fetch_hosts.forget(address);
        }
        fetched.iter().map(|(n, _)| n).sum()
    }

    /// Fetch one dead drop from one host. Returns how many envelopes were taken, and
    /// whether the host answered.
    ///
    /// A host can answer a fetch with anything, and each envelope costs this node a Noise
    /// open under the account lock. So a round takes at most [`MAX_ENVELOPES_PER_ROUND`]
    /// from a host, and opens only what someone paid to deposit. At a pairwise dead drop
    /// (`pairwise`) every envelope must come with the deposit proof of the drop's key,
    /// which only the pair can make: one without it was made up by the host; it is not
    /// opened, and the page counts towards a ban of the host (`net::Guard::strike`). Junk
    /// with a valid proof was deposited by the contact: deleted, and after
    /// [`MAX_JUNK_IN_A_ROW`] in a row the round stops. At the intro dead drop an envelope
    /// must carry a stamp of at least [`stamp_floor`] bits: one without is deleted unopened
    /// (no strike: a host may take weaker stamps by its own policy).
    async fn fetch_from(
        &self,
        target: &Target,
        address: &Address,
        key: &DropKey,
        kind: Kind,
    ) -> (usize, bool) {
        let address = *address;
        let pairwise = kind.proven();
        // Proofs name the host they are for, so that no host can replay them at another.
        let host_id = target.id_bytes(&self.me());
        let cursor = (address, host_id.clone());
        let mut after = match kind {
            Kind::Group(..) => self.group_cursor(&cursor),
            _ => None,
        };
        let mut done = Vec::new();
        let mut answered = false;
        let mut handled = 0usize;
        let mut junk_in_a_row = 0usize;
        let floor = stamp_floor(self.host.policy().stamp_difficulty);
        'pages: for _ in 0..MAX_PAGES {
            let timestamp = unix_ms();
            let fetch = Fetch {
                address,
                timestamp,
                after,
                proof: key.sign_at(&address, &Fetch::signed_bytes(timestamp, &host_id)),
            };
            let (envelopes, more) = match self.ask(target, Request::Fetch(fetch)).await {
                Ok(Response::Envelopes { envelopes, more }) => {
                    answered = true;
                    (envelopes, more)
                }
                Ok(other) => {
                    tracing::debug!("fetch refused: {other:?}");
                    break;
                }
                Err(e) => {
                    tracing::debug!("fetch failed: {e}");
                    break;
                }
            };
            let mut received: Vec<(AccountKey, MessageId)> = Vec::new();
            let mut forged = 0usize;
            let mut stop = false;
            for fetched in &envelopes {
                if handled >= MAX_ENVELOPES_PER_ROUND
                    || (pairwise && junk_in_a_row >= MAX_JUNK_IN_A_ROW)
                {
                    stop = true;
                    break;
                }
                handled += 1;
                let digest = envelope::digest(&fetched.envelope);
                after = Some(digest);
                if pairwise && !fetched.proof_holds(&address) {
                    forged += 1;
                    junk_in_a_row += 1;
                    done.push(digest);
                    continue;
                }
                if !pairwise && !fetched.stamp_holds(&address, floor) {
                    done.push(digest);
                    continue;
                }
                if let Kind::Group(group, hash) = kind {
                    // Left for the other members; read past from now on.
                    self.service
                        .receive_group(group, hash, &fetched.envelope, false)
                        .await;
                    self.set_group_cursor(cursor.clone(), digest);
                    junk_in_a_row = 0;
                    continue;
                }
                // Taken, seen before, not an envelope at all, or one that can never open:
                // done with it (left at the host, junk would fill the dead drop until it
                // expires). One that may open later (an earlier message of its session is
                // still missing) or could not be stored stays, to be tried again.
                let got = self
                    .service
                    .receive_detailed("a mailbox host", &fetched.envelope)
                    .await;
                match got.response {
                    wire::Response::Accepted | wire::Response::Duplicate => junk_in_a_row = 0,
                    wire::Response::Refused(
                        wire::Refusal::Malformed | wire::Refusal::Unopenable,
                    ) => junk_in_a_row += 1,
                    _ => {}
                }
                if matches!(
                    got.response,
                    wire::Response::Accepted
                        | wire::Response::Duplicate
                        | wire::Response::Refused(
                            wire::Refusal::Malformed | wire::Refusal::Unopenable
                        )
                ) {
                    done.push(digest);
                    received.extend(got.message);
                }
            }
            self.send_receipts(received).await;
            if forged > 0 {
                tracing::debug!("a host served {forged} envelopes without a deposit proof");
                if let Target::Remote(peer, _) = target {
                    self.service
                        .network()
                        .strike(
                            *peer,
                            "served envelopes nobody deposited at a pairwise dead drop",
                        )
                        .await;
                }
                break 'pages;
            }
            if stop {
                tracing::debug!("stopped fetching from a host: too much junk this round");
                break 'pages;
            }
            if !more || envelopes.is_empty() {
                break;
            }
        }
        let taken = done.len();
        if matches!(kind, Kind::Group(..)) {
            return (handled, answered);
        }
        for ids in done.chunks(mailbox::MAX_DELETE_IDS) {
            let timestamp = unix_ms();
            let delete = Delete {
                address,
                timestamp,
                ids: ids.to_vec(),
                proof: key.sign_at(&address, &Delete::signed_bytes(timestamp, &host_id, ids)),
            };
            if let Err(e) = self.ask(target, Request::Delete(delete)).await {
                tracing::debug!("delete failed: {e}");
            }
        }
        (taken, answered)
    }

    fn group_cursor(&self, at: &(Address, Vec<u8>)) -> Option<mailbox::EnvelopeId> {
        let cursors = self.group_cursors.lock().unwrap_or_else(|p| p.into_inner());
        cursors.get(at).copied()
    }

    fn set_group_cursor(&self, at: (Address, Vec<u8>), id: mailbox::EnvelopeId) {
        let mut cursors = self.group_cursors.lock().unwrap_or_else(|p| p.into_inner());
        if cursors.len() >= MAX_CURSORS && !cursors.contains_key(&at) {
            // Forgetting a cursor costs a re-read (the envelopes are known as seen).
            cursors.clear();
        }
        cursors.insert(at, id);
    }

    /// Nothing else tells the senders that these arrived: one receipt per sender.
    async fn send_receipts(&self, received: Vec<(AccountKey, MessageId)>) {
        let mut by_sender: BTreeMap<AccountKey, Vec<MessageId>> = BTreeMap::new();
        for (key, id) in received {
            by_sender.entry(key).or_default().push(id);
        }
        for (key, ids) in by_sender {
            if let Err(e) = self.service.send_receipt(&key, ids).await {
                tracing::warn!("cannot queue a receipt: {e}");
            }
        }
    }

    /// Fetch on start, when woken (back online, or a contact's node connected), and every
    /// fetch interval, until
    /// `shutdown` turns true.
    pub async fn run_fetcher(self, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.service.mailbox_config().fetch_interval_ms);
        let mut last_round = tokio::time::Instant::now();
        loop {
            last_round = tokio::time::Instant::now().max(last_round);
            match self.fetch_round().await {
                Ok(n) if n > 0 => tracing::debug!("fetched {n} envelopes from mailboxes"),
                Ok(_) => {}
                Err(e) => tracing::warn!("mailbox fetch: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.service.fetch_wake().notified() => {
                    // Let a burst of new connections settle into one round, and let a peer
                    // that connects again and again start a round at most every few seconds.
                    let earliest = last_round + MIN_WOKEN_GAP.min(interval);
                    tokio::time::sleep_until(earliest.max(tokio::time::Instant::now() + SETTLE))
                        .await;
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
