//! The mailbox client: where a dead drop's hosts are, depositing envelopes there, and
//! fetching (then deleting) what waits in this node's own dead drops.
//!
//! A dead drop's hosts are the `replicas` nodes closest to its address in Kademlia's XOR
//! metric, this node included when it is among them (it then hosts the envelope itself).

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use rand::Rng as _;
use sotto_protocol::card::Card;
use sotto_protocol::content::MessageId;
use sotto_protocol::deaddrop::{Address, DropKey, Secret};
use sotto_protocol::envelope;
use sotto_protocol::identity::AccountKey;
use sotto_protocol::mailbox::{
    self, Delete, Deposit, DepositAuth, Fetch, Refusal, Request, Response,
};
use sotto_protocol::pow;
use sotto_protocol::wire;
use tokio::sync::watch;

use crate::host::Host;
use crate::network::closer;
use crate::service::{now_ms, Error, Service};
use crate::store::{self, Batch, Tree};

/// The most epochs back a fetch looks, however long the node was away.
pub const MAX_EPOCHS_BACK: u64 = 16;
/// How long the digests of received envelopes are kept (twice the longest a host keeps one).
const SEEN_KEEP_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// How often they are pruned.
const SEEN_PRUNE_EVERY_MS: u64 = 60 * 60 * 1000;
/// The most pages fetched from one host for one dead drop in one round.
const MAX_PAGES: usize = 64;
/// The most dead drops whose hosts one maintenance round looks up for handover (each is
/// one Kademlia lookup). A node hosting more takes several rounds to look at them all, in
/// turn, so that handover does not take every lookup the node's pace allows
/// ([`crate::limits::Limits::own_lookups`], docs/robustness.md).
pub const HANDOVER_LOOKUPS_PER_ROUND: usize = 60;

/// Where a request goes: this node's own host, or a peer.
#[derive(Clone, Debug)]
pub enum Target {
    Local,
    Remote(PeerId, Vec<Multiaddr>),
}

impl Target {
    pub fn id_bytes(&self, me: &PeerId) -> Vec<u8> {
        match self {
            Target::Local => me.to_bytes(),
            Target::Remote(p, _) => p.to_bytes(),
        }
    }
}

fn address_hex(address: &Address) -> String {
    address.0[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The hosts of `address`, closest first.
pub async fn hosts_for(service: &Service, address: &Address) -> Vec<Target> {
    let net = service.network();
    let me = net.peer_id();
    let peers = net.closest_peers(&address.0).await.unwrap_or_default();
    let mut out = Vec::new();
    let mut placed = false;
    for (peer, addrs) in peers {
        if !placed && closer(&address.0, &me, &peer) {
            out.push(Target::Local);
            placed = true;
        }
        out.push(Target::Remote(peer, addrs));
    }
    if !placed {
        out.push(Target::Local);
    }
    out.truncate(service.mailbox_config().replicas.max(1));
    out
}

/// Send `request` to `target`.
pub async fn ask(
    service: &Service,
    host: &Host,
    target: &Target,
    request: Request,
) -> Result<Response, String> {
    match target {
        Target::Local => Ok(host
            .handle_request(&service.network().peer_id().to_bytes(), request)
            .await),
        Target::Remote(peer, addrs) => {
            // A host that said "slow down" is left alone for a while, by every loop
            // (deposits, fetches, handover), so that an honest node never runs into a ban.
            if service.is_throttled(peer) {
                return Ok(Response::Refused(mailbox::Refusal::RateLimited));
            }
            let response = service
                .network()
                .mailbox(*peer, addrs.clone(), &request)
                .await
                .map_err(|e| e.to_string())?;
            match response {
                Response::Refused(mailbox::Refusal::RateLimited) => service.throttle(peer, false),
                Response::Refused(mailbox::Refusal::Busy) => service.throttle(peer, true),
                _ => {}
            }
            Ok(response)
        }
    }
}

/// Build the deposit of `envelope` for `contact`: at the contact's pairwise dead drop for
/// this epoch if the contact told its inbox secret, else at its intro dead drop with a
/// proof-of-work stamp of `difficulty`.
pub async fn build_deposit(
    service: &Service,
    contact: &store::Contact,
    envelope: Vec<u8>,
    difficulty: u8,
) -> Result<Deposit, Error> {
    let now = now_ms();
    let expires_at = now.saturating_add(service.mailbox_config().policy.ttl_ms);
    let digest = envelope::digest(&envelope);
    if let Some(secret) = contact.their_inbox {
        let key = Secret::from_bytes(secret).drop_key(service.epoch_at(now));
        let auth = DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at)));
        return Ok(Deposit {
            address: key.address(),
            envelope,
            expires_at,
            auth,
        });
    }
    let card = Card::from_bytes(&contact.card)?;
    let intro = card.body().intro;
    let address = Address::of_intro_key(&intro);
    let start: u64 = rand::thread_rng().gen();
    let tries = 1u64 << (u32::from(difficulty.min(pow::MAX_DIFFICULTY)) + 8).min(40);
    let nonce =
        tokio::task::spawn_blocking(move || pow::mint(&address, &digest, difficulty, start, tries))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .ok_or_else(|| Error::Internal("could not find a proof-of-work stamp".into()))?;
    Ok(Deposit {
        address,
        envelope,
        expires_at,
        auth: DepositAuth::Stamp { intro, nonce },
    })
}

