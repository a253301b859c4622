//! Making and managing groups: `group.create`, `add`, `remove`, `leave`, `rename`,
//! `describe`, `admin`, `list`, `info`, `join`, `decline`.

use super::*;

impl Service {
    /// `group.create`
    pub async fn group_create(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<GroupView, GroupError> {
        if !valid_group_name(name) {
            return Err(GroupError::BadName);
        }
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        if !self.name_free(name)? {
            return Err(GroupError::NameTaken(name.into()));
        }
        if self.inner.store.groups()?.len() >= MAX_GROUPS {
            return Err(GroupError::TooMany { limit: MAX_GROUPS });
        }
        let others = self.members_from_contacts(members)?;
        if others.len() + 1 > proto::MAX_ADDED {
            return Err(GroupError::Full {
                limit: proto::MAX_ADDED,
            });
        }
        let me = account.identity.public();
        let mut all = vec![Self::self_member(account)];
        all.extend(
            others
                .iter()
                .filter(|(k, _, _)| k != &me)
                .map(|(_, _, m)| m.clone()),
        );
        let nonce: [u8; 16] = rand::random();
        let id = GroupId::derive(&me, &nonce);
        let secret = GroupSecret::generate(&mut OsRng);
        let to: Vec<(AccountKey, [u8; 32])> = all.iter().map(|m| (m.account, m.seal_key)).collect();
        let rekey = secret.rekey(&to, &mut OsRng)?;
        let change = Change::new(
            &account.identity,
            id,
            0,
            Vec::new(),
            unix_ms(),
            Op::Create {
                nonce,
                name: name.into(),
                description: String::new(),
                members: all,
            },
            Some(rekey),
        )?;
        let hash = change.hash();
        let mut log = Log::new(id);
        log.insert(change)?;
        let state = log.state().ok_or(proto::GroupError::Invalid(
            "the create change did not apply",
        ))?;
        let mut record = GroupRecord {
            id,
            local_name: name.into(),
            status: GroupStatus::Joined,
            changes: log.changes().cloned().collect(),
            secrets: Vec::new(),
            outbound: None,
            pending: Vec::new(),
            joined_ms: unix_ms(),
            assembling: None,
            dropped: 0,
        };
        Self::push_secret(&mut record, hash, &secret);
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        let invited: Vec<(AccountKey, store::Contact)> = others
            .into_iter()
            .filter(|(k, _, _)| k != &me)
            .map(|(k, c, _)| (k, c))
            .collect();
        self.stage_invites(
            account,
            &mut batch,
            &mut staged,
            &log,
            (*secret.bytes(), hash),
            &invited,
        )
        .await?;
        batch.put_group(&record)?;
        batch.put_group_name(name, &id);
        self.changed_event(&mut staged, &record, Some(&state), &me, "group.changed");
        let view = self.group_view(&record, Some(&state), &me);
        self.commit_group(batch, staged).await?;
        drop(guard);
        Ok(view)
    }

    /// Make a change to a joined group as this node: sign it, add it to the log, leave it
    /// at the group's dead drop under the secret current before it, and (for a change that
    /// rekeys) keep the new secret. `make` gets the state and returns the op and, for an op
    /// that rekeys, the members after it.
    pub(super) async fn group_change(
        &self,
        group: &str,
        admin_only: bool,
        make: impl FnOnce(
            &GroupState,
            &AccountKey,
        ) -> Result<(Op, Vec<(AccountKey, [u8; 32])>), GroupError>,
        invite: &[(AccountKey, store::Contact)],
    ) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let Joined {
            mut record,
            mut log,
            state,
            secret: (_, old_secret),
        } = self.joined(group, &me)?;
        if admin_only && !state.is_admin(&me) {
            return Err(GroupError::NotAdmin(group.into()));
        }
        let (op, recipients) = make(&state, &me)?;
        let secret = op.rekeys().then(|| GroupSecret::generate(&mut OsRng));
        let rekey = match &secret {
            Some(s) => Some(s.rekey(&recipients, &mut OsRng)?),
            None => None,
        };
        let leaving = matches!(op, Op::Leave);
        let (lamport, parents) = log.next();
        let change = Change::new(
            &account.identity,
            record.id,
            lamport,
            parents,
            unix_ms(),
            op,
            rekey,
        )?;
        let hash = change.hash();
        log.insert(change.clone())?;
        let after = log
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        self.stage_group_deposit(
            &mut batch,
            &mut staged,
            record.id,
            &old_secret,
            &Payload::Change(change),
            None,
        )?;
        if let Some(s) = &secret {
            Self::push_secret(&mut record, hash, s);
            self.stage_invites(
                account,
                &mut batch,
                &mut staged,
                &log,
                (*s.bytes(), hash),
                invite,
            )
            .await?;
        }
        if leaving {
            record.status = GroupStatus::Left;
            record.secrets.clear();
            record.outbound = None;
            record.pending.clear();
        }
        log.strip_rekeys(after.key_change);
        record.changes = log.changes().cloned().collect();
        batch.put_group(&record)?;
        self.changed_event(&mut staged, &record, Some(&after), &me, "group.changed");
        let view = self.group_view(&record, Some(&after), &me);
        // Pushed like a message to the members (before the change: a removed one learns of
        // it too) who are contacts.
        self.commit_and_push(batch, staged, &state, &me, guard)
            .await?;
        Ok(view)
    }

