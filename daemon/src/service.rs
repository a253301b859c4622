//! The node's behaviour: the account, contacts, sending and receiving messages.
//!
//! Every operation that changes ratchet state writes that state in the same store
//! transaction as the message it belongs to, under one lock, so that a crash can neither lose
//! a message the node acknowledged nor replay a spent ratchet key.

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use rand::rngs::OsRng;
use serde::Serialize;
use serde_json::{json, Value};
use sotto_protocol::card::{Card, CardError, Hints};
use sotto_protocol::chat::{self, LocalAccount, Snapshot};
use sotto_protocol::content::{Body, Content, ContentError, MessageId, Presence, MAX_TEXT_BYTES};
use sotto_protocol::envelope;
use sotto_protocol::identity::{safety_number, AccountKey};
use sotto_protocol::padding;
use sotto_protocol::session::Pairwise;
use sotto_protocol::wire::{Refusal, Response};
use tokio::sync::{Mutex, Notify};

use crate::config;
use crate::events::Events;
use crate::host::Host;
use crate::network;
use crate::store::{self, Batch, Direction, State, Store, StoreError, Tree};

mod defence;
mod receive;
mod requests;

pub use defence::BanView;

/// The most messages waiting in the outbox; `send` refuses more.
pub const MAX_OUTBOX: usize = 10_000;
/// The most contacts, requests included.
pub const MAX_CONTACTS: usize = 10_000;
/// The most message requests waiting for the user's answer.
pub const MAX_REQUESTS: usize = 1_000;
/// The longest contact name.
pub const MAX_NAME_CHARS: usize = 64;