/// The hosts found for addresses during one pass over the outbox: a burst of messages to
/// one contact shares one lookup.
pub type HostCache = std::collections::HashMap<Address, Vec<Target>>;

/// Deposit an outbox entry at the hosts that do not have it yet. Returns the hosts that
/// now hold it (all of them, old and new).
pub async fn deposit_entry(
    service: &Service,
    host: &Host,
    entry: &store::OutboxEntry,
    cache: &mut HostCache,
) -> Result<Vec<Vec<u8>>, Error> {
    let Some(contact) =
        service
            .store()
            .get::<store::Contact>(Tree::Contacts, &entry.to.0, "contact")?
    else {
        return Ok(entry.hosts.clone());
    };
    let me = service.network().peer_id();
    let mut difficulty = host.policy().stamp_difficulty;
    let mut deposit = build_deposit(service, &contact, entry.envelope.clone(), difficulty).await?;
    let mut stored = entry.hosts.clone();
    let targets = match cache.get(&deposit.address) {
        Some(t) => t.clone(),
        None => {
            let t = hosts_for(service, &deposit.address).await;
            cache.insert(deposit.address, t.clone());
            t
        }
    };
    for target in targets {
        let id = target.id_bytes(&me);
        if stored.contains(&id) {
            continue;
        }
        let mut response = ask(service, host, &target, Request::Deposit(deposit.clone())).await;
        if let Ok(Response::Refused(Refusal::StampRequired(d))) = response {
            // The host asks for more work than this node's own setting: do it once.
            if d > difficulty && d <= pow::MAX_DIFFICULTY {
                difficulty = d;
                deposit = build_deposit(service, &contact, entry.envelope.clone(), d).await?;
                response = ask(service, host, &target, Request::Deposit(deposit.clone())).await;
            }
        }
        match response {
            Ok(Response::Stored | Response::AlreadyStored) => stored.push(id),
            Ok(other) => tracing::debug!("mailbox host refused a deposit: {other:?}"),
            Err(e) => tracing::debug!("mailbox deposit failed: {e}"),
        }
    }
    Ok(stored)
}

