//! The group outbox: group envelopes (changes, sender keys, messages) left at the group's
//! dead drop for this epoch, under the drop key of the group secret they were sealed
//! under, through private paths like every other deposit. An entry stays until `replicas`
//! hosts hold it (or as many as the dead drop has), retrying with back-off across restarts;
//! one older than the hosts' TTL is given up.

use std::time::Duration;

use futures::StreamExt as _;
use sotto_protocol::deaddrop::Secret;
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{Deposit, DepositAuth, Request, Response};
use tokio::sync::watch;

use super::Client;
use crate::clock::unix_ms;
use crate::store::GroupOutboxEntry;

/// Entries deposited at once.
const AT_ONCE: usize = 4;
/// The first wait after a failed attempt; it doubles with each failure, up to [`MAX_WAIT`].
const FIRST_WAIT_MS: u64 = 2_000;
const MAX_WAIT_MS: u64 = 5 * 60 * 1_000;
/// The longest the worker sleeps without looking at the outbox.
const IDLE: Duration = Duration::from_secs(30);

impl Client {
    /// Deposit one entry at the hosts that do not hold it yet; true when enough do.
    async fn deposit_group_entry(&self, entry: &mut GroupOutboxEntry) -> bool {
        let now = unix_ms();
        let key = Secret::from_bytes(entry.drop_secret).drop_key(self.service.epoch_at(now));
        let expires_at = now.saturating_add(self.service.mailbox_config().policy.ttl_ms);
        let digest = envelope::digest(&entry.envelope);
        let deposit = Deposit {
            address: key.address(),
            envelope: entry.envelope.clone(),
            expires_at,
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
        };
        // A burst of group envelopes to one dead drop shares one lookup.
        let targets = self
            .hosts_cached(&self.group_hosts, &deposit.address, |t| !t.is_empty())
            .await;
        if targets.is_empty() {
            return false;
        }
        // At every host that does not hold it yet at once: through private paths each
        // deposit is a round trip through three relays, and one after another an entry
        // took three.
        let me = self.me();
        let wanted: Vec<(&super::Target, Vec<u8>)> = targets
            .iter()
            .map(|t| (t, t.id_bytes(&me)))
            .filter(|(_, id)| !entry.hosts.contains(id))
            .collect();
        let answers = futures::future::join_all(
            wanted
                .iter()
                .map(|(target, _)| self.ask(target, Request::Deposit(deposit.clone()))),
        )
        .await;
        for ((_, id), answer) in wanted.into_iter().zip(answers) {
            match answer {
                Ok(Response::Stored | Response::AlreadyStored) => entry.hosts.push(id),
                Ok(other) => tracing::debug!("a host refused a group deposit: {other:?}"),
                Err(e) => tracing::debug!("a group deposit failed: {e}"),
            }
        }
        let wanted = self
            .service
            .mailbox_config()
            .replicas
            .min(targets.len())
            .max(1);
        entry.hosts.len() >= wanted
    }

    /// One pass over the due entries; how long until the next is due.
    async fn group_outbox_round(&self) -> Duration {
        let store = self.service.store();
        let entries = match store.group_outbox() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot read the group outbox: {e}");
                return IDLE;
            }
        };
        let now = unix_ms();
        let ttl = self.service.mailbox_config().policy.ttl_ms;
        let due: Vec<GroupOutboxEntry> = entries
            .iter()
            .filter(|e| e.next_attempt_at <= now)
            .cloned()
            .collect();
        let results: Vec<(GroupOutboxEntry, bool)> = futures::stream::iter(due)
            .map(|mut entry| async move {
                let done = self.deposit_group_entry(&mut entry).await;
                (entry, done)
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        for (mut entry, done) in results {
            let outcome = if done || unix_ms().saturating_sub(entry.created_ms) > ttl {
                if !done {
                    tracing::warn!(
                        "a group envelope could not be left at its dead drop in time; given up"
                    );
                }
                self.service.group_deposited(entry.seq, entry.message).await
            } else {
                entry.failures = entry.failures.saturating_add(1);
                let wait = FIRST_WAIT_MS
                    .saturating_mul(1u64 << (entry.failures - 1).min(16))
                    .min(MAX_WAIT_MS);
                entry.next_attempt_at = unix_ms().saturating_add(wait);
                let mut batch = crate::store::Batch::new();
                match batch.put_group_outbox(&entry) {
                    Ok(()) => store.commit(batch).await,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = outcome {
                tracing::warn!("cannot update the group outbox: {e}");
            }
        }
        let next = store
            .group_outbox()
            .ok()
            .and_then(|es| es.iter().map(|e| e.next_attempt_at).min());
        match next {
            Some(at) => Duration::from_millis(at.saturating_sub(unix_ms())).min(IDLE),
            None => IDLE,
        }
    }

    /// Work through the group outbox whenever something is queued, an entry is due, or
    /// every [`IDLE`], until `shutdown` turns true.
    pub async fn run_group_outbox(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = self.group_outbox_round().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                () = self.service.group_wake().notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