/// Why an operation failed; each maps to one control-API error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no account yet: create one with `sotto init --name NAME`")]
    NoAccount,
    #[error("an account exists already")]
    AccountExists,
    #[error("no contact named {0:?}")]
    UnknownContact(String),
    #[error("bad card: {0}")]
    BadCard(#[from] CardError),
    #[error("a contact named {0:?} exists already; choose another name with --name")]
    NameTaken(String),
    #[error("that is this account's own card")]
    OwnCard,
    #[error("{0}")]
    InvalidParams(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<ContentError> for Error {
    fn from(e: ContentError) -> Self {
        Error::InvalidParams(e.to_string())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The account as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct AccountView {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub card: String,
}

/// A contact as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct ContactView {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub display_name: String,
    pub added_at: u64,
    pub request: bool,
}

/// A message as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    pub id: String,
    pub contact: String,
    pub direction: &'static str,
    pub from: String,
    pub text: String,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub state: &'static str,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    net: network::Handle,
    events: Events,
    account: Mutex<Option<LocalAccount>>,
    pickle_key: [u8; 32],
    announce: Vec<Multiaddr>,
    mailbox: config::Mailbox,
    host: Arc<Host>,
    outbox_wake: Notify,
    fetch_wake: Notify,
    /// The simulator's seeded generator (see [`crate::link::Harness::seed`]).
    seeded: Option<std::sync::Mutex<rand::rngs::StdRng>>,
    /// Peers that told this node to slow down (`RateLimited`, `Busy`), and until when
    /// (monotonic): nothing is sent to them before then.
    throttled: std::sync::Mutex<std::collections::HashMap<PeerId, tokio::time::Instant>>,
}

/// How long this node leaves a peer alone after it said `RateLimited`: long enough for its
/// buckets to refill well beyond a burst's worth of refusals.
pub const THROTTLE_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// … and after it said `Busy` (its queue was full for a moment).
pub const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Peers remembered as throttled, at most (the oldest are forgotten).
const MAX_THROTTLED: usize = 4_096;

impl Service {
    /// The service over `store`, loading the account if one exists.
    pub fn new(
        store: Store,
        net: network::Handle,
        announce: Vec<Multiaddr>,
        mailbox: config::Mailbox,
        harness: &crate::link::Harness,
    ) -> Result<Self, Error> {
        let host = Arc::new(
            Host::new(
                store.clone(),
                mailbox.policy.clone(),
                net.peer_id().to_bytes(),
            )
            .with_observer(harness.observer.clone()),
        );
        let pickle_key = match store.get_raw(Tree::Meta, store::META_PICKLE_KEY)? {
            Some(k) => <[u8; 32]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt {
                what: "pickle key",
                detail: "wrong length".into(),
            })?,
            None => {
                let key: [u8; 32] = rand::random();
                let mut b = Batch::new();
                b.put_raw(Tree::Meta, store::META_PICKLE_KEY.to_vec(), key.to_vec());
                store.apply(&b)?;
                key
            }
        };
        let account = match store.get::<Snapshot>(Tree::Meta, store::META_ACCOUNT, "account")? {
            Some(snapshot) => Some(LocalAccount::restore(&snapshot, &pickle_key).map_err(|e| {
                StoreError::Corrupt {
                    what: "account",
                    detail: e.to_string(),
                }
            })?),
            None => None,
        };
        let events = Events::new(store.clone());
        Ok(Service {
            inner: Arc::new(Inner {
                store,
                net,
                events,
                account: Mutex::new(account),
                pickle_key,
                announce,
                mailbox,
                host,
                outbox_wake: Notify::new(),
                fetch_wake: Notify::new(),
                throttled: Default::default(),
                seeded: harness.seed.map(|seed| {
                    std::sync::Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                        seed,
                    ))
                }),
            }),
        })
    }

    /// 32 random bytes for a new secret: from the OS, or from the simulator's seed.
    pub(crate) fn random_secret(&self) -> [u8; 32] {
        match &self.inner.seeded {
            Some(rng) => rand::Rng::gen(&mut *rng.lock().unwrap_or_else(|p| p.into_inner())),
            None => rand::random(),
        }
    }

    /// `peer` said `RateLimited` (or `Busy`): leave it alone for [`THROTTLE_FOR`] (or
    /// [`BUSY_FOR`]).
    pub fn throttle(&self, peer: &PeerId, busy: bool) {
        let now = tokio::time::Instant::now();
        let mut map = self
            .inner
            .throttled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_THROTTLED {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_THROTTLED {
                map.clear();
            }
        }
        tracing::debug!("peer {peer} asked this node to slow down");
        map.insert(*peer, now + if busy { BUSY_FOR } else { THROTTLE_FOR });
    }

    /// Should this node hold back what it would send to `peer`?
    pub fn is_throttled(&self, peer: &PeerId) -> bool {
        let map = self
            .inner
            .throttled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(peer)
            .is_some_and(|until| *until > tokio::time::Instant::now())
    }

    /// The dead-drop epoch `now_ms` falls in.
    pub fn epoch_at(&self, now_ms: u64) -> u64 {
        let m = &self.inner.mailbox;
        sotto_protocol::deaddrop::epoch_at(now_ms.saturating_sub(m.epoch_origin_ms), m.epoch_ms)
    }

    /// How many handles on the service exist (1 when only the caller's is left).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn network(&self) -> &network::Handle {
        &self.inner.net
    }

    pub(crate) fn outbox_wake(&self) -> &Notify {
        &self.inner.outbox_wake
    }

    pub(crate) fn fetch_wake(&self) -> &Notify {
        &self.inner.fetch_wake
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.inner.host
    }

    pub fn mailbox_config(&self) -> &config::Mailbox {
        &self.inner.mailbox
    }

    pub(crate) fn account_lock(&self) -> &Mutex<Option<LocalAccount>> {
        &self.inner.account
    }

    /// The card's reachability hints: empty unless the node publishes its address.
    async fn hints(&self) -> Hints {
        if self.inner.mailbox.publish_address && !self.inner.mailbox.mailbox_only {
            self.route_hints().await
        } else {
            Hints::default()
        }
    }

    /// This node's PeerId and addresses.
    async fn route_hints(&self) -> Hints {
        let addrs: Vec<Multiaddr> = if self.inner.announce.is_empty() {
            match self.inner.net.status().await {
                Ok(s) => s.listen_addrs,
                Err(_) => Vec::new(),
            }
        } else {
            self.inner.announce.clone()
        };
        Hints {
            peer_id: Some(self.inner.net.peer_id().to_bytes()),
            addrs: addrs
                .iter()
                .take(sotto_protocol::card::MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
        }
    }

    async fn own_card(&self, account: &LocalAccount) -> Result<Card, Error> {
        Ok(account.card(self.hints().await, now_ms())?)
    }

    fn account_batch(&self, batch: &mut Batch, account: &LocalAccount) -> Result<(), Error> {
        batch.put(
            Tree::Meta,
            store::META_ACCOUNT.to_vec(),
            &account.snapshot(&self.inner.pickle_key),
        )?;
        Ok(())
    }

    /// `account.create`
    pub async fn create_account(&self, name: &str) -> Result<AccountView, Error> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(Error::InvalidParams(
                "a name is 1 to 64 characters, without control characters".into(),
            ));
        }
        let mut guard = self.inner.account.lock().await;
        if guard.is_some() {
            return Err(Error::AccountExists);
        }
        let account = match &self.inner.seeded {
            Some(rng) => {
                LocalAccount::generate(name, &mut *rng.lock().unwrap_or_else(|p| p.into_inner()))
            }
            None => LocalAccount::generate(name, &mut OsRng),
        };
        let mut batch = Batch::new();
        self.account_batch(&mut batch, &account)?;
        self.inner.store.commit(batch).await?;
        tracing::info!("account created");
        let view = self.view_account(&account).await?;
        *guard = Some(account);
        Ok(view)
    }

    async fn view_account(&self, account: &LocalAccount) -> Result<AccountView, Error> {
        let key = account.public();
        Ok(AccountView {
            name: account.name.clone(),
            address: key.address(),
            fingerprint: key.fingerprint(),
            card: self.own_card(account).await?.to_uri(),
        })
    }

    /// `account.get`
    pub async fn account(&self) -> Result<AccountView, Error> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        self.view_account(account).await
    }

    /// `node.status`
    pub async fn status(&self) -> Result<Value, Error> {
        let status = self
            .inner
            .net
            .status()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let address = self
            .inner
            .account
            .lock()
            .await
            .as_ref()
            .map(|a| a.public().address());
        Ok(json!({
            "peer_id": status.peer_id.to_string(),
            "listen_addrs": status.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "connected_peers": status.connected_peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "outbox": self.inner.store.len(Tree::Outbox),
            "traffic": self.inner.net.traffic().to_json(),
            "account": address,
            "version": env!("CARGO_PKG_VERSION"),
        }))
    }

    fn view_contact(key: &AccountKey, c: &store::Contact) -> ContactView {
        let display_name = Card::from_bytes(&c.card)
            .map(|card| card.body().name.clone())
            .unwrap_or_default();
        ContactView {
            name: c.name.clone(),
            address: key.address(),
            fingerprint: key.fingerprint(),
            display_name,
            added_at: c.added_at,
            request: c.request,
        }
    }

    /// Find a contact by name or address.
    pub fn resolve(&self, who: &str) -> Result<(AccountKey, store::Contact), Error> {
        let store = &self.inner.store;
        let key = match store.get_raw(Tree::Names, who.as_bytes())? {
            Some(k) => <[u8; 32]>::try_from(k.as_ref()).map(AccountKey).ok(),
            None => AccountKey::from_address(who).ok(),
        };
        let key = key.ok_or_else(|| Error::UnknownContact(who.to_owned()))?;
        let contact = store
            .get::<store::Contact>(Tree::Contacts, &key.0, "contact")?
            .ok_or_else(|| Error::UnknownContact(who.to_owned()))?;
        Ok((key, contact))
    }

    fn name_free(&self, name: &str) -> Result<bool, Error> {
        Ok(self
            .inner
            .store
            .get_raw(Tree::Names, name.as_bytes())?
            .is_none())
    }

    fn default_name(&self, display: &str) -> Result<String, Error> {
        let base: String = display
            .trim()
            .to_lowercase()
            .chars()
            .map(|c| if c.is_whitespace() { '-' } else { c })
            .filter(|c| !c.is_control())
            .take(MAX_NAME_CHARS - 4)
            .collect();
        let base = if base.is_empty() {
            "contact".to_owned()
        } else {
            base
        };
        if self.name_free(&base)? {
            return Ok(base);
        }
        for i in 2..1000 {
            let candidate = format!("{base}-{i}");
            if self.name_free(&candidate)? {
                return Ok(candidate);
            }
        }
        Err(Error::NameTaken(base))
    }

    fn stage_contact(
        &self,
        batch: &mut Batch,
        key: &AccountKey,
        contact: &store::Contact,
        card: &Card,
    ) -> Result<(), Error> {
        batch.put(Tree::Contacts, key.0.to_vec(), contact)?;
        batch.put_raw(
            Tree::Names,
            contact.name.as_bytes().to_vec(),
            key.0.to_vec(),
        );
        batch.put_raw(
            Tree::SealIndex,
            card.body().seal_key.to_vec(),
            key.0.to_vec(),
        );
        Ok(())
    }

    /// `contact.add`
    pub async fn add_contact(&self, card: &str, name: Option<&str>) -> Result<ContactView, Error> {
        let card = Card::from_uri(card)?;
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        if card.account() == account.public() {
            return Err(Error::OwnCard);
        }
        if let Some(n) = name {
            if n.is_empty()
                || n.chars().count() > MAX_NAME_CHARS
                || n.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(Error::InvalidParams(
                    "a contact name is 1 to 64 characters, without spaces".into(),
                ));
            }
        }
        let key = card.account();
        let existing = self
            .inner
            .store
            .get::<store::Contact>(Tree::Contacts, &key.0, "contact")?;
        let mut batch = Batch::new();
        let mut contact = match existing {
            Some(mut c) => {
                if let Some(new_name) = name.filter(|n| *n != c.name) {
                    if !self.name_free(new_name)? {
                        return Err(Error::NameTaken(new_name.to_owned()));
                    }
                    batch.remove(Tree::Names, c.name.as_bytes().to_vec());
                    c.name = new_name.to_owned();
                }
                let old = Card::from_bytes(&c.card).ok();
                if old
                    .as_ref()
                    .is_none_or(|o| o.body().issued_at <= card.body().issued_at)
                {
                    if let Some(o) = old.filter(|o| o.body().seal_key != card.body().seal_key) {
                        batch.remove(Tree::SealIndex, o.body().seal_key.to_vec());
                    }
                    c.card = card.to_bytes();
                }
                c.request = false;
                c
            }
            None => {
                if self.inner.store.len(Tree::Contacts) >= MAX_CONTACTS {
                    return Err(Error::InvalidParams(format!(
                        "at most {MAX_CONTACTS} contacts"
                    )));
                }
                let name = match name {
                    Some(n) if self.name_free(n)? => n.to_owned(),
                    Some(n) => return Err(Error::NameTaken(n.to_owned())),
                    None => self.default_name(&card.body().name)?,
                };
                store::Contact::new(name, card.to_bytes(), false, self.random_secret())
            }
        };
        if !contact.presence_sent {
            self.stage_presence(account, &key, &mut contact, &mut batch)
                .await?;
        }
        let stored_card = Card::from_bytes(&contact.card)?;
        self.stage_contact(&mut batch, &key, &contact, &stored_card)?;
        let view = Self::view_contact(&key, &contact);
        let _order = self.inner.events.order().await;
        let event = self
            .inner
            .events
            .stage(&mut batch, "contact.added", "contact", json!(view))?;
        self.inner.store.commit(batch).await?;
        self.inner.events.publish(vec![event]);
        drop(guard);
        self.inner.outbox_wake.notify_one();
        Ok(view)
    }

    /// `contact.list`
    pub fn contacts(&self) -> Result<Vec<ContactView>, Error> {
        let mut out: Vec<ContactView> = self
            .inner
            .store
            .scan::<store::Contact>(Tree::Contacts, "contact")?
            .into_iter()
            .filter_map(|(k, c)| {
                <[u8; 32]>::try_from(k.as_ref())
                    .ok()
                    .map(|k| Self::view_contact(&AccountKey(k), &c))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `contact.verify`
    pub async fn verify(&self, who: &str) -> Result<Value, Error> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        let (key, contact) = self.resolve(who)?;
        Ok(json!({
            "contact": contact.name,
            "safety_number": safety_number(&account.public(), &key),
            "fingerprint": key.fingerprint(),
            "own_fingerprint": account.public().fingerprint(),
        }))
    }

    fn load_pairwise(&self, key: &AccountKey) -> Result<Pairwise, Error> {
        match self
            .inner
            .store
            .get::<Vec<String>>(Tree::Sessions, &key.0, "sessions")?
        {
            Some(p) => Pairwise::from_pickle(&p, &self.inner.pickle_key).map_err(|e| {
                Error::Store(StoreError::Corrupt {
                    what: "sessions",
                    detail: e.to_string(),
                })
            }),
            None => Ok(Pairwise::new()),
        }
    }

    fn view_message(&self, m: &store::Message, contact_name: &str) -> MessageView {
        MessageView {
            id: m.id.to_string(),
            contact: contact_name.to_owned(),
            direction: match m.direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
            from: match m.direction {
                Direction::In => contact_name.to_owned(),
                Direction::Out => "me".to_owned(),
            },
            text: m.text.clone(),
            sent_at: m.sent_at,
            received_at: m.received_at,
            state: match m.state {
                State::Queued => "queued",
                State::OnHosts => "on_hosts",
                State::Delivered => "delivered",
                State::Received => "received",
            },
        }
    }

    /// `message.send`
    pub async fn send(&self, to: &str, text: &str) -> Result<MessageView, Error> {
        if text.is_empty() {
            return Err(Error::InvalidParams("the message is empty".into()));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidParams(format!(
                "the message is too long: limit {MAX_TEXT_BYTES} bytes, got {}",
                text.len()
            )));
        }
        if self.inner.store.len(Tree::Outbox) >= MAX_OUTBOX {
            return Err(Error::Internal(format!(
                "the outbox is full ({MAX_OUTBOX} messages waiting); try again later"
            )));
        }
        let content = Content::text(MessageId::random(&mut OsRng), now_ms(), text)?;
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        let (key, contact) = self.resolve(to)?;
        if self.is_blocked(&key)? {
            return Err(Error::InvalidParams(format!(
                "{:?} is blocked; `sotto contact unblock {}` first",
                contact.name, contact.name
            )));
        }
        let mut batch = Batch::new();
        let message = self
            .stage_outgoing(account, &key, &contact, &content, &mut batch)
            .await?;
        self.inner.store.commit(batch).await?;
        drop(guard);
        // A new message tries the whole queue for this contact now, in order.
        self.retry_contact(&key).await;
        let message = message.ok_or_else(|| Error::Internal("no message record".into()))?;
        Ok(self.view_message(&message, &contact.name))
    }

    /// Encrypt `content` for the contact `key` and add it to `batch`: the advanced session,
    /// the outbox entry and, for anything but a presence, the message record. Call with the
    /// account lock held, and commit the batch before releasing it.
    pub(crate) async fn stage_outgoing(
        &self,
        account: &LocalAccount,
        key: &AccountKey,
        contact: &store::Contact,
        content: &Content,
        batch: &mut Batch,
    ) -> Result<Option<store::Message>, Error> {
        let card = Card::from_bytes(&contact.card)?;
        let mut pairwise = self.load_pairwise(key)?;
        // The card rides along only on pre-key messages: sign a fresh one only then.
        let own = if pairwise.next_is_pre_key() {
            Some(self.own_card(account).await?)
        } else {
            None
        };
        let envelope = chat::seal_message(account, own.as_ref(), &mut pairwise, &card, content)
            .map_err(|e| Error::Internal(format!("cannot encrypt: {e}")))?;
        let seq = self.inner.store.next_id()?;
        batch.put(
            Tree::Sessions,
            key.0.to_vec(),
            &pairwise.pickle(&self.inner.pickle_key),
        )?;
        let control = content.is_control();
        batch.put(
            Tree::Outbox,
            seq.to_be_bytes().to_vec(),
            &store::OutboxEntry {
                seq,
                message: content.id,
                to: *key,
                envelope,
                failures: 0,
                next_attempt_at: content.sent_at,
                hosts: Vec::new(),
                host_retries: 0,
                control,
            },
        )?;
        if control {
            return Ok(None);
        }
        let message = store::Message {
            id: content.id,
            contact: *key,
            direction: Direction::Out,
            text: content.as_text().unwrap_or_default().to_owned(),
            sent_at: content.sent_at,
            received_at: None,
            state: State::Queued,
        };
        batch.put(Tree::Messages, seq.to_be_bytes().to_vec(), &message)?;
        batch.put_raw(
            Tree::MessageIds,
            content.id.0.to_vec(),
            seq.to_be_bytes().to_vec(),
        );
        Ok(Some(message))
    }

    /// This node's presence for `contact`: the contact's inbox secret and, unless the node
    /// is mailbox-only, its PeerId and addresses.
    pub(crate) async fn presence_for(&self, contact: &store::Contact) -> Presence {
        let (peer_id, addrs) = if self.inner.mailbox.mailbox_only {
            (None, Vec::new())
        } else {
            let hints = self.route_hints().await;
            (hints.peer_id, hints.addrs)
        };
        Presence {
            inbox: contact.inbox,
            peer_id,
            addrs,
        }
    }

    /// Tell the contact `key` that these messages arrived (they came from a mailbox, so
    /// nothing else tells the sender).
    pub async fn send_receipt(&self, key: &AccountKey, ids: Vec<MessageId>) -> Result<(), Error> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(Error::NoAccount)?;
        let Some(contact) =
            self.inner
                .store
                .get::<store::Contact>(Tree::Contacts, &key.0, "contact")?
        else {
            return Ok(());
        };
        if contact.request {
            // A stranger learns nothing until the user accepts.
            return Ok(());
        }
        let mut batch = Batch::new();
        for chunk in ids.chunks(sotto_protocol::content::MAX_RECEIPT_IDS) {
            let content = Content {
                id: MessageId::random(&mut OsRng),
                sent_at: now_ms(),
                body: Body::Receipt(chunk.to_vec()),
            };
            self.stage_outgoing(account, key, &contact, &content, &mut batch)
                .await?;
        }
        self.inner.store.commit(batch).await?;
        drop(guard);
        self.inner.outbox_wake.notify_one();
        Ok(())
    }

    /// Queue this node's presence for `key` in `batch` and mark it sent in `contact`.
    pub(crate) async fn stage_presence(
        &self,
        account: &LocalAccount,
        key: &AccountKey,
        contact: &mut store::Contact,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let content = Content::presence(
            MessageId::random(&mut OsRng),
            now_ms(),
            self.presence_for(contact).await,
        );
        self.stage_outgoing(account, key, contact, &content, batch)
            .await?;
        contact.presence_sent = true;
        Ok(())
    }

    /// Move the outgoing message stored under `seq_key` forward to `state` (`OnHosts` or
    /// `Delivered`; never backward) in `batch`, and stage the event that says so. Returns
    /// the staged events, to publish after the batch is committed.
    pub(crate) fn stage_message_state(
        &self,
        batch: &mut Batch,
        seq_key: &[u8],
        state: State,
    ) -> Result<Vec<Value>, Error> {
        let Some(mut m) =
            self.inner
                .store
                .get::<store::Message>(Tree::Messages, seq_key, "message")?
        else {
            return Ok(Vec::new());
        };
        let rank = |s: State| match s {
            State::Queued => 0,
            State::OnHosts => 1,
            State::Delivered | State::Received => 2,
        };
        if m.direction != Direction::Out || rank(m.state) >= rank(state) {
            return Ok(Vec::new());
        }
        m.state = state;
        batch.put(Tree::Messages, seq_key.to_vec(), &m)?;
        let name = self
            .inner
            .store
            .get::<store::Contact>(Tree::Contacts, &m.contact.0, "contact")?
            .map(|c| c.name)
            .unwrap_or_else(|| m.contact.address());
        let kind = if state == State::Delivered {
            "message.delivered"
        } else {
            "message.on_hosts"
        };
        let view = json!(self.view_message(&m, &name));
        Ok(vec![self
            .inner
            .events
            .stage(batch, kind, "message", view)?])
    }

    /// `message.list`
    pub fn messages(
        &self,
        with: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<MessageView>, Error> {
        let filter = with.map(|w| self.resolve(w)).transpose()?.map(|(k, _)| k);
        let mut names = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (_, m) in self
            .inner
            .store
            .scan::<store::Message>(Tree::Messages, "message")?
        {
            if filter.is_some_and(|k| k != m.contact) {
                continue;
            }
            let name = match names.get(&m.contact) {
                Some(n) => n,
                None => {
                    let n = self
                        .inner
                        .store
                        .get::<store::Contact>(Tree::Contacts, &m.contact.0, "contact")?
                        .map(|c| c.name)
                        .unwrap_or_else(|| m.contact.address());
                    names.entry(m.contact).or_insert(n)
                }
            };
            // When it was written, by the sender's clock, but never later than it arrived: a
            // sender's clock cannot move a message down the conversation.
            let when = m.received_at.map_or(m.sent_at, |r| m.sent_at.min(r));
            out.push((when, self.view_message(&m, name)));
        }
        // In the order written; arrival order breaks ties. (A message fetched from a mailbox
        // can arrive after a later one that came directly.)
        out.sort_by_key(|(when, _)| *when);
        let mut out: Vec<MessageView> = out.into_iter().map(|(_, v)| v).collect();
        if let Some(limit) = limit {
            let skip = out.len().saturating_sub(limit);
            out.drain(..skip);
        }
        Ok(out)
    }

    /// Make every outbox entry for `key` due now (the contact was just heard from).
    pub async fn retry_contact(&self, key: &AccountKey) {
        let result: Result<(), Error> = async {
            let mut batch = Batch::new();
            for (k, mut e) in self
                .inner
                .store
                .scan::<store::OutboxEntry>(Tree::Outbox, "outbox entry")?
            {
                if e.to == *key && e.next_attempt_at > now_ms() {
                    e.next_attempt_at = 0;
                    batch.put(Tree::Outbox, k.to_vec(), &e)?;
                }
            }
            self.inner.store.apply(&batch)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!("cannot reschedule the outbox: {e}");
        }
        self.inner.outbox_wake.notify_one();
    }

    /// Make due every outbox entry for contacts reachable at `peer`.
    pub async fn retry_peer(&self, peer: &PeerId) {
        let peer_bytes = peer.to_bytes();
        let Ok(contacts) = self
            .inner
            .store
            .scan::<store::Contact>(Tree::Contacts, "contact")
        else {
            return;
        };
        for (k, c) in contacts {
            // The route from the contact's last presence, else its card's hints.
            let matches = match &c.route {
                Some((id, _)) => *id == peer_bytes,
                None => Card::from_bytes(&c.card).ok().is_some_and(|card| {
                    card.body().hints.peer_id.as_deref() == Some(peer_bytes.as_slice())
                }),
            };
            if let (true, Ok(k)) = (matches, <[u8; 32]>::try_from(k.as_ref())) {
                self.retry_contact(&AccountKey(k)).await;
            }
        }
    }
}