/// The addresses and keys of every dead drop this node should look in now.
async fn own_drops(service: &Service) -> Result<Vec<(Address, DropKey)>, Error> {
    let now = now_ms();
    let current = service.epoch_at(now);
    let last = service
        .store()
        .get_raw(Tree::Meta, store::META_LAST_FETCH_EPOCH)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(current);
    let first = last
        .saturating_sub(1)
        .max(current.saturating_sub(MAX_EPOCHS_BACK))
        .min(current.saturating_sub(1));
    let mut keys = Vec::new();
    if let Some(account) = service.account_lock().lock().await.as_ref() {
        let intro = DropKey::from_seed(&account.intro.seed());
        keys.push((intro.intro_address(), intro));
    } else {
        return Ok(keys);
    }
    for (_, c) in service
        .store()
        .scan::<store::Contact>(Tree::Contacts, "contact")?
    {
        if !c.presence_sent {
            continue;
        }
        let secret = Secret::from_bytes(c.inbox);
        keys.extend((first..=current).map(|e| {
            let key = secret.drop_key(e);
            (key.address(), key)
        }));
    }
    Ok(keys)
}

/// Fetch every dead drop of this node from its hosts, hand what arrived to the service, and
/// delete it at the host. Returns how many envelopes were taken.
pub async fn fetch_round(service: &Service, host: &Host) -> Result<usize, Error> {
    let started = now_ms();
    let mut taken = 0;
    let mut complete = true;
    for (address, key) in own_drops(service).await? {
        let mut reached = false;
        for target in hosts_for(service, &address).await {
            // This node alone is no proof that the dead drop was looked at.
            let remote = matches!(target, Target::Remote(..));
            let (n, ok) = fetch_from(service, host, &target, &address, &key).await;
            taken += n;
            reached |= ok && remote;
        }
        complete &= reached;
    }
    if !complete {
        // Some dead drop was out of reach: look at the same epochs again next time.
        return Ok(taken);
    }
    let epoch = service.epoch_at(started);
    let mut batch = Batch::new();
    batch.put_raw(
        Tree::Meta,
        store::META_LAST_FETCH_EPOCH.to_vec(),
        epoch.to_be_bytes().to_vec(),
    );
    service.store().apply(&batch)?;
    Ok(taken)
}

/// Fetch one dead drop from one host. Returns how many envelopes were taken, and whether
/// the host answered.
async fn fetch_from(
    service: &Service,
    host: &Host,
    target: &Target,
    address: &Address,
    key: &DropKey,
) -> (usize, bool) {
    let address = *address;
    // Proofs name the host they are for, so that no host can replay them at another.
    let host_id = target.id_bytes(&service.network().peer_id());
    let mut after = None;
    let mut done = Vec::new();
    let mut answered = false;
    for _ in 0..MAX_PAGES {
        let timestamp = now_ms();
        let fetch = Fetch {
            address,
            timestamp,
            after,
            proof: key.sign_at(&address, &Fetch::signed_bytes(timestamp, &host_id)),
        };
        let (envelopes, more) = match ask(service, host, target, Request::Fetch(fetch)).await {
            Ok(Response::Envelopes { envelopes, more }) => {
                answered = true;
                (envelopes, more)
            }
            Ok(other) => {
                tracing::debug!("fetch refused: {other:?}");
                break;
            }
            Err(e) => {
                tracing::debug!("fetch failed: {e}");
                break;
            }
        };
        let mut received: Vec<(AccountKey, MessageId)> = Vec::new();
        for env in &envelopes {
            let digest = envelope::digest(env);
            after = Some(digest);
            // Taken, seen before, or not an envelope at all: done with it. One that did not
            // open or decrypt (perhaps an earlier message is still missing) or could not be
            // stored stays on the host, to be tried again until it expires.
            if let (
                wire::Response::Accepted
                | wire::Response::Duplicate
                | wire::Response::Refused(wire::Refusal::Malformed),
                stored,
            ) = service.receive_detailed("a mailbox host", env).await
            {
                done.push(digest);
                received.extend(stored);
            }
        }
        // Nothing else tells the senders that these arrived: one receipt per sender.
        let mut by_sender: std::collections::BTreeMap<AccountKey, Vec<MessageId>> =
            Default::default();
        for (key, id) in received {
            by_sender.entry(key).or_default().push(id);
        }
        for (key, ids) in by_sender {
            if let Err(e) = service.send_receipt(&key, ids).await {
                tracing::warn!("cannot queue a receipt: {e}");
            }
        }
        if !more || envelopes.is_empty() {
            break;
        }
    }
    let taken = done.len();
    for ids in done.chunks(mailbox::MAX_DELETE_IDS) {
        let timestamp = now_ms();
        let delete = Delete {
            address,
            timestamp,
            ids: ids.to_vec(),
            proof: key.sign_at(&address, &Delete::signed_bytes(timestamp, &host_id, ids)),
        };
        if let Err(e) = ask(service, host, target, Request::Delete(delete)).await {
            tracing::debug!("delete failed: {e}");
        }
    }
    (taken, answered)
}

