//! Keeping hosted envelopes where they belong: every maintenance period this node drops
//! expired envelopes, forgets old envelope digests, and looks up the hosts of the dead
//! drops it holds (a few at a time, in turn); when they changed (a node joined or left), it
//! copies the envelopes to them, with their original expiry and authorisation, and forgets
//! each once another host has stored it if it is no longer among them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sotto_protocol::deaddrop::Address;
use sotto_protocol::mailbox::{Deposit, Request, Response};
use tokio::sync::watch;

use super::{address_hex, Client, Error, Target};
use crate::clock::unix_ms;

/// The most dead drops whose hosts one maintenance round looks up for handover (each is
/// one Kademlia lookup). A node hosting more takes several rounds to look at them all, in
/// turn, so that handover does not take every lookup the node's pace allows
/// ([`crate::limits::Limits::own_lookups`], docs/robustness.md).
pub const HANDOVER_LOOKUPS_PER_ROUND: usize = 60;
/// How long the digests of received envelopes are kept (twice the longest a host keeps one).
const SEEN_KEEP_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// How often they are pruned.
const SEEN_PRUNE_EVERY_MS: u64 = 60 * 60 * 1000;

/// What handover remembers between rounds, for each address this node holds: the hosts
/// last seen (once every envelope found them) and its place in the queue of addresses to
/// look up (a round-robin: looked up, or first seen, means to the back).
#[derive(Debug, Default)]
pub struct Handover {
    seq: u64,
    hosts: HashMap<Address, Vec<Vec<u8>>>,
    checked: HashMap<Address, u64>,
}

impl Handover {
    /// Of the `addresses` this node holds, those to look up this round: at most
    /// [`HANDOVER_LOOKUPS_PER_ROUND`], from the front of the queue. An address seen for
    /// the first time joins the back, so that new dead drops (a spammer can make many)
    /// never keep the others from their turn. Forgets addresses no longer held.
    pub fn due(&mut self, addresses: Vec<Address>) -> Vec<Address> {
        let held: HashSet<&Address> = addresses.iter().collect();
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

impl Client {
    /// Hand hosted envelopes over to closer peers, and collect expired ones, every
    /// `period`, until `shutdown` turns true.
    pub async fn run_maintenance(self, period: Duration, mut shutdown: watch::Receiver<bool>) {
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
            match self.host.collect_garbage().await {
                Ok(n) if n > 0 => tracing::debug!("dropped {n} expired envelopes"),
                Ok(_) => {}
                Err(e) => tracing::warn!("mailbox garbage collection: {e}"),
            }
            let now = unix_ms();
            if now.saturating_sub(seen_pruned_at) >= SEEN_PRUNE_EVERY_MS {
                seen_pruned_at = now;
                match self
                    .service
                    .store()
                    .prune_seen(now.saturating_sub(SEEN_KEEP_MS))
                {
                    Ok(n) if n > 0 => tracing::debug!("forgot {n} old envelope digests"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("pruning envelope digests: {e}"),
                }
            }
            match self.hand_over(&mut known).await {
                Ok(n) if n > 0 => tracing::debug!("handed {n} envelopes over to closer hosts"),
                Ok(_) => {}
                Err(e) => tracing::warn!("mailbox handover: {e}"),
            }
        }
    }

    /// For the dead drops this node hosts (at most [`HANDOVER_LOOKUPS_PER_ROUND`] a round,
    /// the longest unchecked first), look up their hosts. When they changed since the last
    /// look, copy the envelopes to them; if this node is no longer among them, forget each
    /// envelope once another host has stored it. Returns how many envelopes were handed
    /// over and forgotten.
    pub async fn hand_over(&self, known: &mut Handover) -> Result<usize, Error> {
        let me = self.me();
        let mut moved = 0;
        for address in known.due(self.host.addresses()?) {
            let targets = self.hosts_direct(&address).await;
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
            for h in self.host.hosted_at(&address)? {
                let deposit = Deposit {
                    address,
                    envelope: h.envelope.clone(),
                    expires_at: h.deposit_expires_at,
                    auth: h.auth.clone(),
                };
                let mut placed = false;
                for target in targets.iter().filter(|t| matches!(t, Target::Remote(..))) {
                    if let Target::Remote(peer, _) = target {
                        tracing::debug!(
                            target: "sotto_daemon::requests",
                            "handover of {} to {peer}",
                            address_hex(&address)
                        );
                    }
                    if let Ok(Response::Stored | Response::AlreadyStored) = self
                        .ask_direct(target, Request::Deposit(deposit.clone()))
                        .await
                    {
                        placed = true;
                    }
                }
                all_placed &= placed;
                if placed && !still_host {
                    self.host.forget(&address, &h).await?;
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
