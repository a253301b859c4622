//! Invitations: parts gathered per sender over pairwise sessions, then joined or kept.

use super::*;

impl Service {
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
