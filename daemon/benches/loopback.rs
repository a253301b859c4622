//! Two real nodes in one process, talking over loopback TCP, beside a bare libp2p
//! request-response exchange of an envelope of the same size.
//!
//! sotto's path per message: `Service::send` (seal, store and flush), the outbox worker, the
//! `/sotto/envelope/1` request over TCP + Noise + yamux, the recipient's `receive` (open,
//! decrypt, store and flush, event), the answer, and the sender's `delivered` (store and
//! flush, event). The baseline is only the request and its one-byte answer, on the same codec
//! and transport stack, with no store and no crypto above the transport.
//!
//! Printed beside criterion's figures: latency percentiles from plain measurement loops
//! (criterion reports means and medians only) and pipelined burst rates, for the baseline,
//! for a fresh pair of nodes, and for a pair whose event logs hold their maximum of events.
//! The baseline runs first, with no sotto node in the process; each sotto criterion
//! benchmark gets a fresh pair of nodes, since every message adds to both event logs and a
//! longer log makes every later message slower.
//!
//! Run with `cargo bench -p sotto-daemon --bench loopback`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde_json::Value;
use sotto_daemon::config::Config;
use sotto_daemon::net::{Codec, Frame};
use sotto_daemon::node::Node;
use sotto_daemon::service::Service;
use sotto_daemon::store::{Batch, MAX_EVENTS};
use sotto_protocol::card::Card;
use sotto_protocol::wire::{Response, ENVELOPE_PROTOCOL};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::broadcast::{self, error::RecvError};

/// A ~100-byte chat line: its envelope is the smallest bucket, 512 bytes.
const TEXT_BYTES: usize = 100;
/// The baseline's request size: the envelope a 100-byte text travels in.
const ENVELOPE_BYTES: usize = 512;
/// Messages in one pipelined burst.
const BURST: usize = 50;
/// Messages in a bot's burst (as issue "a burst to an online contact" measured it).
const BIG_BURST: usize = 2_000;
/// Requests the baseline keeps in flight during a big burst (sotto's outbox keeps at most
/// 32; the libp2p connection allows 64 streams).
const BASELINE_WINDOW: usize = 64;
/// Sequential messages in each percentile loop.
const SAMPLES: usize = 200;
/// Longest wait for any one event before the bench gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn text() -> String {
    "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(TEXT_BYTES)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Two sotto nodes
// ---------------------------------------------------------------------------------------

struct Pair {
    alice: Node,
    bob: Node,
    _dirs: Vec<TempDir>,
}

/// A temporary directory of mode 0700, as the node requires for its data and socket
/// directories (`tempfile::tempdir()` follows the umask, usually giving 0755).
fn private_tempdir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("sotto-bench")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("temporary directory")
}

async fn start_node(name: &str, dirs: &mut Vec<TempDir>) -> Node {
    let data = private_tempdir();
    let sock = private_tempdir();
    let config = Config {
        data_dir: data.path().to_owned(),
        socket: sock.path().join("sottod.sock"),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap: Vec::new(),
        announce: Vec::new(),
        // Cards carry the node's address, so contacts can dial it at once.
        mailbox: sotto_daemon::config::Mailbox {
            publish_address: true,
            ..Default::default()
        },
        harness: Default::default(),
        // The bench measures delivery, not the rate limits a flood would meet.
        limits: sotto_daemon::limits::Limits::generous(),
        keys: Default::default(),
    };
    dirs.push(data);
    dirs.push(sock);
    let node = Node::start(&config).await.expect("node starts");
    node.service()
        .create_account(name)
        .await
        .expect("account created");
    node
}

/// The node's card, once the swarm has reported a listen address for it.
async fn card_with_addrs(service: &Service) -> Result<String, String> {
    for _ in 0..100 {
        let view = service.account().await.map_err(|e| e.to_string())?;
        let card = Card::from_uri(&view.card).map_err(|e| e.to_string())?;
        if !card.body().hints.addrs.is_empty() {
            return Ok(view.card);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the card has no listen address after 5 s".into())
}

/// Wait for the event `kind` about the message `id`.
async fn wait_event(
    rx: &mut broadcast::Receiver<Value>,
    kind: &str,
    id: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if e["kind"] == kind && e["message"]["id"] == id => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(n))) => return Err(format!("events: lagged by {n}")),
            Ok(Err(RecvError::Closed)) => return Err("events: feed closed".into()),
            Err(_) => return Err(format!("no {kind} event for {id} in {EVENT_TIMEOUT:?}")),
        }
    }
}

