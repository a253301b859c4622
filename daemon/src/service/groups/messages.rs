//! Group messages: sending (encrypted once, left once at the group's dead drop, pushed to
//! online contacts among the members), listing, and the group outbox's results.

use super::*;

/// Group envelopes to push straight to one member's node.
type Push = (libp2p::PeerId, Vec<libp2p::Multiaddr>, Vec<Vec<u8>>);

impl Service {
    pub(in crate::service) fn view_group_message(
        &self,
        m: &GroupMessage,
        group: &str,
        from: &str,
    ) -> MessageView {
        MessageView {
            id: m.id.to_string(),
            contact: group.to_owned(),
            group: Some(group.to_owned()),
            direction: super::super::history::direction_name(m.direction),
            from: from.to_owned(),
            text: m.text.clone(),
            sent_at: m.sent_at,
            received_at: m.received_at,
            state: super::super::history::state_name(m.state),
            reply_to: None,
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
            expires_at: None,
            read_at: None,
            notice: false,
            attachments: Vec::new(),
        }
    }

    /// `message.send` to a group, and every change to a group message (reaction, edit,
    /// delete, timer): `make` gives the body, from the group's id, the time the message is
    /// written and the group's disappearing timer. Encrypted once in this node's Megolm
    /// session (a new one, announced first, when the secret changed or the session is old),
    /// left once at the group's dead drop. A message is stored with what goes with it; a
    /// change is applied here first, by the same code that applies a member's
    /// ([`Service::stage_change`]), and the message it changed is returned.
    pub(in crate::service) async fn send_group_content(
        &self,
        group: &str,
        make: impl FnOnce(GroupId, u64, Option<u64>) -> Result<Body, MessageError>,
    ) -> Result<MessageView, GroupError> {
        let invalid = |e: MessageError| GroupError::Invite(Box::new(e));
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(GroupError::NoAccount)?;
        let me = account.identity.public();
        let Joined {
            mut record,
            state,
            secret: (hash, secret),
            ..
        } = self.joined(group, &me)?;
        let chat = store::Chat::Group(record.id);
        let timer = self.inner.store.chat_timer(&chat)?;
        let sent_at = self.next_sent_at();
        let content = Content {
            id: MessageId::random(&mut OsRng),
            sent_at,
            body: make(record.id, sent_at, timer).map_err(invalid)?,
        };
        let plaintext = content
            .to_bytes()
            .map_err(|e| invalid(MessageError::Content(e)))?;
        let now = unix_ms();
        let mut batch = Batch::new();
        let mut staged = Staged::default();
        // A change is checked (and applied) before anything is encrypted or sent.
        let changed = match content.post() {
            Some(_) => None,
            None => Some(
                self.stage_change(&mut batch, chat, &me, &me, &content, now)
                    .map_err(invalid)?,
            ),
        };
        let key = self.inner.pickle_key;
        let reusable = record.outbound.as_ref().filter(|o| {
            o.key_change == hash
                && o.sent < proto::SESSION_MESSAGES
                && now.saturating_sub(o.created_ms) < proto::SESSION_AGE_MS
        });
        let (mut session, created, sent) = match reusable.and_then(|o| {
            proto::unpickle_session(&o.pickle, &key)
                .ok()
                .map(|s| (s, o))
        }) {
            Some((session, o)) => (session, o.created_ms, o.sent),
            None => {
                let session = proto::new_session();
                let key = SenderKey::new(&account.identity, record.id, hash, &session);
                self.stage_sender_key(
                    account,
                    &record,
                    &state,
                    &key,
                    &secret,
                    &mut batch,
                    &mut staged,
                )?;
                (session, now, 0)
            }
        };
        let sent_msg = Sent::encrypt(record.id, me, &mut session, &plaintext);
        record.outbound = Some(Outbound {
            pickle: proto::pickle_session(&session, &key),
            key_change: hash,
            created_ms: created,
            sent: sent.saturating_add(1),
        });
        let seq = self.inner.store.next_seq()?;
        self.stage_group_deposit(
            &mut batch,
            &mut staged,
            record.id,
            &secret,
            &Payload::Message(sent_msg),
            changed.is_none().then_some((seq, content.id)),
        )?;
        let view = match (changed, content.post()) {
            (Some(changed), _) => {
                for (kind, v) in &changed {
                    staged.events.push((
                        kind,
                        "message",
                        serde_json::to_value(v).unwrap_or_default(),
                    ));
                }
                changed.into_iter().next().ok_or(GroupError::Empty)?.1
            }
            (None, Some((text, reply_to, expires_in))) => {
                let message = GroupMessage {
                    id: content.id,
                    group: record.id,
                    from: me,
                    direction: Direction::Out,
                    text: text.to_owned(),
                    sent_at: content.sent_at,
                    received_at: None,
                    state: State::Queued,
                };
                batch.index_message(&content.id, Some(seq));
                let extras = store::Extras {
                    reply_to,
                    expires_at: expires_in.map(|t| content.sent_at.saturating_add(t)),
                    ..Default::default()
                };
                batch.put_extras(seq, &store::Extras::default(), &extras)?;
                super::super::changes::Found::Group(seq, message.clone())
                    .put(&mut batch, &extras)?;
                let mut view = self.view_group_message(&message, &record.local_name, "me");
                self.dress(&mut view, seq, &extras, Some(&state), &me)?;
                if let Some(a) =
                    self.stage_attachment(&mut batch, seq, &content, Direction::Out, true)?
                {
                    view.attachments = vec![a];
                }
                view
            }
            (None, None) => return Err(GroupError::Empty),
        };
        batch.put_group(&record)?;
        self.commit_and_push(batch, staged, &state, &me, guard)
            .await?;
        Ok(view)
    }