/// Fetch on start, when woken (a new connection), and every fetch interval, until
/// `shutdown` turns true.
pub async fn run(service: Service, host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let interval = std::time::Duration::from_millis(service.mailbox_config().fetch_interval_ms);
    loop {
        match fetch_round(&service, &host).await {
            Ok(n) if n > 0 => tracing::debug!("fetched {n} envelopes from mailboxes"),
            Ok(_) => {}
            Err(e) => tracing::warn!("mailbox fetch: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = service.fetch_wake().notified() => {
                // Let a burst of new connections settle into one round.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Hand hosted envelopes over to closer peers, and collect expired ones, every `period`.
pub async fn maintain(
    service: Service,
    host: Arc<Host>,
    period: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut known = Handover::default();
    let mut seen_pruned_at = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match host.collect_garbage().await {
            Ok(n) if n > 0 => tracing::debug!("dropped {n} expired envelopes"),
            Ok(_) => {}
            Err(e) => tracing::warn!("mailbox garbage collection: {e}"),
        }
        let now = now_ms();
        if now.saturating_sub(seen_pruned_at) >= SEEN_PRUNE_EVERY_MS {
            seen_pruned_at = now;
            match service.store().prune_seen(now.saturating_sub(SEEN_KEEP_MS)) {
                Ok(n) if n > 0 => tracing::debug!("forgot {n} old envelope digests"),
                Ok(_) => {}
                Err(e) => tracing::warn!("pruning envelope digests: {e}"),
            }
        }
        match hand_over(&service, &host, &mut known).await {
            Ok(n) if n > 0 => tracing::debug!("handed {n} envelopes over to closer hosts"),
            Ok(_) => {}
            Err(e) => tracing::warn!("mailbox handover: {e}"),
        }
    }
}

/// What handover remembers between rounds, for each address this node holds: the hosts
/// last seen (once every envelope found them) and its place in the queue of addresses to
/// look up (a round-robin: looked up, or first seen, means to the back).
#[derive(Debug, Default)]
pub struct Handover {
    seq: u64,
    hosts: std::collections::HashMap<Address, Vec<Vec<u8>>>,
    checked: std::collections::HashMap<Address, u64>,
}

impl Handover {
    /// Of the `addresses` this node holds, those to look up this round: at most
    /// [`HANDOVER_LOOKUPS_PER_ROUND`], from the front of the queue. An address seen for
    /// the first time joins the back, so that new dead drops (a spammer can make many)
    /// never keep the others from their turn. Forgets addresses no longer held.
    pub fn due(&mut self, addresses: Vec<Address>) -> Vec<Address> {
        let held: std::collections::HashSet<&Address> = addresses.iter().collect();
        self.hosts.retain(|a, _| held.contains(a));
        self.checked.retain(|a, _| held.contains(a));
        for a in &addresses {
            if !self.checked.contains_key(a) {
                self.seq += 1;
                self.checked.insert(*a, self.seq);
            }
        }
        let mut due: Vec<(u64, Address)> = addresses
            .iter()
            .map(|a| (self.checked.get(a).copied().unwrap_or(0), *a))
            .collect();
        due.sort_unstable_by_key(|(place, _)| *place);
        due.truncate(HANDOVER_LOOKUPS_PER_ROUND);
        for (_, a) in &due {
            self.seq += 1;
            self.checked.insert(*a, self.seq);
        }
        due.into_iter().map(|(_, a)| a).collect()
    }
}

/// For the dead drops this node hosts (at most [`HANDOVER_LOOKUPS_PER_ROUND`] a round, the
/// longest unchecked first), look up their hosts. When they changed since the last look (a
/// node joined or left), copy the envelopes to them, with their original expiry and
/// authorisation; if this node is no longer among them, forget each envelope once another
/// host has stored it. Returns how many envelopes were handed over and forgotten.
pub async fn hand_over(
    service: &Service,
    host: &Host,
    known: &mut Handover,
) -> Result<usize, Error> {
    let me = service.network().peer_id();
    let mut moved = 0;
    for address in known.due(host.addresses()?) {
        let targets = hosts_for(service, &address).await;
        let ids: Vec<Vec<u8>> = targets.iter().map(|t| t.id_bytes(&me)).collect();
        let still_host = targets.iter().any(|t| matches!(t, Target::Local));
        tracing::debug!(
            "handover: {} hosts {:?} (this node among them: {still_host})",
            address_hex(&address),
            targets
                .iter()
                .map(|t| match t {
                    Target::Local => "self".to_owned(),
                    Target::Remote(p, _) => p.to_string(),
                })
                .collect::<Vec<_>>()
        );
        if still_host && known.hosts.get(&address) == Some(&ids) {
            continue;
        }
        let mut all_placed = true;
        for h in host.hosted_at(&address)? {
            let deposit = Deposit {
                address,
                envelope: h.envelope.clone(),
                expires_at: h.deposit_expires_at,
                auth: h.auth.clone(),
            };
            let mut placed = false;
            for target in targets.iter().filter(|t| matches!(t, Target::Remote(..))) {
                if let Ok(Response::Stored | Response::AlreadyStored) =
                    ask(service, host, target, Request::Deposit(deposit.clone())).await
                {
                    placed = true;
                }
            }
            all_placed &= placed;
            if placed && !still_host {
                host.forget(&address, &h).await?;
                moved += 1;
            }
        }
        // Look again at its next turn unless every envelope found its new hosts.
        if all_placed {
            known.hosts.insert(address, ids);
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_looks_at_every_address_in_turn_within_its_budget() {
        let n = HANDOVER_LOOKUPS_PER_ROUND * 3;
        let all: Vec<Address> = (0..n).map(|i| Address([i as u8; 32])).collect();
        let mut h = Handover::default();
        let mut seen = std::collections::HashSet::new();
        let mut first = Vec::new();
        for round in 0..3 {
            let due = h.due(all.clone());
            if round == 0 {
                first = due.clone();
                first.sort();
            }
            assert!(due.len() <= HANDOVER_LOOKUPS_PER_ROUND);
            for a in due {
                assert!(seen.insert(a), "an address came twice before all came once");
            }
        }
        assert_eq!(seen.len(), n, "three rounds cover every address");
        // The fourth round starts again with the longest unchecked: the first round's.
        let mut fourth = h.due(all.clone());
        fourth.sort();
        assert_eq!(fourth, first);
        // A new address waits for its turn behind those held before it; one no longer
        // held is forgotten.
        let mut some = all[1..].to_vec();
        some.push(Address([255; 32]));
        for _ in 0..2 {
            assert!(!h.due(some.clone()).contains(&Address([255; 32])));
        }
        assert!(h.due(some).contains(&Address([255; 32])));
        assert!(!h.checked.contains_key(&all[0]));
    }
}