/// Wait for `n` events of `kind` (the pair exchanges nothing else meanwhile).
async fn count_events(
    rx: &mut broadcast::Receiver<Value>,
    kind: &str,
    n: usize,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if e["kind"] == kind => seen += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("events: {e}")),
            Err(_) => return Err(format!("{} {kind} events missing", n - seen)),
        }
    }
    Ok(())
}

impl Pair {
    async fn start() -> Pair {
        let mut dirs = Vec::new();
        let alice = start_node("Alice", &mut dirs).await;
        let bob = start_node("Bob", &mut dirs).await;
        let alice_card = card_with_addrs(alice.service()).await.expect("card");
        let bob_card = card_with_addrs(bob.service()).await.expect("card");
        alice
            .service()
            .add_contact(&bob_card, Some("bob"))
            .await
            .expect("add bob");
        bob.service()
            .add_contact(&alice_card, Some("alice"))
            .await
            .expect("add alice");
        let pair = Pair {
            alice,
            bob,
            _dirs: dirs,
        };
        // One message each way: the session is confirmed, the connection is up, and every
        // message measured afterwards is a normal Olm message without an attached card.
        pair.one(pair.alice.service(), pair.bob.service(), "bob", "hello")
            .await;
        pair.one(pair.bob.service(), pair.alice.service(), "alice", "hi")
            .await;
        pair
    }

    async fn one(&self, from: &Service, to: &Service, to_name: &str, text: &str) {
        let mut rx = to.events().subscribe();
        let sent = from.send(to_name, text).await.expect("send");
        wait_event(&mut rx, "message.received", &sent.id)
            .await
            .expect("received");
    }

    fn alice(&self) -> &Service {
        self.alice.service()
    }

    fn bob(&self) -> &Service {
        self.bob.service()
    }

    /// One message from Alice to Bob; returns (send returned, Bob's `message.received`,
    /// Alice's `message.delivered`), each measured from the call to `send`.
    async fn timed_message(&self, text: &str) -> [Duration; 3] {
        let mut received = self.bob().events().subscribe();
        let mut delivered = self.alice().events().subscribe();
        let start = Instant::now();
        let sent = self.alice().send("bob", text).await.expect("send");
        let returned = start.elapsed();
        wait_event(&mut received, "message.received", &sent.id)
            .await
            .expect("received");
        let got = start.elapsed();
        wait_event(&mut delivered, "message.delivered", &sent.id)
            .await
            .expect("delivered");
        [returned, got, start.elapsed()]
    }

    /// `n` messages sent back to back; returns (all `send` calls returned, all received,
    /// all delivered), from the first call. The events are counted while the sends go on
    /// (a burst larger than the event feed's buffer would otherwise overflow it).
    async fn burst(&self, n: usize, text: &str) -> [Duration; 3] {
        let mut received = self.bob().events().subscribe();
        let mut delivered = self.alice().events().subscribe();
        let start = Instant::now();
        let sending = async {
            for _ in 0..n {
                self.alice().send("bob", text).await.expect("send");
            }
            start.elapsed()
        };
        let receiving = async {
            count_events(&mut received, "message.received", n)
                .await
                .expect("received");
            start.elapsed()
        };
        let delivering = async {
            count_events(&mut delivered, "message.delivered", n)
                .await
                .expect("delivered");
            start.elapsed()
        };
        let (returned, got, done) = tokio::join!(sending, receiving, delivering);
        [returned, got, done]
    }

    async fn shutdown(self) {
        self.alice.shutdown().await;
        self.bob.shutdown().await;
    }
}

/// Fill a node's event log to its limit, as months of use would.
async fn fill_event_log(service: &Service) {
    let store = service.store();
    let mut missing = MAX_EVENTS.saturating_sub(store.event_count());
    while missing > 0 {
        let n = missing.min(1_000);
        let mut batch = Batch::new();
        for _ in 0..n {
            service
                .events()
                .stage(&mut batch, "filler", "note", &"old event")
                .expect("stage");
        }
        store.commit(batch).await.expect("commit");
        missing -= n;
    }
}

// ---------------------------------------------------------------------------------------
// The baseline: bare request-response on the same codec and transport stack
// ---------------------------------------------------------------------------------------

type Bare = request_response::Behaviour<Codec>;