    /// The members of `state`, as rekey recipients, with `extra` added and `without` left
    /// out.
    pub(super) fn recipients(
        state: &GroupState,
        extra: &[Member],
        without: Option<&AccountKey>,
    ) -> Vec<(AccountKey, [u8; 32])> {
        let mut out: Vec<(AccountKey, [u8; 32])> = state
            .members
            .iter()
            .filter(|(k, _)| Some(*k) != without)
            .map(|(k, m)| (*k, m.seal_key))
            .collect();
        for m in extra {
            if !out.iter().any(|(k, _)| k == &m.account) {
                out.push((m.account, m.seal_key));
            }
        }
        out
    }

    /// `group.add`
    pub async fn group_add(
        &self,
        group: &str,
        contacts: &[String],
    ) -> Result<GroupView, GroupError> {
        let added = self.members_from_contacts(contacts)?;
        let invite: Vec<(AccountKey, store::Contact)> =
            added.iter().map(|(k, c, _)| (*k, c.clone())).collect();
        let members: Vec<Member> = added.into_iter().map(|(_, _, m)| m).collect();
        self.group_change(
            group,
            true,
            |state, _| {
                let new: Vec<Member> = members
                    .iter()
                    .filter(|m| !state.is_member(&m.account))
                    .cloned()
                    .collect();
                if new.is_empty() {
                    return Err(GroupError::AlreadyMember(contacts.join(", ")));
                }
                if state.members.len() + new.len() > proto::MAX_MEMBERS {
                    return Err(GroupError::Full {
                        limit: proto::MAX_MEMBERS,
                    });
                }
                if new.len() > proto::MAX_ADDED {
                    return Err(GroupError::Full {
                        limit: proto::MAX_ADDED,
                    });
                }
                let recipients = Self::recipients(state, &new, None);
                Ok((Op::Add(new), recipients))
            },
            &invite,
        )
        .await
    }

    /// The member of `state` that `who` names: a contact's name, a label, or an address.
    pub(super) fn member_named(
        &self,
        state: &GroupState,
        who: &str,
        me: &AccountKey,
    ) -> Result<Option<AccountKey>, StoreError> {
        if let Ok((key, _)) = self.resolve(who) {
            if state.is_member(&key) {
                return Ok(Some(key));
            }
        }
        for (key, m) in &state.members {
            let (label, _) = self.member_label(key, &m.name, me)?;
            if label == who || key.address() == who {
                return Ok(Some(*key));
            }
        }
        Ok(None)
    }

    /// `group.remove`
    pub async fn group_remove(&self, group: &str, who: &str) -> Result<GroupView, GroupError> {
        let mut target = None;
        {
            let record = self.group_by_name(group)?;
            let me = self.own_key().await?;
            if let Some(state) = log_of(&record).state() {
                target = self.member_named(&state, who, &me)?;
            }
        }
        let target = target.ok_or_else(|| GroupError::NotMember {
            group: group.into(),
            who: who.into(),
        })?;
        let view = self
            .group_change(
                group,
                true,
                |state, me| {
                    if &target == me {
                        return Err(GroupError::NotMember {
                            group: "yourself: use `sotto group leave`".into(),
                            who: who.into(),
                        });
                    }
                    Ok((
                        Op::Remove(target),
                        Self::recipients(state, &[], Some(&target)),
                    ))
                },
                &[],
            )
            .await?;
        if let Ok(record) = self.group_by_name(group) {
            let mut batch = Batch::new();
            batch.remove_group_sessions(&record.id, &target);
            self.inner.store.commit(batch).await?;
        }
        Ok(view)
    }

    /// `group.leave`
    pub async fn group_leave(&self, group: &str) -> Result<GroupView, GroupError> {
        self.group_change(group, false, |_, _| Ok((Op::Leave, Vec::new())), &[])
            .await
    }

