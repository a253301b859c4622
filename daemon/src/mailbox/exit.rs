//! The mailbox work this node does as the exit of someone's private path: it looks up a
//! dead drop's hosts, or hands a mailbox request to a host (itself included), from its own
//! PeerId, and passes the answer back. The requests carry their own authorisation (proofs
//! and stamps), so the exit adds nothing and checks nothing a host would not.

use std::net::IpAddr;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use sotto_protocol::exit::{
    ExitAnswer, ExitRefusal, ExitRequest, HostAddrs, MAX_ADDRS, MAX_ADDR_BYTES,
};

use super::{Client, Target};
use crate::paths::relay::ExitWork;

fn addr_bytes(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .map(|a| a.to_vec())
        .filter(|a| a.len() <= MAX_ADDR_BYTES)
        .take(MAX_ADDRS)
        .collect()
}

impl Client {
    /// Do `request` as an exit, for the hop before (`from`, at `source`): a deposit this
    /// node hosts itself counts against that hop's quota, the only depositor it can see.
    pub async fn exit_work(
        &self,
        from: PeerId,
        source: Option<IpAddr>,
        request: ExitRequest,
    ) -> Result<ExitAnswer, ExitRefusal> {
        let started = std::time::Instant::now();
        let kind = match &request {
            ExitRequest::Hosts { .. } => "a hosts lookup",
            ExitRequest::Mailbox { .. } => "a mailbox request",
        };
        let answer = self.exit_work_inner(from, source, request).await;
        if started.elapsed().as_secs() >= 5 {
            tracing::debug!("as an exit, {kind} took {:?}", started.elapsed());
        }
        answer
    }

    async fn exit_work_inner(
        &self,
        from: PeerId,
        source: Option<IpAddr>,
        request: ExitRequest,
    ) -> Result<ExitAnswer, ExitRefusal> {
        match request {
            ExitRequest::Hosts { address } => {
                let me = self.me();
                let mine = match self.service.network().status().await {
                    Ok(status) => addr_bytes(&status.listen_addrs),
                    Err(_) => Vec::new(),
                };
                let hosts = self
                    .hosts_direct(&address)
                    .await
                    .into_iter()
                    .map(|t| match t {
                        Target::Local => HostAddrs {
                            peer: me.to_bytes(),
                            addrs: mine.clone(),
                        },
                        Target::Remote(peer, addrs) => HostAddrs {
                            peer: peer.to_bytes(),
                            addrs: addr_bytes(&addrs),
                        },
                    })
                    .collect();
                Ok(ExitAnswer::Hosts(hosts))
            }
            ExitRequest::Mailbox {
                host,
                addrs,
                request,
            } => {
                let host = PeerId::from_bytes(&host).map_err(|_| ExitRefusal::Malformed)?;
                if host == self.me() {
                    return Ok(ExitAnswer::Mailbox(
                        self.host.handle(&from, source, request).await,
                    ));
                }
                let addrs = addrs
                    .into_iter()
                    .take(MAX_ADDRS)
                    .filter_map(|a| Multiaddr::try_from(a).ok())
                    .collect();
                match self.service.network().mailbox(host, addrs, &request).await {
                    Ok(response) => Ok(ExitAnswer::Mailbox(response)),
                    Err(e) => {
                        tracing::debug!("as an exit, cannot reach the host {host}: {e}");
                        Err(ExitRefusal::Unreachable)
                    }
                }
            }
        }
    }

    /// [`Client::exit_work`] as a relay takes it.
    pub fn as_exit(&self) -> ExitWork {
        let client = self.clone();
        Arc::new(move |from, source, request| {
            let client = client.clone();
            Box::pin(async move { client.exit_work(from, source, request).await })
        })
    }
}
