//! What arrives for a group: envelopes from its dead drop (or pushed by a member) holding
//! changes, sender keys and messages, and invitations over a pairwise session.

use super::*;

impl Service {
    /// A group envelope under `group`'s secret `hash`, fetched from its dead drop or
    /// `pushed` by a member's node.
    pub async fn receive_group(
        &self,
        group: GroupId,
        hash: [u8; 32],
        bytes: &[u8],
        pushed: bool,
    ) -> GroupTaken {
        match self.try_receive_group(group, hash, bytes, pushed).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("group envelope refused: {e}");
                GroupTaken::Dropped
            }
        }
    }

    pub(super) async fn try_receive_group(
        &self,
        group: GroupId,
        hash: [u8; 32],
        bytes: &[u8],
        pushed: bool,
    ) -> Result<GroupTaken, GroupError> {
        let store = &self.inner.store;
        let digest = envelope::digest(bytes);
        if store.is_seen(&digest)? {
            return Ok(GroupTaken::Taken);
        }
        let mut guard = self.inner.account.lock().await;
        let account = guard.as_mut().ok_or(GroupError::NoAccount)?;
        if store.is_seen(&digest)? {
            return Ok(GroupTaken::Taken);
        }
        let Some(mut record) = store.group(&group)? else {
            return Ok(GroupTaken::Dropped);
        };
        let Some(secret) = record
            .secrets
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, s)| GroupSecret::from_bytes(*s))
        else {
            return Ok(GroupTaken::Dropped);
        };
        let now = unix_ms();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        batch.mark_seen(&digest, now);
        let payload = match proto::open_payload(&secret, bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("a group envelope does not open: {e}");
                record.dropped += 1;
                batch.put_group(&record)?;
                self.inner.store.commit(batch).await?;
                return Ok(GroupTaken::Dropped);
            }
        };
        let mut log = log_of(&record);
        // A sender-key bundle is passed on only to members it holds a box for.
        let mut boxes_for: Option<Vec<[u8; 8]>> = None;
        // Whether it was taken, and the state it leaves (replayed once: a sender key or a
        // message leaves the log as it was).
        let (taken, state) = match payload {
            Payload::Change(change) => {
                let taken = self.take_change(
                    account,
                    &mut record,
                    &mut log,
                    vec![change],
                    &mut batch,
                    &mut staged,
                )?;
                (taken, log.state())
            }
            Payload::Changes(changes) if changes.len() <= proto::MAX_CHANGES => {
                let taken = self.take_change(
                    account,
                    &mut record,
                    &mut log,
                    changes,
                    &mut batch,
                    &mut staged,
                )?;
                (taken, log.state())
            }
            Payload::Changes(_) => (false, None),
            // From a current member of this group, or refused (a non-member's post, a
            // removed member's).
            // A sender key only for the secret it came under, one that applied.
            Payload::SenderKeys(bundle) => {
                boxes_for = Some(bundle.boxes.iter().map(|(t, _)| *t).collect());
                let state = log.state();
                let taken = match &state {
                    Some(s) => self.take_sender_keys(
                        account,
                        &mut record,
                        s,
                        hash,
                        bundle,
                        &mut batch,
                        &mut staged,
                    )?,
                    None => false,
                };
                (taken, state)
            }
            Payload::Keys(keys) => {
                let state = log.state();
                let taken = match &state {
                    Some(s) => self.take_member_keys(&record, s, keys, &mut batch)?,
                    None => false,
                };
                (taken, state)
            }
            Payload::Message(sent) => {
                let state = log.state();
                let taken = match &state {
                    Some(s) if sent.group == record.id && s.is_member(&sent.sender) => {
                        self.take_message(&mut record, s, sent, now, &mut batch, &mut staged)?
                    }
                    _ => false,
                };
                (taken, state)
            }
        };
        if !taken {
            record.dropped += 1;
        }
        // Passed on to a few members who are this node's contacts, so that a message spreads
        // along contacts within seconds instead of waiting for each member's next fetch; one
        // fetched from the dead drop by a few members only, at random.
        let me = account.identity.public();
        let forward = match (taken, state) {
            (true, Some(state))
                if state.is_member(&me)
                    && (pushed
                        || rand::random::<f64>()
                            < FETCHED_PASS_ON as f64 / state.members.len().max(1) as f64) =>
            {
                self.direct_pushes(&state, &me, &[bytes.to_vec()], MAX_FORWARD, |k, _| {
                    boxes_for
                        .as_ref()
                        .is_none_or(|tags| tags.contains(&proto::tag(k)))
                })?
            }
            _ => Vec::new(),
        };
        batch.put_group(&record)?;
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.push_directly(forward);
        Ok(if taken {
            GroupTaken::Taken
        } else {
            GroupTaken::Dropped
        })
    }

    /// A change from the group's dead drop: into the log; a secret sealed to this node is
    /// kept; a removal of this node ends its membership; the rekeying admin rekeys after a
    /// member left.
    pub(super) fn take_change(
        &self,
        account: &LocalAccount,
        record: &mut GroupRecord,
        log: &mut Log,
        changes: Vec<Change>,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let me = account.identity.public();
        let mut new = false;
        let mut opened = Vec::new();
        for change in changes {
            if change.group != record.id {
                return Ok(false);
            }
            let hash = change.hash();
            let rekey = change.rekey.clone();
            match log.insert(change) {
                Ok(inserted) => new |= inserted,
                Err(e) => {
                    tracing::debug!("a group change refused: {e}");
                    return Ok(false);
                }
            }
            if let Some(rekey) = &rekey {
                if let Some(s) = GroupSecret::open_rekey(rekey, &me, &account.seal) {
                    opened.push((hash, s));
                }
            }
        }
        if !new && opened.is_empty() {
            return Ok(true);
        }
        let Some(state) = log.state() else {
            return Ok(true);
        };
        // Only the secret of a change that applied: one a skipped change (a removed
        // member's, a non-admin's) seals to this node is never used.
        for (hash, s) in &opened {
            if state.rekeys.contains(hash) {
                Self::push_secret(record, *hash, s);
                // The new secret's dead drop may already hold the next change (an admin
                // adding in several changes): fetch it now, not a fetch interval later.
                self.inner.fetch_wake.notify_one();
            }
        }
        if !state.is_member(&me) && record.status == GroupStatus::Joined {
            record.status = GroupStatus::Removed;
            record.secrets.clear();
            record.outbound = None;
            record.pending.clear();
        } else if state.rekeying_admin() == Some(me) {
            self.rekey_if_stale(account, record, log, &state, batch, staged)?;
        } else if state.rekey_rank(&me).is_some() && state.stale_key(log) {
            // This node's turn comes if the first admin does not rekey.
            self.inner.rekey_wake.notify_one();
        }
        let state = log.state();
        if let Some(s) = &state {
            log.strip_rekeys(s.key_change);
            // Sessions of members who are gone open nothing more.
            for (member, _) in self.inner.store.groups_sessions_of(&record.id)? {
                if !s.is_member(&member) {
                    batch.remove_group_sessions(&record.id, &member);
                }
            }
        }
        record.changes = log.changes().cloned().collect();
        // A local name follows a rename when it is free.
        if let Some(s) = &state {
            if s.name != record.local_name && self.name_free(&s.name)? {
                let previous_title = log
                    .changes()
                    .filter_map(|c| match &c.op {
                        Op::Rename(n) => Some(n.clone()),
                        Op::Create { name, .. } => Some(name.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if previous_title.iter().any(|t| t == &record.local_name) {
                    batch.remove_group_name(&record.local_name);
                    batch.put_group_name(&s.name, &record.id);
                    record.local_name = s.name.clone();
                }
            }
        }
        self.changed_event(staged, record, state.as_ref(), &me, "group.changed");
        Ok(true)
    }

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

    pub(super) fn take_sender_key(
        &self,
        record: &mut GroupRecord,
        state: &GroupState,
        key: SenderKey,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let inbound = match key.open() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("a sender key refused: {e}");
                return Ok(false);
            }
        };
        let pickle_key = self.inner.pickle_key;
        let mut sessions = self.inner.store.group_sessions(&record.id, &key.member)?;
        let id = inbound.session_id();
        if !sessions.sessions.iter().any(|(s, _, _)| s == &id) {
            sessions.sessions.push((
                id,
                proto::pickle_inbound(&inbound, &pickle_key),
                key.key_change,
            ));
            // Over the bound, a session for an older secret goes first, then the oldest:
            // an old key replayed cannot push out the one in use.
            while sessions.sessions.len() > store::groups::MAX_SESSIONS_PER_MEMBER {
                let at = sessions
                    .sessions
                    .iter()
                    .position(|(_, _, k)| Some(*k) != state.key_change)
                    .unwrap_or(0);
                sessions.sessions.remove(at);
            }
        }
        // Messages that waited for this key.
        let waiting: Vec<Sent> = record
            .pending
            .iter()
            .filter(|p| p.sender == key.member)
            .cloned()
            .collect();
        record.pending.retain(|p| p.sender != key.member);
        let now = unix_ms();
        for sent in waiting {
            if !self.open_and_store(
                record,
                state,
                &mut sessions,
                sent.clone(),
                now,
                batch,
                staged,
            )? {
                record.pending.push(sent);
            }
        }
        batch.put_group_sessions(&record.id, &key.member, &sessions)?;
        Ok(true)
    }

    pub(super) fn take_message(
        &self,
        record: &mut GroupRecord,
        state: &GroupState,
        sent: Sent,
        now: u64,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let mut sessions = self.inner.store.group_sessions(&record.id, &sent.sender)?;
        if self.open_and_store(
            record,
            state,
            &mut sessions,
            sent.clone(),
            now,
            batch,
            staged,
        )? {
            batch.put_group_sessions(&record.id, &sent.sender, &sessions)?;
            return Ok(true);
        }
        if record.pending.len() >= store::groups::MAX_PENDING {
            record.pending.remove(0);
        }
        if record.pending.is_empty() {
            // Its key may wait at this node's key dead drop, which fetch rounds look in
            // only while a message waits: now, not a fetch interval later.
            self.inner.fetch_wake.notify_one();
        }
        record.pending.push(sent);
        Ok(true)
    }

    /// Decrypt `sent` with one of `sessions` and store the message. False if no session
    /// fits (its key has not come yet).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_and_store(
        &self,
        record: &GroupRecord,
        state: &GroupState,
        sessions: &mut InboundSessions,
        sent: Sent,
        now: u64,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let pickle_key = self.inner.pickle_key;
        let Some(slot) = sessions
            .sessions
            .iter_mut()
            .find(|(id, _, _)| id == &sent.session_id)
        else {
            return Ok(false);
        };
        let Ok(mut session) = proto::unpickle_inbound(&slot.1, &pickle_key) else {
            return Ok(false);
        };
        let (plain, _) = match sent.decrypt(&mut session) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("a group message does not decrypt: {e}");
                return Ok(true);
            }
        };
        slot.1 = proto::pickle_inbound(&session, &pickle_key);
        let Ok(content) = Content::from_bytes(&plain) else {
            return Ok(true);
        };
        if self.inner.store.message_seq(&content.id)?.is_some() {
            return Ok(true);
        }
        let Some(text) = content.as_text() else {
            return Ok(true);
        };
        let seq = self.inner.store.next_seq()?;
        let message = GroupMessage {
            id: content.id,
            group: record.id,
            from: sent.sender,
            direction: Direction::In,
            text: text.to_owned(),
            sent_at: content.sent_at,
            received_at: Some(now),
            state: State::Received,
        };
        batch.put_group_message(seq, &message)?;
        batch.index_message(&content.id, Some(seq));
        let name = state
            .members
            .get(&sent.sender)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let from = match self.inner.store.contact(&sent.sender)? {
            Some(c) if !c.request => c.name,
            _ => format!("{name}~{}", &sent.sender.address()[..6]),
        };
        staged.events.push((
            "message.received",
            "message",
            serde_json::to_value(self.view_group_message(&message, &record.local_name, &from))
                .unwrap_or_default(),
        ));
        Ok(true)
    }

    /// An invitation part from `from` (pairwise): kept until every part came, then the
    /// group is joined at once or waits for `group join`, as `groups_from` says.
    pub(in crate::service) fn stage_invite(
        &self,
        account: &LocalAccount,
        from: &AccountKey,
        from_request: bool,
        invite: &GroupInvite,
        batch: &mut Batch,
        events: &mut Vec<(&'static str, &'static str, Value)>,
    ) -> Result<(), GroupError> {
        let me = account.identity.public();
        let store = &self.inner.store;
        let mut record = match store.group(&invite.group)? {
            Some(r) => r,
            None => {
                if store.groups()?.len() >= MAX_GROUPS {
                    return Err(GroupError::TooMany { limit: MAX_GROUPS });
                }
                // A stranger's invitation is kept only whole (one part), and only a few.
                if from_request
                    && (invite.parts != 1
                        || store
                            .groups()?
                            .iter()
                            .filter(|g| matches!(g.status, GroupStatus::Invited { .. }))
                            .count()
                            >= MAX_STRANGER_INVITATIONS)
                {
                    return Err(GroupError::TooMany {
                        limit: MAX_STRANGER_INVITATIONS,
                    });
                }
                GroupRecord {
                    id: invite.group,
                    local_name: String::new(),
                    status: GroupStatus::Invited { by: *from },
                    changes: Vec::new(),
                    secrets: Vec::new(),
                    outbound: None,
                    pending: Vec::new(),
                    joined_ms: 0,
                    assembling: None,
                    dropped: 0,
                }
            }
        };
        // Parts of one invitation from one sender; another sender's, or another count of
        // parts, starts over.
        let mut a = record
            .assembling
            .take()
            .filter(|a| a.parts == invite.parts && &a.from == from)
            .unwrap_or(store::Assembling {
                from: *from,
                parts: invite.parts,
                seen: Vec::new(),
                changes: Vec::new(),
                secret: None,
            });
        if !a.seen.contains(&invite.part) {
            a.seen.push(invite.part);
            a.changes.extend(invite.changes.iter().cloned());
            if invite.secret.is_some() {
                a.secret = invite.secret;
            }
        }
        if a.changes.len() > proto::MAX_CHANGES {
            return Err(GroupError::Protocol(proto::GroupError::LogFull));
        }
        if usize::from(a.parts) != a.seen.len() {
            record.assembling = Some(a);
            batch.put_group(&record)?;
            return Ok(());
        }
        let secret = a.secret.map(|(s, h)| (h, s));
        let changes = a.changes;
        // Every part is here: the log.
        let mut log = log_of(&record);
        for c in changes {
            log.insert(c)?;
        }
        let state = log.state().ok_or(proto::GroupError::Invalid(
            "an invitation without the group's creation",
        ))?;
        if !state.is_admin(from) || !state.is_member(&me) {
            return Err(GroupError::Protocol(proto::GroupError::Invalid(
                "an invitation from someone who is no admin, or that does not name this account",
            )));
        }
        if let Some((hash, s)) = secret {
            Self::push_secret(&mut record, hash, &GroupSecret::from_bytes(s));
        }
        let rejoin = matches!(record.status, GroupStatus::Left | GroupStatus::Removed);
        let join = match self.inner.mailbox.groups_from {
            GroupsFrom::Nobody => false,
            GroupsFrom::Contacts => !from_request,
            GroupsFrom::Everyone => true,
        };
        if record.local_name.is_empty() {
            record.local_name = self.unique_group_name(&state.name)?;
            batch.put_group_name(&record.local_name, &record.id);
        }
        if record.status != GroupStatus::Joined || rejoin {
            record.status = if join {
                GroupStatus::Joined
            } else {
                GroupStatus::Invited { by: *from }
            };
            record.joined_ms = unix_ms();
            if join {
                // Changes made since the invitation wait at the group's dead drop.
                self.inner.fetch_wake.notify_one();
            }
        }
        log.strip_rekeys(state.key_change);
        record.changes = log.changes().cloned().collect();
        batch.put_group(&record)?;
        let kind = if join {
            "group.changed"
        } else {
            "group.invited"
        };
        events.push((
            kind,
            "group",
            serde_json::to_value(self.group_view(&record, Some(&state), &me)).unwrap_or_default(),
        ));
        Ok(())
    }
}
