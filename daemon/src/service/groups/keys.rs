//! Sender keys over pairwise Olm sessions: a member seals each new Megolm session key under
//! a fresh bundle key and shares that with every other member in an Olm message of its own
//! (bundled, in group envelopes under the current secret); a member opens only the one for
//! it. Members who are not each other's
//! contacts start those sessions from the Olm keys of the member records (from the cards),
//! or from the newer fallback key a member announced after replacing its card's
//! (docs/protocol.md §14.4).

use sotto_protocol::group::{MemberKeys, OlmKeys, SenderKeys};
use sotto_protocol::session::{Ciphertext, Pairwise};

use super::*;

impl Service {
    /// The Olm keys to start a session with `member` of `group`: those it announced last if
    /// it did, else those of its member record.
    fn olm_keys_of(
        &self,
        group: &GroupId,
        state: &GroupState,
        member: &AccountKey,
    ) -> Result<Option<OlmKeys>, GroupError> {
        let Some(m) = state.members.get(member) else {
            return Ok(None);
        };
        let announced = self
            .inner
            .store
            .group_sessions(group, member)?
            .keys
            .map(|k| k.olm)
            .filter(|k| k.identity == m.olm.identity);
        Ok(Some(announced.unwrap_or(m.olm)))
    }

    /// Share `key` with every other member of `state`: one Olm message each over the
    /// pairwise session with that member (started now if there is none), in bundles left at
    /// the group's dead drop under `secret`, or, too large for one small bundle, split among
    /// its key dead drops by the members' buckets. A member whose keys do not start a session is
    /// skipped (and says so in the log). Returns how many members it was shared with.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_sender_key(
        &self,
        account: &LocalAccount,
        record: &GroupRecord,
        state: &GroupState,
        key: &SenderKey,
        secret: &GroupSecret,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<usize, GroupError> {
        let me = account.identity.public();
        let (bundle_key, sealed) = SenderKeys::seal(key, &mut OsRng)?;
        let pickle_key = self.inner.pickle_key;
        let mut boxes: Vec<(AccountKey, Ciphertext)> = Vec::new();
        for member in state.members.keys().filter(|m| *m != &me) {
            let Some(olm) = self.olm_keys_of(&record.id, state, member)? else {
                continue;
            };
            let pickles = self.inner.store.member_sessions(member)?;
            let mut pairwise = match Pairwise::from_pickle(&pickles, &pickle_key) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("the sessions with a group member are unreadable: {e}");
                    Pairwise::new()
                }
            };
            match pairwise.encrypt(
                &account.device,
                &olm.identity,
                &olm.fallback,
                bundle_key.as_ref(),
            ) {
                Ok(ct) => {
                    batch.put_member_sessions(member, &pairwise.pickle(&pickle_key))?;
                    boxes.push((*member, ct));
                }
                Err(e) => tracing::debug!("no session with a group member: {e}"),
            }
        }
        let shared = boxes.len();
        let placed = SenderKeys::placed(
            secret,
            record.id,
            me,
            sealed,
            boxes,
            self.inner.keys.group_shared_bundle_bytes,
        );
        for (bucket, bundle) in placed {
            let drop = match bucket {
                None => secret.drop_secret(),
                Some(b) => secret.key_drop_secret(b),
            };
            self.stage_group_deposit_at(
                batch,
                staged,
                record.id,
                secret,
                &drop,
                &Payload::SenderKeys(bundle),
                None,
            )?;
        }
        Ok(shared)
    }

    /// A bundle of sender keys from a current member, under the secret of the change
    /// `hash`: the Olm message for this node, if there is one, opened over the pairwise
    /// session with the sender (started from it if it is a pre-key message: the device
    /// changes and is staged), and the sender key in it taken if it is the sender's, for
    /// this group and this secret. True too for a bundle with nothing for this node (it is
    /// passed on all the same); false if the one for this node does not open or is not the
    /// sender's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_sender_keys(
        &self,
        account: &mut LocalAccount,
        record: &mut GroupRecord,
        state: &GroupState,
        hash: [u8; 32],
        bundle: SenderKeys,
        batch: &mut Batch,
        staged: &mut Staged,
    ) -> Result<bool, GroupError> {
        let me = account.identity.public();
        let Some(sender) = state.members.get(&bundle.member) else {
            return Ok(false);
        };
        if bundle.group != record.id || bundle.check().is_err() || !state.rekeys.contains(&hash) {
            return Ok(false);
        }
        let pickle_key = self.inner.pickle_key;
        let pickles = self.inner.store.member_sessions(&bundle.member)?;
        let mut pairwise = Pairwise::from_pickle(&pickles, &pickle_key).unwrap_or_default();
        for ct in bundle.boxes_for(&me) {
            let plain = match pairwise.decrypt(&mut account.device, &sender.olm.identity, ct) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("a sender key does not open: {e}");
                    continue;
                }
            };
            if ct.is_pre_key() {
                self.stage_account(batch, account)?;
            }
            batch.put_member_sessions(&bundle.member, &pairwise.pickle(&pickle_key))?;
            let key = match bundle.open(&plain) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!("a sender key does not open with its bundle key: {e}");
                    return Ok(false);
                }
            };
            if key.member != bundle.member || key.group != record.id || key.key_change != hash {
                return Ok(false);
            }
            return self.take_sender_key(record, state, key, batch, staged);
        }
        Ok(bundle.boxes_for(&me).next().is_none())
    }

    /// A member's newer Olm keys: kept if signed by the member, a current member's, with its
    /// identity key unchanged, and newer than those it announced before.
    pub(super) fn take_member_keys(
        &self,
        record: &GroupRecord,
        state: &GroupState,
        keys: MemberKeys,
        batch: &mut Batch,
    ) -> Result<bool, GroupError> {
        let Some(m) = state.members.get(&keys.member) else {
            return Ok(false);
        };
        if keys.group != record.id || keys.olm.identity != m.olm.identity || keys.verify().is_err()
        {
            return Ok(false);
        }
        let member = keys.member;
        let mut sessions = self.inner.store.group_sessions(&record.id, &member)?;
        if sessions
            .keys
            .as_ref()
            .is_some_and(|k| k.at_ms >= keys.at_ms)
        {
            return Ok(true);
        }
        sessions.keys = Some(keys);
        batch.put_group_sessions(&record.id, &member, &sessions)?;
        Ok(true)
    }

    /// After this node replaced its card's fallback key: announce the new one in every
    /// group it is in, so that members who start a session with it later use a key it
    /// still holds.
    pub async fn announce_member_keys(&self) -> Result<usize, GroupError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let olm = OlmKeys {
            identity: account.device.session_key(),
            fallback: account.device.fallback_key(),
        };
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        let mut announced = 0;
        let mut pushes = Vec::new();
        for record in self.inner.store.groups()? {
            if record.status != GroupStatus::Joined {
                continue;
            }
            let Some(state) = log_of(&record).state() else {
                continue;
            };
            let Some((_, secret)) = Self::current_secret(&record, &state) else {
                continue;
            };
            if !state.is_member(&me) {
                continue;
            }
            let keys = MemberKeys::new(&account.identity, record.id, olm, unix_ms());
            self.stage_group_deposit(
                &mut batch,
                &mut staged,
                record.id,
                &secret,
                &Payload::Keys(keys),
                None,
            )?;
            // Straight to the members who are online contacts too, as a message goes.
            if let Some(envelope) = staged_envelopes(&batch).pop() {
                pushes.extend(self.direct_pushes(
                    &state,
                    &me,
                    &[envelope],
                    MAX_DIRECT_PUSH,
                    |_, _| true,
                )?);
            }
            announced += 1;
        }
        self.commit_group(batch, staged).await?;
        drop(guard);
        self.push_directly(pushes);
        Ok(announced)
    }
}