fn bare_swarm() -> Swarm<Bare> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                Codec::default(),
                [(
                    StreamProtocol::new(ENVELOPE_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_max_concurrent_streams(64),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// A server that answers every envelope `Accepted`, as a sotto node does.
async fn serve(mut swarm: Swarm<Bare>) {
    loop {
        if let SwarmEvent::Behaviour(request_response::Event::Message {
            message: request_response::Message::Request { channel, .. },
            ..
        }) = swarm.select_next_some().await
        {
            let _ = swarm
                .behaviour_mut()
                .send_response(channel, Response::Accepted);
        }
    }
}

struct Client {
    swarm: Swarm<Bare>,
    server: PeerId,
    addr: Multiaddr,
    envelope: Vec<u8>,
}

impl Client {
    async fn start(rt_handle: &tokio::runtime::Handle) -> Client {
        let mut server = bare_swarm();
        server
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let peer = *server.local_peer_id();
        rt_handle.spawn(serve(server));
        let mut client = Client {
            swarm: bare_swarm(),
            server: peer,
            addr,
            envelope: vec![0xa5; ENVELOPE_BYTES],
        };
        client.exchange(1).await.expect("baseline connects");
        client
    }

    /// `n` requests, `window` of them in flight at a time; returns when all are answered.
    async fn pipelined(&mut self, n: usize, window: usize) -> Result<(), String> {
        let (mut sent, mut answered) = (0, 0);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while answered < n {
            while sent < n && sent - answered < window {
                self.swarm.behaviour_mut().send_request_with_addresses(
                    &self.server,
                    Frame::Bytes(self.envelope.clone()),
                    vec![self.addr.clone()],
                );
                sent += 1;
            }
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| "baseline: no answer in time".to_owned())?;
            match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => answered += 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => return Err(format!("baseline: request failed: {error}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// `n` requests in flight at once; returns when all are answered.
    async fn exchange(&mut self, n: usize) -> Result<(), String> {
        for _ in 0..n {
            self.swarm.behaviour_mut().send_request_with_addresses(
                &self.server,
                Frame::Bytes(self.envelope.clone()),
                vec![self.addr.clone()],
            );
        }
        let mut left = n;
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while left > 0 {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| "baseline: no answer in time".to_owned())?;
            match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => match response {
                    Response::Accepted => left -= 1,
                    other => return Err(format!("baseline: answered {other:?}")),
                },
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => return Err(format!("baseline: request failed: {error}")),
                _ => {}
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what:<58} n={:<5} p50 {:>10}  p90 {:>10}  p99 {:>10}  max {:>10}  mean {:>10}  ({:.0}/s sequential)",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        ms(mean),
        1.0 / mean.as_secs_f64(),
    );
}

fn rate(what: &str, n: usize, d: Duration) {
    println!(
        "{what:<58} {n} in {:>10}  = {:.0} messages/s",
        ms(d),
        n as f64 / d.as_secs_f64()
    );
}

async fn sotto_percentiles(pair: &Pair, label: &str) {
    let text = text();
    let mut runs = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        runs.push(pair.timed_message(&text).await);
    }
    let col = |i: usize| runs.iter().map(|r| r[i]).collect::<Vec<_>>();
    report(&format!("sotto {label}: send() returned"), col(0));
    report(
        &format!("sotto {label}: send() called -> message.received"),
        col(1),
    );
    report(
        &format!("sotto {label}: send() called -> message.delivered"),
        col(2),
    );
}

async fn sotto_bursts(pair: &Pair, label: &str) {
    let text = text();
    for _ in 0..3 {
        let [returned, got, delivered] = pair.burst(BURST, &text).await;
        rate(
            &format!("sotto {label}: burst, all send() returned"),
            BURST,
            returned,
        );
        rate(
            &format!("sotto {label}: burst, all message.received"),
            BURST,
            got,
        );
        rate(
            &format!("sotto {label}: burst, all message.delivered"),
            BURST,
            delivered,
        );
    }
}

async fn baseline_figures(client: &mut Client) {
    let mut samples = Vec::with_capacity(SAMPLES * 10);
    for _ in 0..SAMPLES * 10 {
        let start = Instant::now();
        client.exchange(1).await.expect("baseline");
        samples.push(start.elapsed());
    }
    report("libp2p baseline: 512 B request -> answer", samples);
    for _ in 0..3 {
        let start = Instant::now();
        client.exchange(BURST).await.expect("baseline");
        rate(
            "libp2p baseline: burst of concurrent requests",
            BURST,
            start.elapsed(),
        );
    }
    for _ in 0..3 {
        let start = Instant::now();
        client
            .pipelined(BIG_BURST, BASELINE_WINDOW)
            .await
            .expect("baseline");
        rate(
            &format!("libp2p baseline: {BIG_BURST} requests, {BASELINE_WINDOW} in flight"),
            BIG_BURST,
            start.elapsed(),
        );
    }
}

/// A bot's burst: [`BIG_BURST`] sends back to back, until all are received and delivered.
async fn sotto_big_burst(pair: &Pair, label: &str) {
    let text = text();
    for _ in 0..3 {
        let [returned, got, delivered] = pair.burst(BIG_BURST, &text).await;
        rate(
            &format!("sotto {label}: {BIG_BURST} burst, all send() returned"),
            BIG_BURST,
            returned,
        );
        rate(
            &format!("sotto {label}: {BIG_BURST} burst, all received"),
            BIG_BURST,
            got,
        );
        rate(
            &format!("sotto {label}: {BIG_BURST} burst, all delivered"),
            BIG_BURST,
            delivered,
        );
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------

fn events_line(pair: &Pair) -> String {
    format!(
        "event log: alice {} events, bob {} events",
        pair.alice().store().event_count(),
        pair.bob().store().event_count()
    )
}

/// One criterion benchmark on a fresh pair of nodes, so that each starts with an almost
/// empty event log (every message adds one event on each side; see the full-log figures).
fn bench_sotto(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    run: impl for<'a> Fn(&'a Pair, u64) -> BoxFuture<'a, Duration>,
) {
    let pair = rt.block_on(Pair::start());
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(run(&pair, iters)))
    });
    println!("after sotto/{name}: {}", events_line(&pair));
    rt.block_on(pair.shutdown());
}

fn loopback(c: &mut Criterion) {
    // `SOTTO_BENCH_LOG=sotto_daemon=debug` shows what the nodes do (on stderr).
    if let Ok(filter) = std::env::var("SOTTO_BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // The baseline first, while no sotto node runs in the process.
    let mut client = rt.block_on(Client::start(rt.handle()));
    println!("\n--- libp2p baseline: plain measurement loops (not criterion) ---");
    rt.block_on(baseline_figures(&mut client));
    let mut group = c.benchmark_group("libp2p_baseline");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_response/512B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.exchange(1).await.expect("baseline");
                }
                start.elapsed()
            })
        })
    });
    group.throughput(Throughput::Elements(BURST as u64));
    group.bench_function(format!("burst{BURST}/512B"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.exchange(BURST).await.expect("baseline");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    drop(client);

    println!("\n--- sotto, fresh nodes: plain measurement loops (not criterion) ---");
    rt.block_on(async {
        let pair = Pair::start().await;
        sotto_percentiles(&pair, "fresh").await;
        sotto_bursts(&pair, "fresh").await;
        println!("{}", events_line(&pair));
        pair.shutdown().await;
        // A fresh pair again: the big bursts fill the event logs.
        let pair = Pair::start().await;
        sotto_big_burst(&pair, "fresh").await;
        println!("{}", events_line(&pair));
        pair.shutdown().await;
    });

    let mut group = c.benchmark_group("sotto");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    bench_sotto(&mut group, &rt, "send_to_received/100B", |pair, iters| {
        Box::pin(async move {
            let text = text();
            let mut rx = pair.bob().events().subscribe();
            let start = Instant::now();
            for _ in 0..iters {
                let sent = pair.alice().send("bob", &text).await.expect("send");
                wait_event(&mut rx, "message.received", &sent.id)
                    .await
                    .expect("received");
            }
            start.elapsed()
        })
    });
    bench_sotto(&mut group, &rt, "send_to_delivered/100B", |pair, iters| {
        Box::pin(async move {
            let text = text();
            let mut rx = pair.alice().events().subscribe();
            let start = Instant::now();
            for _ in 0..iters {
                let sent = pair.alice().send("bob", &text).await.expect("send");
                wait_event(&mut rx, "message.delivered", &sent.id)
                    .await
                    .expect("delivered");
            }
            start.elapsed()
        })
    });
    group.throughput(Throughput::Elements(BURST as u64));
    bench_sotto(
        &mut group,
        &rt,
        &format!("burst{BURST}_to_received/100B"),
        |pair, iters| {
            Box::pin(async move {
                let text = text();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += pair.burst(BURST, &text).await[1];
                }
                total
            })
        },
    );
    group.finish();

    println!("\n--- sotto, event log filled to {MAX_EVENTS} events: plain measurement loops ---");
    rt.block_on(async {
        let pair = Pair::start().await;
        fill_event_log(pair.alice()).await;
        fill_event_log(pair.bob()).await;
        println!("{}", events_line(&pair));
        sotto_percentiles(&pair, "full event log").await;
        sotto_bursts(&pair, "full event log").await;
        pair.shutdown().await;
    });
    println!("--- end ---\n");
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = loopback
}
criterion_main!(benches);
