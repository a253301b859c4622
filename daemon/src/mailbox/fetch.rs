//! Fetching: on start, when woken (a new connection), and every fetch interval, this node
//! looks in each of its dead drops (its intro dead drop, and each contact's pairwise drops
//! of the epochs since its last complete fetch) at every host, hands what it finds to the
//! service, deletes what was taken, and sends each sender one receipt.

use std::collections::BTreeMap;
use std::time::Duration;

use sotto_protocol::content::MessageId;
use sotto_protocol::deaddrop::{Address, DropKey};
use sotto_protocol::envelope;
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
/// How long a burst of new connections may settle before the fetch they woke.
const SETTLE: Duration = Duration::from_millis(200);

impl Client {
    /// The addresses and keys of every dead drop this node should look in now, each with
    /// whether it is a pairwise one (only the pair can deposit there: junk in it is the
    /// host's doing) rather than the intro dead drop (where anyone with a stamp can).
    async fn own_drops(&self) -> Result<Vec<(Address, DropKey, bool)>, Error> {
        let service = &self.service;
        let now = unix_ms();
        let current = service.epoch_at(now);
        let last = service.store().last_fetch_epoch()?.unwrap_or(current);
        let first = last
            .saturating_sub(1)
            .max(current.saturating_sub(MAX_EPOCHS_BACK))
            .min(current.saturating_sub(1));
        let mut keys = Vec::new();
        if let Some(account) = service.account_lock().lock().await.as_ref() {
            let intro = DropKey::from_seed(&account.intro.seed());
            keys.push((intro.intro_address(), intro, false));
        } else {
            return Ok(keys);
        }
        for (_, c) in service.store().contacts()? {
            if !c.presence_sent {
                continue;
            }
            let secret = c.inbox.secret();
            keys.extend((first..=current).map(|e| {
                let key = secret.drop_key(e);
                (key.address(), key, true)
            }));
        }
        Ok(keys)
    }

    /// Fetch every dead drop of this node from its hosts, hand what arrived to the service,
    /// and delete it at the host. Returns how many envelopes were taken.
    pub async fn fetch_round(&self) -> Result<usize, Error> {
        let started = unix_ms();
        let mut taken = 0;
        let mut complete = true;
        for (address, key, pairwise) in self.own_drops().await? {
            let mut reached = false;
            for target in self.hosts_for(&address).await {
                // This node alone is no proof that the dead drop was looked at.
                let remote = matches!(target, Target::Remote(..));
                let (n, ok) = self.fetch_from(&target, &address, &key, pairwise).await;
                taken += n;
                reached |= ok && remote;
            }
            complete &= reached;
        }
        if !complete {
            // Some dead drop was out of reach: look at the same epochs again next time.
            return Ok(taken);
        }
        let mut batch = Batch::new();
        batch.put_last_fetch_epoch(self.service.epoch_at(started));
        self.service.store().apply(&batch)?;
        Ok(taken)
    }

    /// Fetch one dead drop from one host. Returns how many envelopes were taken, and
    /// whether the host answered.
    ///
    /// A host can answer a fetch with anything, and each envelope costs this node a Noise
    /// open under the account lock, so a round takes at most [`MAX_ENVELOPES_PER_ROUND`]
    /// from a host, and stops at a page in which nothing opened. Such a page from a
    /// pairwise dead drop (`pairwise`: nobody but the pair can deposit there) is the host's
    /// doing and counts towards a ban of the host (`net::Guard::strike`).
    async fn fetch_from(
        &self,
        target: &Target,
        address: &Address,
        key: &DropKey,
        pairwise: bool,
    ) -> (usize, bool) {
        let address = *address;
        // Proofs name the host they are for, so that no host can replay them at another.
        let host_id = target.id_bytes(&self.me());
        let mut after = None;
        let mut done = Vec::new();
        let mut answered = false;
        let mut handled = 0usize;
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
            let (mut taken, mut junk) = (0usize, 0usize);
            for env in &envelopes {
                if handled >= MAX_ENVELOPES_PER_ROUND {
                    self.send_receipts(received).await;
                    break 'pages;
                }
                handled += 1;
                let digest = envelope::digest(env);
                after = Some(digest);
                // Taken, seen before, not an envelope at all, or one that can never open:
                // done with it (left at the host, junk would fill the dead drop until it
                // expires). One that may open later (an earlier message of its session is
                // still missing) or could not be stored stays, to be tried again.
                let got = self.service.receive_detailed("a mailbox host", env).await;
                match got.response {
                    wire::Response::Accepted => taken += 1,
                    wire::Response::Refused(
                        wire::Refusal::Malformed | wire::Refusal::Unopenable,
                    ) => junk += 1,
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
            if taken == 0 && junk > 0 {
                tracing::debug!("a page of {junk} envelopes that do not open; next round");
                if let (true, Target::Remote(peer, _)) = (pairwise, target) {
                    self.service
                        .network()
                        .strike(
                            *peer,
                            "served envelopes that do not open at a pairwise dead drop",
                        )
                        .await;
                }
                break;
            }
            if !more || envelopes.is_empty() {
                break;
            }
        }
        let taken = done.len();
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

    /// Fetch on start, when woken (a new connection), and every fetch interval, until
    /// `shutdown` turns true.
    pub async fn run_fetcher(self, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.service.mailbox_config().fetch_interval_ms);
        loop {
            match self.fetch_round().await {
                Ok(n) if n > 0 => tracing::debug!("fetched {n} envelopes from mailboxes"),
                Ok(_) => {}
                Err(e) => tracing::warn!("mailbox fetch: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.service.fetch_wake().notified() => {
                    // Let a burst of new connections settle into one round.
                    tokio::time::sleep(SETTLE).await;
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
