//! The `groups` scenario's part of a run: one group made by the first honest node after the
//! bootstrap nodes with the next `members - 1` nodes, then messages from `senders` of them,
//! and what arrived where (docs/simulations.md, "Groups").

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use sotto_daemon::clock::unix_ms as now_ms;
use sotto_daemon::service::Service;

use crate::engine::{node_name, World};
use crate::record::GroupFigures;

/// The group's name at every member.
const GROUP: &str = "sim-group";
/// Members added by one change (the protocol's bound).
const ADD_CHUNK: usize = sotto_protocol::group::MAX_ADDED;

/// Who is in the group and how its setup went.
pub struct Setup {
    /// Node indices; the first made the group.
    pub members: Vec<usize>,
    pub joined: usize,
    pub join_ms: u64,
}

impl World<'_> {
    fn group_service(
        &self,
        i: usize,
    ) -> impl std::future::Future<Output = anyhow::Result<Service>> + '_ {
        async move { self.peers[i].lock().await.service() }
    }

    /// Make the group: the creator and each member add each other's cards, the creator
    /// makes the group with the first members and adds the rest in changes of at most 128,
    /// and every member's invitation (from a contact who is admin) joins it at once. Waits
    /// until every member joined, at most `join_timeout_s`.
    pub(crate) async fn group_setup(&mut self, cards: &[String]) -> anyhow::Result<Setup> {
        let g = &self.scenario.groups;
        let first = self.scenario.network.bootstrap_nodes;
        let members: Vec<usize> = (first..first + g.members).collect();
        let creator = members[0];
        let creator_service = self.group_service(creator).await?;
        for &m in &members[1..] {
            creator_service
                .add_contact(&cards[m], Some(&node_name(m)))
                .await
                .with_context(|| format!("the creator cannot add {}", node_name(m)))?;
            self.group_service(m)
                .await?
                .add_contact(&cards[creator], Some(&node_name(creator)))
                .await
                .with_context(|| format!("{} cannot add the creator", node_name(m)))?;
        }
        let started = now_ms();
        let names: Vec<String> = members[1..].iter().map(|&m| node_name(m)).collect();
        let (head, rest) = names.split_at(names.len().min(ADD_CHUNK - 1));
        creator_service
            .group_create(GROUP, head)
            .await
            .map_err(|e| anyhow!("the creator cannot make the group: {e}"))?;
        for chunk in rest.chunks(ADD_CHUNK) {
            creator_service
                .group_add(GROUP, chunk)
                .await
                .map_err(|e| anyhow!("the creator cannot add members: {e}"))?;
        }
        let deadline = started + (g.join_timeout_s * 1000.0) as u64;
        let mut joined;
        loop {
            joined = 1;
            for &m in &members[1..] {
                let service = self.group_service(m).await?;
                let list = service.group_list().await.unwrap_or_default();
                if list.iter().any(|v| {
                    v.name == GROUP && v.status == "joined" && v.member_count == members.len()
                }) {
                    joined += 1;
                }
            }
            self.progress.tick();
            if joined == members.len() || now_ms() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if joined < members.len() {
            // Where the others are: by status and the members they know of.
            let mut states: std::collections::BTreeMap<(String, usize), usize> =
                std::collections::BTreeMap::new();
            for &m in &members[1..] {
                let service = self.group_service(m).await?;
                let list = service.group_list().await.unwrap_or_default();
                let state = list
                    .iter()
                    .find(|v| v.name == GROUP)
                    .map(|v| (v.status.to_owned(), v.member_count))
                    .unwrap_or_else(|| ("none".to_owned(), 0));
                *states.entry(state).or_default() += 1;
            }
            let states: Vec<String> = states
                .into_iter()
                .map(|((status, count), n)| format!("{n} {status} knowing {count} members"))
                .collect();
            tracing::warn!(
                "{} of {} members joined in time; the others: {}",
                joined,
                members.len(),
                states.join(", ")
            );
        }
        Ok(Setup {
            members,
            joined,
            join_ms: now_ms() - started,
        })
    }

    /// Send the group's messages, wait (at most the drain) until every member has every
    /// one, and measure.
    pub(crate) async fn group_traffic(&mut self, setup: &Setup) -> anyhow::Result<GroupFigures> {
        let g = &self.scenario.groups;
        let senders: Vec<usize> = setup.members.iter().take(g.senders).copied().collect();
        let bytes_of = |totals: &[u64]| totals.iter().sum::<u64>();
        let mut before = Vec::new();
        for &m in &setup.members {
            before.push(self.peers[m].lock().await.traffic().bytes_out());
        }
        let hosted_before = self.hosted_bytes().await;
        let window_start = now_ms();
        let mut sent: Vec<(String, usize)> = Vec::new();
        for round in 0..g.messages_per_sender {
            for &s in &senders {
                let service = self.group_service(s).await?;
                let text = format!("{} says {round}", node_name(s));
                match service.send(GROUP, &text).await {
                    Ok(view) => sent.push((view.id, s)),
                    Err(e) => tracing::warn!("{} cannot send to the group: {e}", node_name(s)),
                }
                tokio::time::sleep(Duration::from_secs_f64(g.send_interval_s)).await;
            }
        }
        // Until every sender's group outbox is empty, then the bytes.
        let deadline = now_ms() + (self.scenario.drain_s * 1000.0) as u64;
        let outboxes_empty_ms = loop {
            let mut waiting = 0;
            for &s in &senders {
                waiting += self.group_service(s).await?.store().group_outbox_len();
            }
            if waiting == 0 {
                break Some(now_ms() - window_start);
            }
            if now_ms() >= deadline {
                tracing::warn!("{waiting} group envelopes not on their hosts by the end");
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut after = Vec::new();
        for &m in &setup.members {
            after.push(self.peers[m].lock().await.traffic().bytes_out());
        }
        let hosted_after = self.hosted_bytes().await;
        let mut ids = Vec::new();
        for &m in &setup.members {
            ids.push(
                self.peers[m]
                    .lock()
                    .await
                    .peer_id()
                    .map(|p| p.to_bytes())
                    .unwrap_or_default(),
            );
        }
        let cells = self.recorder.own_cells(&ids, window_start, now_ms());
        let sender_cells: u64 = cells[..senders.len()].iter().sum();
        let other_cells = &cells[senders.len()..];
        let other_cells_mean = if other_cells.is_empty() {
            0.0
        } else {
            other_cells.iter().sum::<u64>() as f64 / other_cells.len() as f64
        };
        let delta: Vec<u64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let sender_bytes = bytes_of(&delta[..senders.len()]);
        let others = &delta[senders.len()..];
        let other_mean = if others.is_empty() {
            0
        } else {
            bytes_of(others) / others.len() as u64
        };
        // Every member must get every message of the others: wait, at most the drain.
        let expected = sent.len() * (setup.members.len() - 1);
        let mut latencies = Vec::new();
        let mut dropped;
        loop {
            latencies.clear();
            dropped = 0;
            for &m in &setup.members {
                let service = self.group_service(m).await?;
                let list = service.messages(Some(GROUP), None).unwrap_or_default();
                for (id, s) in &sent {
                    if *s == m {
                        continue;
                    }
                    if let Some(v) = list.iter().find(|v| &v.id == id) {
                        latencies.push(v.received_at.unwrap_or(0).saturating_sub(v.sent_at));
                    }
                }
                if let Ok(info) = service.group_info(GROUP).await {
                    dropped += info.dropped;
                }
            }
            self.progress.tick();
            if latencies.len() >= expected || now_ms() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
        let (mut members_waiting_for_keys, mut messages_waiting_for_keys) = (0, 0);
        for &m in &setup.members {
            let service = self.group_service(m).await?;
            let waiting: usize = service
                .store()
                .groups()
                .map(|gs| gs.iter().map(|g| g.pending.len()).sum())
                .unwrap_or(0);
            members_waiting_for_keys += usize::from(waiting > 0);
            messages_waiting_for_keys += waiting;
        }
        let messages = sent.len().max(1) as u64;
        Ok(GroupFigures {
            outboxes_empty_ms,
            members_waiting_for_keys,
            messages_waiting_for_keys,
            members: setup.members.len(),
            joined: setup.joined,
            join_ms: setup.join_ms,
            messages: sent.len(),
            expected,
            delivered: latencies.len(),
            latencies_ms: latencies,
            sender_bytes_per_message: sender_bytes / messages,
            non_sender_bytes_per_message_time: other_mean * senders.len() as u64 / messages,
            sender_cells_per_message: (sender_cells as f64
                - other_cells_mean * senders.len() as f64)
                / messages as f64,
            hosted_bytes_per_message: hosted_after.saturating_sub(hosted_before) / messages,
            dropped,
        })
    }

    /// Hosted bytes over every running node.
    async fn hosted_bytes(&self) -> u64 {
        let mut total = 0;
        for peer in &self.peers {
            let p = peer.lock().await;
            if let Ok(host) = p.host() {
                total += host.stats().map(|s| s.bytes).unwrap_or(0);
            }
        }
        total
    }
}
