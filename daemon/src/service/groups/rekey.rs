//! Rekeying after a member left: the admins' turns, and the loop that keeps them.

use super::*;

impl Service {
    /// Rekey every joined group whose secret a member who left still holds, where this node
    /// is an admin whose turn has come: the n-th admin by account key (n from 0, see
    /// `State::rekey_rank`) once the key has been stale for n grace periods
    /// (`State::stale_since`). The first admin rekeys as it takes the leave; this is for
    /// when it is offline (and for it, if that rekey failed). Returns when this node's next
    /// turn comes, if one is waiting.
    pub async fn rekey_stale_groups(&self, now_ms: u64) -> Result<Option<u64>, GroupError> {
        let grace = self.inner.keys.group_rekey_grace_ms;
        let guard = self.inner.account.lock().await;
        let Some(account) = guard.as_ref() else {
            return Ok(None);
        };
        let me = account.identity.public();
        let mut next: Option<u64> = None;
        for mut record in self.inner.store.groups()? {
            if record.status != GroupStatus::Joined {
                continue;
            }
            let mut log = log_of(&record);
            let Some(state) = log.state() else {
                continue;
            };
            let (Some(rank), Some(since)) = (state.rekey_rank(&me), state.stale_since(&log)) else {
                continue;
            };
            let due = since.saturating_add(grace.saturating_mul(rank as u64));
            if due > now_ms {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let mut batch = Batch::new();
            let mut staged = Staged::default();
            if !self.rekey_if_stale(
                account,
                &mut record,
                &mut log,
                &state,
                &mut batch,
                &mut staged,
            )? {
                continue;
            }
            tracing::info!(
                "rekeyed group {} after a member left (admin turn {rank})",
                record.id
            );
            let state = log.state();
            if let Some(s) = &state {
                log.strip_rekeys(s.key_change);
            }
            record.changes = log.changes().cloned().collect();
            self.changed_event(&mut staged, &record, state.as_ref(), &me, "group.changed");
            batch.put_group(&record)?;
            self.commit_group(batch, staged).await?;
        }
        Ok(next)
    }

    /// Rekey groups whose secret a member who left still holds when this node's turn comes
    /// ([`Service::rekey_stale_groups`]): looked at on start, when such a leave arrives,
    /// when a turn falls due, and every 10 minutes; until `shutdown` turns true.
    pub async fn run_group_rekeys(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        const EVERY: u64 = 10 * 60 * 1000;
        loop {
            let now = unix_ms();
            let next = match self.rekey_stale_groups(now).await {
                Ok(next) => next.unwrap_or(now + EVERY).min(now + EVERY),
                Err(e) => {
                    tracing::warn!("cannot rekey a group: {e}");
                    now + EVERY
                }
            };
            let wait = std::time::Duration::from_millis(next.saturating_sub(unix_ms()));
            tokio::select! {
                _ = shutdown.changed() => return,
                () = self.inner.rekey_wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// If the current secret was sealed to someone who is no member now (a member left),
    /// seal a new one to the members, in a rekey change left at the dead drops of the newest
    /// two secrets held, with the whole log under the new secret. Whether it rekeyed.
    pub(super) fn rekey_if_stale(
        &self,
        account: &LocalAccount,
        record: &mut GroupRecord,
        log: &mut Log,
        state: &GroupState,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        if !state.stale_key(log) {
            return Ok(false);
        }
        // Under the newest two secrets held: a member a concurrent add left out holds
        // only the other one.
        let held: Vec<GroupSecret> = record
            .secrets
            .iter()
            .rev()
            .take(2)
            .map(|(_, s)| GroupSecret::from_bytes(*s))
            .collect();
        if held.is_empty() {
            return Ok(false);
        }
        let secret = GroupSecret::generate(&mut OsRng);
        let recipients = Self::recipients(state, &[], None);
        let rekey = secret.rekey(&recipients, &mut OsRng)?;
        let (lamport, parents) = log.next();
        let c = Change::new(
            &account.identity,
            record.id,
            lamport,
            parents,
            unix_ms(),
            Op::Rekey,
            Some(rekey),
        )?;
        let h = c.hash();
        log.insert(c.clone())?;
        for old in &held {
            self.stage_group_deposit(
                batch,
                staged,
                record.id,
                old,
                &Payload::Change(c.clone()),
                None,
            )?;
        }
        // And the whole log under the new secret, for whoever missed a change.
        let all: Vec<Change> = log.changes().cloned().collect();
        for chunk in proto::chunk_changes(&all, sotto_protocol::content::MAX_INVITE_PART_BYTES) {
            self.stage_group_deposit(
                batch,
                staged,
                record.id,
                &secret,
                &Payload::Changes(chunk),
                None,
            )?;
        }
        Self::push_secret(record, h, &secret);
        Ok(true)
    }
}