    /// `group.rename`
    pub async fn group_rename(&self, group: &str, title: &str) -> Result<GroupView, GroupError> {
        if !valid_group_name(title) {
            return Err(GroupError::BadName);
        }
        let view = self
            .group_change(
                group,
                true,
                |_, _| Ok((Op::Rename(title.into()), Vec::new())),
                &[],
            )
            .await?;
        // The local name follows the title when it is free.
        self.rename_locally(group, title).await?;
        Ok(view)
    }

    pub(super) async fn rename_locally(&self, old: &str, title: &str) -> Result<(), GroupError> {
        let _guard = self.inner.account.lock().await;
        let mut record = self.group_by_name(old)?;
        if record.local_name == title || !self.name_free(title)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.remove_group_name(&record.local_name);
        batch.put_group_name(title, &record.id);
        record.local_name = title.into();
        batch.put_group(&record)?;
        self.inner.store.commit(batch).await?;
        Ok(())
    }

    /// `group.describe`
    pub async fn group_describe(&self, group: &str, text: &str) -> Result<GroupView, GroupError> {
        if text.len() > proto::MAX_DESCRIPTION_BYTES {
            return Err(GroupError::TooLong {
                limit: proto::MAX_DESCRIPTION_BYTES,
                got: text.len(),
            });
        }
        self.group_change(
            group,
            true,
            |_, _| Ok((Op::Describe(text.into()), Vec::new())),
            &[],
        )
        .await
    }

    /// `group.admin`
    pub async fn group_make_admin(&self, group: &str, who: &str) -> Result<GroupView, GroupError> {
        let record = self.group_by_name(group)?;
        let me = self.own_key().await?;
        let state = log_of(&record)
            .state()
            .ok_or_else(|| GroupError::Unknown(group.into()))?;
        let target = self
            .member_named(&state, who, &me)?
            .ok_or_else(|| GroupError::NotMember {
                group: group.into(),
                who: who.into(),
            })?;
        self.group_change(
            group,
            true,
            |_, _| Ok((Op::MakeAdmin(target), Vec::new())),
            &[],
        )
        .await
    }

    pub(super) async fn own_key(&self) -> Result<AccountKey, GroupError> {
        self.own_account().ok_or(GroupError::NoAccount)
    }

    /// `group.list`
    pub async fn group_list(&self) -> Result<Vec<GroupView>, GroupError> {
        let me = self.own_key().await?;
        let mut out = Vec::new();
        for record in self.inner.store.groups()? {
            let state = log_of(&record).state();
            out.push(self.group_view(&record, state.as_ref(), &me));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `group.info`
    pub async fn group_info(&self, group: &str) -> Result<GroupInfo, GroupError> {
        let me = self.own_key().await?;
        let record = self.group_by_name(group)?;
        let log = log_of(&record);
        let state = log.state();
        let mut members = Vec::new();
        if let Some(s) = &state {
            for (key, m) in &s.members {
                let (name, contact) = self.member_label(key, &m.name, &me)?;
                members.push(MemberView {
                    name,
                    address: key.address(),
                    admin: m.admin,
                    contact,
                });
            }
        }
        members.sort_by(|a, b| b.admin.cmp(&a.admin).then(a.name.cmp(&b.name)));
        let admins = members
            .iter()
            .filter(|m| m.admin)
            .map(|m| m.name.clone())
            .collect();
        Ok(GroupInfo {
            group: self.group_view(&record, state.as_ref(), &me),
            members,
            admins,
            dropped: record.dropped,
            key_stale: state.as_ref().is_some_and(|s| s.stale_key(&log)),
        })
    }

    /// `group.join`: accept an invitation.
    pub async fn group_join(&self, group: &str) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let mut record = self.group_by_name(group)?;
        if !matches!(record.status, GroupStatus::Invited { .. }) {
            return Err(GroupError::NotInvited(group.into()));
        }
        record.status = GroupStatus::Joined;
        record.joined_ms = unix_ms();
        let state = log_of(&record).state();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        batch.put_group(&record)?;
        self.changed_event(&mut staged, &record, state.as_ref(), &me, "group.changed");
        let view = self.group_view(&record, state.as_ref(), &me);
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.inner.fetch_wake.notify_one();
        Ok(view)
    }

    /// `group.decline`: forget an invitation.
    pub async fn group_decline(&self, group: &str) -> Result<GroupView, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let record = self.group_by_name(group)?;
        if !matches!(record.status, GroupStatus::Invited { .. }) {
            return Err(GroupError::NotInvited(group.into()));
        }
        let view = self.group_view(&record, log_of(&record).state().as_ref(), &me);
        let mut batch = Batch::new();
        batch.remove_group(&record.id);
        batch.remove_group_name(&record.local_name);
        self.inner.store.commit(batch).await?;
        drop(guard);
        Ok(view)
    }

    /// Is `name` a group's?
    pub(in crate::service) fn is_group(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.store.group_named(name)?.is_some())
    }
}
