//! The node's behaviour towards its user and its contacts: the account, contacts and
//! message requests, sending (sealing into the outbox) and receiving (opening, deduplicating,
//! storing), blocks and bans.
//!
//! Every operation that changes ratchet state writes that state in the same store
//! transaction as the message it belongs to, under one lock (the account lock), so that a
//! crash can neither lose a message the node acknowledged nor replay a spent ratchet key.
//! Events are staged in the same transaction and published after it is flushed.
//!
//! | file | operations |
//! | --- | --- |
//! | `account.rs` | `account.create`, `account.get`, `node.status`, the card |
//! | `contacts.rs` | `contact.add`, `contact.list`, `contact.verify` |
//! | `send.rs` | `message.send`, sealing into the outbox, presence, receipts |
//! | `history.rs` | `message.list`, message states |
//! | `changes/` | `message.react`/`edit`/`delete`, `chat.read`, `chat.disappearing`, changes that wait for their message, erasing disappearing messages |
//! | `receive.rs` | an envelope from a peer or a mailbox host |
//! | `requests.rs` | `requests.*` |
//! | `defence.rs` | `contact.block`/`unblock`, `peers.bans`/`unban`, recording bans |
//! | `groups.rs` | `group.*`, group messages, group envelopes from the group's dead drop |

use std::sync::Arc;

use libp2p::Multiaddr;
use sotto_protocol::chat::LocalAccount;
use sotto_protocol::identity::AccountKey;
use tokio::sync::{mpsc, Mutex, Notify};

use crate::config;
use crate::events::Events;
use crate::net;
use crate::store::{Batch, Seq, Store, StoreError};

mod account;
pub mod attachments;
mod changes;
mod contacts;
mod defence;
pub mod error;
pub mod groups;
mod history;
mod receive;
mod requests;
mod send;
pub mod views;

pub use changes::parse_timer;
pub use error::{AccountError, ContactError, MessageError, PeerError, ReceiveError};
pub use groups::{GroupError, GroupInfo, GroupTaken, GroupView, MemberView};
pub use receive::Received;
pub use views::{
    AccountView, AttachmentView, BanView, BlockState, ContactView, MessageView, NodeStatus,
    ReactionView, ReadView, Rejected, TimerView, Unbanned, Verification,
};

/// The most messages waiting in the outbox; `send` refuses more.
pub const MAX_OUTBOX: usize = 10_000;
/// The most contacts, requests included.
pub const MAX_CONTACTS: usize = 10_000;
/// The most message requests waiting for the user's answer.
pub const MAX_REQUESTS: usize = 1_000;
/// The longest contact name.
pub const MAX_NAME_CHARS: usize = 64;
/// Signals waiting for the outbox worker, at most (a sender waits beyond that).
pub const SIGNAL_QUEUE: usize = 1_024;

/// What the service tells the outbox worker (`delivery.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A new entry is in the outbox.
    Queued(Seq),
    /// The contact was just heard from: whatever waits for it may go now.
    Heard(AccountKey),
    /// The contact was forgotten, and its outbox entries removed.
    Forgotten(AccountKey),
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    net: net::Handle,
    events: Events,
    account: Mutex<Option<LocalAccount>>,
    pickle_key: [u8; 32],
    announce: Vec<Multiaddr>,
    mailbox: config::Mailbox,
    keys: config::Keys,
    signals: mpsc::Sender<Signal>,
    fetch_wake: Notify,
    /// Wakes the group outbox worker.
    group_wake: Notify,
    /// Wakes the download loop (`attachments`).
    blob_wake: Notify,
    /// Wakes the loop that rekeys groups whose secret a member who left still holds.
    rekey_wake: Notify,
    /// The account's key, once there is an account.
    own_account: std::sync::OnceLock<AccountKey>,
    /// The last `sent_at` given to a message: each is later than the one before, so that a
    /// burst keeps its order in the recipient's history.
    last_sent_at: std::sync::atomic::AtomicU64,
    /// The simulator's seeded generator (see [`crate::link::Harness::seed`]).
    seeded: Option<std::sync::Mutex<rand::rngs::StdRng>>,
}

