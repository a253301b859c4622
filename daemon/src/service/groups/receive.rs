//! What arrives for a group: envelopes from its dead drop (or pushed by a member) holding
//! changes, sender keys and messages (invitations, over a pairwise session, are in
//! `invite.rs`).

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
        let stored = std::mem::take(&mut staged.stored);
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.push_directly(forward);
        if let Err(e) = self.apply_parked(&stored).await {
            tracing::warn!("cannot apply changes that waited for a group message: {e}");
        }
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
        let me = self.own_account().ok_or(GroupError::NoAccount)?;
        let Some((text, reply_to, expires_in)) = content.post() else {
            // A change to a message (reaction, edit, delete, timer), applied by the code that
            // applies the user's own; one that does not apply is dropped.
            batch.index_message(&content.id, None);
            match self.stage_change(
                batch,
                store::Chat::Group(record.id),
                &sent.sender,
                &me,
                &content,
                now,
            ) {
                Ok(views) => {
                    for (kind, v) in views {
                        staged.events.push((
                            kind,
                            "message",
                            serde_json::to_value(v).unwrap_or_default(),
                        ));
                    }
                }
                Err(e) => self.park_or_drop(
                    batch,
                    store::Chat::Group(record.id),
                    &sent.sender,
                    &content,
                    now,
                    e,
                )?,
            }
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
        batch.index_message(&content.id, Some(seq));
        let extras = store::Extras {
            reply_to,
            expires_at: expires_in.map(|t| {
                super::super::history::written_at(content.sent_at, Some(now)).saturating_add(t)
            }),
            ..Default::default()
        };
        batch.put_extras(seq, &store::Extras::default(), &extras)?;
        super::super::changes::Found::Group(seq, message.clone()).put(batch, &extras)?;
        staged.stored.push(content.id);
        let name = state
            .members
            .get(&sent.sender)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let from = match self.inner.store.contact(&sent.sender)? {
            Some(c) if !c.request => c.name,
            _ => format!("{name}~{}", &sent.sender.address()[..6]),
        };
        let mut view = self.view_group_message(&message, &record.local_name, &from);
        self.dress(&mut view, seq, &extras, Some(state), &me)?;
        if let Some(a) = self.stage_attachment(batch, seq, &content, Direction::In, false)? {
            view.attachments = vec![a];
        }
        staged.events.push((
            "message.received",
            "message",
            serde_json::to_value(view).unwrap_or_default(),
        ));
        Ok(true)
    }
}
