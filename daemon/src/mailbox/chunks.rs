//! Chunks of attachments at mailbox hosts, for a contact who cannot fetch them from the
//! sender's node: the sender deposits each sealed chunk, padded to an envelope bucket, at
//! the dead drop of its part of the blob ([`blob::drop_secret`]), with a proof of that
//! drop's key; a receiver reads the drop back with the same key. Only holders of the blob's
//! reference can deposit there, find the drop or read it; a host sees 65,535-byte
//! envelopes at an address, like any other. Through private paths when they are on, as
//! all of this node's mailbox work.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use sotto_protocol::blob::{self, BlobRef};
use sotto_protocol::envelope;
use sotto_protocol::mailbox::{Deposit, DepositAuth, Fetch, Request, Response};

use super::Client;
use crate::clock::unix_ms;
use crate::service::attachments::ChunkHosts;

/// Pages read from one host for one drop, at most (a page holds at least one chunk).
const MAX_PAGES: usize = 2 * blob::CHUNKS_PER_DROP as usize;

impl Client {
    async fn deposit_chunk_at_hosts(
        &self,
        blob_ref: &BlobRef,
        position: u32,
        sealed: Vec<u8>,
    ) -> Result<(), String> {
        let key = blob::drop_secret(&blob_ref.key, position / blob::CHUNKS_PER_DROP).drop_key(0);
        let address = key.address();
        let envelope = blob::pad_for_host(&sealed);
        let expires_at = unix_ms().saturating_add(self.service.mailbox_config().policy.ttl_ms);
        let digest = envelope::digest(&envelope);
        let deposit = Deposit {
            address,
            envelope,
            expires_at,
            auth: DepositAuth::Proof(key.sign(&Deposit::signed_bytes(&digest, expires_at))),
        };
        let targets = self
            .hosts_cached(&self.group_hosts, &address, |t| !t.is_empty())
            .await;
        if targets.is_empty() {
            return Err("no mailbox hosts found".into());
        }
        let answers = futures::future::join_all(
            targets
                .iter()
                .map(|t| self.ask(t, Request::Deposit(deposit.clone()))),
        )
        .await;
        let mut why = String::from("no host answered");
        let mut stored = 0;
        for answer in answers {
            match answer {
                Ok(Response::Stored | Response::AlreadyStored) => stored += 1,
                Ok(other) => why = format!("a host refused: {other:?}"),
                Err(e) => why = e.to_string(),
            }
        }
        if stored == 0 {
            self.group_hosts.forget(&address);
            return Err(why);
        }
        Ok(())
    }

    async fn fetch_drop_from_hosts(
        &self,
        blob_ref: &BlobRef,
        index: u32,
        want: usize,
    ) -> Result<Vec<Vec<u8>>, String> {
        let key = blob::drop_secret(&blob_ref.key, index).drop_key(0);
        let address = key.address();
        let targets = self
            .hosts_cached(&self.group_hosts, &address, |t| !t.is_empty())
            .await;
        if targets.is_empty() {
            return Err("no mailbox hosts found".into());
        }
        let me = self.me();
        let mut found: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        let mut why = String::from("the hosts hold none of its chunks");
        // One host after another, until the drop's chunks are all in.
        for target in &targets {
            let host_id = target.id_bytes(&me);
            let mut after = None;
            for _ in 0..MAX_PAGES {
                let timestamp = unix_ms();
                let fetch = Fetch {
                    address,
                    timestamp,
                    after,
                    proof: key.sign(&Fetch::signed_bytes(timestamp, &host_id)),
                };
                match self.ask(target, Request::Fetch(fetch)).await {
                    Ok(Response::Envelopes { envelopes, more }) => {
                        after = envelopes.last().map(|f| envelope::digest(&f.envelope));
                        for f in &envelopes {
                            // Only what a holder of the drop's key deposited; a host's own
                            // inventions are left unopened.
                            if !f.proof_holds(&address) {
                                continue;
                            }
                            if let Some(sealed) = blob::unpad_from_host(&f.envelope) {
                                found.insert(blob::address(sealed), sealed.to_vec());
                            }
                        }
                        if !more || envelopes.is_empty() {
                            break;
                        }
                    }
                    Ok(other) => {
                        why = format!("a host refused: {other:?}");
                        break;
                    }
                    Err(e) => {
                        why = e.to_string();
                        break;
                    }
                }
            }
            if found.len() >= want {
                break;
            }
        }
        if found.is_empty() {
            return Err(why);
        }
        Ok(found.into_values().collect())
    }
}

impl ChunkHosts for Client {
    fn deposit_chunk<'a>(
        &'a self,
        blob_ref: &'a BlobRef,
        position: u32,
        sealed: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.deposit_chunk_at_hosts(blob_ref, position, sealed)
            .boxed()
    }

    fn fetch_drop<'a>(
        &'a self,
        blob_ref: &'a BlobRef,
        index: u32,
        want: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, String>> {
        self.fetch_drop_from_hosts(blob_ref, index, want).boxed()
    }
}