    /// Where to push group envelopes directly, besides the dead drop: to at most `limit`
    /// members, drawn at random, who are contacts whose node this node knows, each the
    /// envelopes (by index) `wanted` says are for it, if any (none when this node is
    /// mailbox-only: pushing would show its node to them).
    pub(super) fn direct_pushes(
        &self,
        state: &GroupState,
        me: &AccountKey,
        envelopes: &[Vec<u8>],
        limit: usize,
        wanted: impl Fn(&AccountKey, usize) -> bool,
    ) -> Result<Vec<Push>, StoreError> {
        if self.inner.mailbox.mailbox_only || envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<&AccountKey> = state.members.keys().collect();
        rand::seq::SliceRandom::shuffle(keys.as_mut_slice(), &mut rand::thread_rng());
        let mut out = Vec::new();
        for key in keys {
            if key == me || out.len() >= limit {
                continue;
            }
            let mine: Vec<Vec<u8>> = (0..envelopes.len())
                .filter(|i| wanted(key, *i))
                .map(|i| envelopes[i].clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            let Some(contact) = self.inner.store.contact(key)? else {
                continue;
            };
            if contact.request || contact.route.is_none() {
                continue;
            }
            if let Some((peer, addrs)) = contact.node() {
                out.push((peer, addrs, mine));
            }
        }
        Ok(out)
    }

    /// Push group envelopes straight to members' nodes, in the background: the dead drop
    /// is the path that counts; this one only makes it sooner for those online.
    pub(super) fn push_directly(&self, pushes: Vec<Push>) {
        for (peer, addrs, envelopes) in pushes {
            let net = self.inner.net.clone();
            tokio::spawn(async move {
                for envelope in envelopes {
                    if let Err(e) = net
                        .send(peer, addrs.clone(), crate::net::Frame::Bytes(envelope))
                        .await
                    {
                        tracing::debug!("a direct group push failed: {e}");
                        return;
                    }
                }
            });
        }
    }

    /// A group envelope that came straight from a member's node: it opens under one of the
    /// secrets of a joined group, or it is not a group envelope this node can read.
    pub(in crate::service) async fn receive_group_pushed(
        &self,
        bytes: &[u8],
    ) -> Option<GroupTaken> {
        let groups = self.inner.store.groups().ok()?;
        for record in groups {
            if record.status != GroupStatus::Joined {
                continue;
            }
            for (hash, secret) in record.secrets.iter().rev().take(2) {
                if proto::open_payload(&GroupSecret::from_bytes(*secret), bytes).is_ok() {
                    return Some(self.receive_group(record.id, *hash, bytes, true).await);
                }
            }
        }
        None
    }

    /// `message.list` for a group.
    pub(in crate::service) fn group_messages(
        &self,
        group: &str,
        limit: Option<usize>,
    ) -> Result<Vec<MessageView>, GroupError> {
        let me = self.own_account().ok_or(GroupError::NoAccount)?;
        let record = self.group_by_name(group)?;
        let state = log_of(&record).state();
        let mut out = Vec::new();
        for (seq, m) in self.inner.store.group_messages(&record.id)? {
            let from = match (m.direction, &state) {
                (Direction::Out, _) => "me".to_owned(),
                (Direction::In, s) => {
                    let name = s
                        .as_ref()
                        .and_then(|s| s.members.get(&m.from).map(|x| x.name.clone()))
                        .unwrap_or_default();
                    self.member_label(&m.from, &name, &me)?.0
                }
            };
            let when = super::super::history::written_at(m.sent_at, m.received_at);
            let mut view = self.view_group_message(&m, &record.local_name, &from);
            self.dress(
                &mut view,
                seq,
                &self.inner.store.extras(seq)?,
                state.as_ref(),
                &me,
            )?;
            out.push((when, view));
        }
        Ok(super::super::history::in_order(out, limit))
    }

    /// The group envelope `seq` is on the group's hosts: its message (if any) moves on.
    pub async fn group_deposited(
        &self,
        seq: Seq,
        message: Option<MessageId>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.remove_group_outbox(seq);
        let mut events = Vec::new();
        if message.is_some() {
            if let Some(mut m) = self.inner.store.group_message(seq)? {
                if m.state == State::Queued {
                    m.state = State::OnHosts;
                    batch.put_group_message(seq, &m)?;
                    let name = self
                        .inner
                        .store
                        .group(&m.group)?
                        .map(|g| g.local_name)
                        .unwrap_or_default();
                    events.push(self.view_group_message(&m, &name, "me"));
                }
            }
        }
        let order = self.inner.events.order().await;
        let staged = events
            .iter()
            .map(|v| {
                self.inner
                    .events
                    .stage(&mut batch, "message.on_hosts", "message", v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(staged);
        drop(order);
        Ok(())
    }

    /// The group dead drops to fetch: for each joined group, the drop secret of each secret
    /// held, with the group and the hash of the change that made the secret; and, while a
    /// message waits for its sender's key, the key dead drop of `me`'s bucket under each.
    pub fn group_drops(
        &self,
        me: &AccountKey,
    ) -> Result<Vec<(GroupId, [u8; 32], sotto_protocol::deaddrop::Secret)>, StoreError> {
        let mut out = Vec::new();
        for record in self.inner.store.groups()? {
            if record.status != GroupStatus::Joined {
                continue;
            }
            // The newest two: the current secret and the one before (messages sent under it
            // while its change travelled).
            for (hash, secret) in record.secrets.iter().rev().take(2) {
                let secret = GroupSecret::from_bytes(*secret);
                out.push((record.id, *hash, secret.drop_secret()));
                if !record.pending.is_empty() {
                    out.push((
                        record.id,
                        *hash,
                        secret.key_drop_secret(secret.key_bucket(me)),
                    ));
                }
            }
        }
        Ok(out)
    }
}