impl Service {
    /// The service over `store`, loading the account if one exists. What it has for the
    /// outbox worker comes out of the returned receiver.
    pub fn new(
        store: Store,
        net: net::Handle,
        announce: Vec<Multiaddr>,
        mailbox: config::Mailbox,
        keys: config::Keys,
        seed: Option<u64>,
    ) -> Result<(Self, mpsc::Receiver<Signal>), StoreError> {
        let pickle_key = match store.pickle_key()? {
            Some(k) => k,
            None => {
                let key: [u8; 32] = rand::random();
                let mut b = Batch::new();
                b.put_pickle_key(&key);
                store.apply(&b)?;
                key
            }
        };
        let account = match store.account()? {
            Some(snapshot) => Some(LocalAccount::restore(&snapshot, &pickle_key).map_err(|e| {
                StoreError::Corrupt {
                    what: "account",
                    detail: e.to_string(),
                }
            })?),
            None => None,
        };
        let own_account = account.as_ref().map(|a| a.identity.public());
        let events = Events::new(store.clone());
        let (signals, signals_rx) = mpsc::channel(SIGNAL_QUEUE);
        let service = Service {
            inner: Arc::new(Inner {
                store,
                net,
                events,
                account: Mutex::new(account),
                pickle_key,
                announce,
                mailbox,
                keys,
                signals,
                fetch_wake: Notify::new(),
                group_wake: Notify::new(),
                blob_wake: Notify::new(),
                rekey_wake: Notify::new(),
                own_account: std::sync::OnceLock::new(),
                last_sent_at: Default::default(),
                seeded: seed.map(|seed| {
                    std::sync::Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                        seed,
                    ))
                }),
            }),
        };
        if let Some(key) = own_account {
            let _ = service.inner.own_account.set(key);
        }
        Ok((service, signals_rx))
    }

    /// The account's key, if there is an account.
    pub fn own_account(&self) -> Option<AccountKey> {
        self.inner.own_account.get().copied()
    }

    /// Wakes the group outbox worker (a group envelope was queued).
    pub fn group_wake(&self) -> &Notify {
        &self.inner.group_wake
    }

    /// 32 random bytes for a new secret: from the OS, or from the simulator's seed.
    pub(crate) fn random_secret(&self) -> [u8; 32] {
        match &self.inner.seeded {
            Some(rng) => rand::Rng::gen(&mut *rng.lock().unwrap_or_else(|p| p.into_inner())),
            None => rand::random(),
        }
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

    pub fn network(&self) -> &net::Handle {
        &self.inner.net
    }

    pub fn mailbox_config(&self) -> &config::Mailbox {
        &self.inner.mailbox
    }

    /// Wakes the mailbox fetcher (a new connection: envelopes may be reachable now).
    pub fn fetch_wake(&self) -> &Notify {
        &self.inner.fetch_wake
    }

    /// The account lock: hold it to read or change the account or any ratchet session.
    pub(crate) fn account_lock(&self) -> &Mutex<Option<LocalAccount>> {
        &self.inner.account
    }

    /// A `sent_at` for a new message: now, or 1 ms after the previous one if that is not
    /// earlier.
    pub(crate) fn next_sent_at(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = crate::clock::unix_ms();
        let previous = self
            .inner
            .last_sent_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or(now);
        now.max(previous.saturating_add(1))
    }

    /// Tell the network which peers are the nodes of this user's contacts (not requests,
    /// not blocked contacts): their envelopes count against the contacts' higher limit.
    pub async fn share_contact_nodes(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let mut peers = Vec::new();
        for (key, contact) in store.contacts()? {
            if contact.request || store.is_blocked(&key)? {
                continue;
            }
            peers.extend(contact.node().map(|(peer, _)| peer));
        }
        if self.inner.net.set_contacts(peers).await.is_err() {
            tracing::debug!("the network task has stopped; contacts' nodes not shared");
        }
        Ok(())
    }

    /// Tell the outbox worker. It only stops with the node; then the signal has no one to
    /// hear it.
    pub(crate) async fn signal(&self, signal: Signal) {
        let _ = self.inner.signals.send(signal).await;
    }
}
