//! `sotto-sim demo`: three real nodes on this machine — alice, bob and carol — create their
//! accounts, exchange contact cards, compare a safety number, talk in every direction, and
//! show that bob's history and sessions survive a restart, during which alice's message to
//! him waits in her outbox.
//!
//! Each node is the daemon library with its real swarm and store, in a temporary directory,
//! on its own loopback port; nothing is faked. Every step waits for its outcome with a
//! bounded timeout and fails with a message that says which step did not happen.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use serde::Serialize;
use sotto_daemon::clock::unix_ms as now_ms;
use sotto_daemon::service::{MessageView, Service};
use sotto_daemon::store::MAX_EVENTS;

use crate::node::{free_ports, SimNode};

/// How long one message may take to reach its recipient's store and be acknowledged.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the demo leaves a message for an offline node in the outbox before restarting it.
pub const OFFLINE_PAUSE: Duration = Duration::from_secs(1);

/// Where a continued line of the story starts (under the state column).
const INDENT: &str = "                     ";

const NAMES: [&str; 3] = ["alice", "bob", "carol"];
const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

/// What the demo prints while it runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Tell the story on stdout, step by step, then print the conversations and a summary.
    pub narrate: bool,
}

/// One message of the demo and how it travelled.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    /// When it was sent, in milliseconds after the demo started.
    pub sent_at_ms: u64,
    /// From sending to being stored by the recipient's node.
    pub latency_ms: u64,
    /// Sent while the recipient's node was stopped.
    pub while_offline: bool,
}

/// What the demo showed.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub restarts: usize,
    /// Contacts added, over all nodes.
    pub contacts: usize,
    pub safety_numbers_match: bool,
    pub messages_sent: usize,
    /// Messages whose sender's node holds the recipient's acknowledgement.
    pub messages_delivered: usize,
    /// Messages found in their recipient's history.
    pub messages_received: usize,
    /// Messages listed or announced (`message.received`) more than once by a recipient.
    pub duplicates: usize,
    /// The restarted node's messages just before it stopped.
    pub history_before_restart: usize,
    /// How many of those it still had, unchanged, after it started again.
    pub history_kept_after_restart: usize,
    /// The restarted node's contacts after it started again.
    pub contacts_after_restart: usize,
    /// Messages sent after the restart, both ways, decrypted with the stored sessions.
    pub sessions_survived: bool,
    pub elapsed_ms: u64,
    pub messages: Vec<Delivery>,
}

/// Prints the story when asked to.
struct Say(bool);

impl Say {
    fn line(&self, text: impl Display) {
        if self.0 {
            println!("{text}");
        }
    }

    fn step(&self, n: usize, title: &str) {
        self.line(format!("\n[{n}/6] {title}"));
    }
}

/// What the story found out, for the summary.
#[derive(Default)]
struct Findings {
    contacts: usize,
    safety_numbers_match: bool,
    history_before_restart: usize,
    history_kept_after_restart: usize,
    contacts_after_restart: usize,
    sessions_survived: bool,
    deliveries: Vec<Delivery>,
    duplicates: usize,
    delivered: usize,
    received: usize,
}

/// Run the demo: start the nodes, tell the story, stop the nodes and remove their
/// directories (also when a step fails or the user presses Ctrl-C).
pub async fn run(options: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let say = Say(options.narrate);
    say.line(
        "sotto demo: three real sotto nodes (alice, bob, carol) on this machine, each with its \
         own\nstore and libp2p swarm, talking over TCP on 127.0.0.1. Nothing is simulated.",
    );
    let mut nodes = Vec::with_capacity(NAMES.len());
    for (name, port) in NAMES.iter().zip(free_ports(NAMES.len())?) {
        nodes.push(SimNode::new(name, port)?);
    }
    let mut story = Story {
        nodes: &mut nodes,
        say: &say,
        started_ms: now_ms(),
        findings: Findings::default(),
    };
    let told = tokio::select! {
        result = story.tell() => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let outcome = told.map(|()| story.findings);
    let mut cleanup = Vec::new();
    for node in nodes {
        let name = node.name().to_owned();
        if let Err(e) = node.close().await {
            cleanup.push(format!("{name}: {e:#}"));
        }
    }
    let findings = outcome?;
    if !cleanup.is_empty() {
        bail!("cleaning up failed: {}", cleanup.join("; "));
    }
    let summary = Summary {
        nodes: NAMES.len(),
        restarts: 1,
        contacts: findings.contacts,
        safety_numbers_match: findings.safety_numbers_match,
        messages_sent: findings.deliveries.len(),
        messages_delivered: findings.delivered,
        messages_received: findings.received,
        duplicates: findings.duplicates,
        history_before_restart: findings.history_before_restart,
        history_kept_after_restart: findings.history_kept_after_restart,
        contacts_after_restart: findings.contacts_after_restart,
        sessions_survived: findings.sessions_survived,
        elapsed_ms: started.elapsed().as_millis() as u64,
        messages: findings.deliveries,
    };
    print_summary(&say, &summary);
    Ok(summary)
}

struct Story<'a> {
    nodes: &'a mut [SimNode],
    say: &'a Say,
    started_ms: u64,
    findings: Findings,
}

impl Story<'_> {
    fn service(&self, who: usize) -> anyhow::Result<&Service> {
        self.nodes[who].service()
    }

    async fn tell(&mut self) -> anyhow::Result<()> {
        self.start_nodes().await?;
        self.create_accounts().await?;
        self.exchange_cards().await?;
        self.compare_safety_numbers().await?;
        self.talk().await?;
        self.restart_bob().await?;
        self.check_totals()?;
        self.print_conversations()?;
        Ok(())
    }

    async fn start_nodes(&mut self) -> anyhow::Result<()> {
        self.say.step(1, "Starting three nodes");
        for node in self.nodes.iter_mut() {
            node.start().await?;
            let peer = node
                .peer_id()
                .map(|p| short(&p.to_string(), 8))
                .unwrap_or_default();
            self.say.line(format!(
                "      {:<5}  listening on {:<26}  peer {peer}",
                node.name(),
                node.listen_addr().to_string(),
            ));
        }
        Ok(())
    }

    async fn create_accounts(&mut self) -> anyhow::Result<()> {
        self.say
            .step(2, "Creating accounts (an Ed25519 identity each)");
        for (who, name) in NAMES.iter().enumerate() {
            let account = self.service(who)?.create_account(name).await?;
            self.say.line(format!(
                "      {name:<5}  fingerprint {}",
                account.fingerprint
            ));
        }
        Ok(())
    }

    async fn exchange_cards(&mut self) -> anyhow::Result<()> {
        self.say
            .step(3, "Exchanging contact cards (each adds the other two)");
        let mut cards = Vec::new();
        for who in 0..NAMES.len() {
            cards.push(self.service(who)?.account().await?.card);
        }
        self.say.line(format!(
            "      a card is a signed URI to paste or scan; alice's: {} ({} characters)",
            short(&cards[ALICE], 12),
            cards[ALICE].len()
        ));
        for (who, name) in NAMES.iter().enumerate() {
            let mut added = Vec::new();
            for (other, card) in cards.iter().enumerate() {
                if other == who {
                    continue;
                }
                let contact = self
                    .service(who)?
                    .add_contact(card, Some(NAMES[other]))
                    .await
                    .with_context(|| format!("{name} cannot add {}'s card", NAMES[other]))?;
                added.push(contact.name);
                self.findings.contacts += 1;
            }
            self.say
                .line(format!("      {name:<5}  added {}", added.join(" and ")));
        }
        Ok(())
    }

    async fn compare_safety_numbers(&mut self) -> anyhow::Result<()> {
        self.say.step(
            4,
            "Comparing safety numbers (what two people check to rule out a man in the middle)",
        );
        let seen_by_alice = self.service(ALICE)?.verify("bob").await?.safety_number;
        let seen_by_bob = self.service(BOB)?.verify("alice").await?.safety_number;
        self.say
            .line(format!("      alice's number for bob:  {seen_by_alice}"));
        self.say
            .line(format!("      bob's number for alice:  {seen_by_bob}"));
        ensure!(
            seen_by_alice == seen_by_bob,
            "alice and bob see different safety numbers: {seen_by_alice} and {seen_by_bob}"
        );
        self.say.line("      ✓ identical");
        self.findings.safety_numbers_match = true;
        Ok(())
    }

    async fn talk(&mut self) -> anyhow::Result<()> {
        self.say.step(
            5,
            "Sending messages (end-to-end encrypted, node to node, each waits for its acknowledgement)",
        );
        let script = [
            (
                ALICE,
                BOB,
                "Hi Bob! This went straight from my node to yours.",
            ),
            (BOB, ALICE, "Hi Alice, got it. And no server saw it?"),
            (
                ALICE,
                BOB,
                "None: there is no server. Only our nodes can read this.",
            ),
            (CAROL, ALICE, "Hello Alice, Carol here."),
            (ALICE, CAROL, "Welcome, Carol!"),
            (BOB, CAROL, "Hi Carol, Bob here."),
            (CAROL, BOB, "Hi Bob! Nice to meet you."),
        ];
        for (from, to, text) in script {
            self.exchange(from, to, text).await?;
        }
        Ok(())
    }

    async fn restart_bob(&mut self) -> anyhow::Result<()> {
        self.say.step(6, "Restarting bob");
        let before = self.service(BOB)?.messages(None, None)?;
        let address = self.service(BOB)?.account().await?.address;
        let peer = self.nodes[BOB].peer_id();
        self.findings.history_before_restart = before.len();
        self.nodes[BOB].stop().await;
        self.say.line(format!(
            "      bob's node stopped ({} messages in its history)",
            before.len()
        ));

        let text = "Bob, are you there?";
        let offline = self.service(ALICE)?.send("bob", text).await?;
        tokio::time::sleep(OFFLINE_PAUSE).await;
        let state = self
            .service(ALICE)?
            .messages(Some("bob"), None)?
            .into_iter()
            .find(|m| m.id == offline.id)
            .map(|m| m.state)
            .unwrap_or("missing");
        ensure!(
            state == "queued" || state == "on_hosts",
            "alice's message to the stopped bob should wait (queued, or sealed on a mailbox host), but its state is {state}"
        );
        let outbox = self.service(ALICE)?.status().await?.outbox;
        self.say.line(format!(
            "      alice → bob    {:<9}  {text:?}\n{INDENT}{} s later it is {state}: sealed and padded, it waits \
             on a mailbox host for bob to fetch it (alice's outbox: {outbox})",
            offline.state,
            OFFLINE_PAUSE.as_secs()
        ));

        self.nodes[BOB].start().await?;
        let bob = self.service(BOB)?;
        ensure!(
            bob.account().await?.address == address,
            "bob came back with another account"
        );
        ensure!(
            self.nodes[BOB].peer_id() == peer,
            "bob came back with another peer id"
        );
        let after = bob.messages(None, None)?;
        let kept = before
            .iter()
            .filter(|b| {
                after
                    .iter()
                    .any(|a| a.id == b.id && a.text == b.text && a.sent_at == b.sent_at)
            })
            .count();
        let contacts = bob.contacts()?.len();
        self.findings.history_kept_after_restart = kept;
        self.findings.contacts_after_restart = contacts;
        self.say.line(
            "      bob's node started again from the same directory and port: same account, same peer id",
        );
        ensure!(
            kept == before.len(),
            "bob lost history in the restart: {kept} of {} messages are left",
            before.len()
        );
        ensure!(
            contacts == NAMES.len() - 1,
            "bob has {contacts} contacts after the restart, not {}",
            NAMES.len() - 1
        );
        self.say.line(format!(
            "      ✓ history intact: all {kept} messages and both contacts are still there"
        ));

        // Bob's message makes him reachable again; alice's node retries as soon as he connects.
        self.exchange(BOB, ALICE, "Back online. Did I miss anything?")
            .await?;
        let delivery = self.await_delivery(ALICE, BOB, &offline, true).await?;
        self.say.line(format!(
            "      alice → bob    delivered  {text:?}\n{INDENT}the queued message, delivered {:.1} s \
             after it was sent, once bob was back",
            delivery.latency_ms as f64 / 1000.0
        ));
        self.findings.deliveries.push(delivery);
        self.exchange(ALICE, BOB, "Just that one. Welcome back!")
            .await?;
        self.exchange(CAROL, BOB, "Welcome back, Bob.").await?;
        self.say.line(
            "      ✓ sessions intact: bob decrypts and answers with the ratchet state he stored before",
        );
        self.findings.sessions_survived = true;
        Ok(())
    }

    /// Send `text` from `from` to `to`, wait until it is delivered, and tell.
    async fn exchange(&mut self, from: usize, to: usize, text: &str) -> anyhow::Result<()> {
        let sent = self
            .service(from)?
            .send(NAMES[to], text)
            .await
            .with_context(|| format!("{} cannot send to {}", NAMES[from], NAMES[to]))?;
        let delivery = self.await_delivery(from, to, &sent, false).await?;
        self.say.line(format!(
            "      {:<5} → {:<5}  delivered  {text:?}  ({} ms)",
            NAMES[from], NAMES[to], delivery.latency_ms
        ));
        self.findings.deliveries.push(delivery);
        Ok(())
    }

    /// Wait until `to` holds `sent` and `from` holds its acknowledgement.
    async fn await_delivery(
        &self,
        from: usize,
        to: usize,
        sent: &MessageView,
        while_offline: bool,
    ) -> anyhow::Result<Delivery> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let state = find(
                self.service(from)?.messages(Some(NAMES[to]), None)?,
                &sent.id,
            )
            .map(|m| m.state)
            .unwrap_or("missing");
            let received = find(
                self.service(to)?.messages(Some(NAMES[from]), None)?,
                &sent.id,
            );
            if let (Some(r), "delivered") = (&received, state) {
                ensure!(
                    r.text == sent.text,
                    "{} received {:?} but {} sent {:?}",
                    NAMES[to],
                    r.text,
                    NAMES[from],
                    sent.text
                );
                return Ok(Delivery {
                    id: sent.id.clone(),
                    from: NAMES[from].to_owned(),
                    to: NAMES[to].to_owned(),
                    text: sent.text.clone(),
                    sent_at_ms: sent.sent_at.saturating_sub(self.started_ms),
                    latency_ms: r.received_at.unwrap_or(0).saturating_sub(sent.sent_at),
                    while_offline,
                });
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}'s message to {} ({:?}) was not delivered within {} s: the sender's copy is {state}, \
                     and the recipient {} it; run with SOTTO_LOG=debug to see why",
                    NAMES[from],
                    NAMES[to],
                    sent.text,
                    DELIVERY_TIMEOUT.as_secs(),
                    if received.is_some() { "has" } else { "does not have" },
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Check every message against every node's history and event log.
    fn check_totals(&mut self) -> anyhow::Result<()> {
        let mut delivered = 0;
        let mut received = 0;
        for d in &self.findings.deliveries {
            let from = index(&d.from)?;
            let to = index(&d.to)?;
            if find(self.service(from)?.messages(Some(&d.to), None)?, &d.id)
                .is_some_and(|m| m.state == "delivered")
            {
                delivered += 1;
            }
            if find(self.service(to)?.messages(Some(&d.from), None)?, &d.id).is_some() {
                received += 1;
            }
        }
        let mut duplicates = 0;
        for who in 0..NAMES.len() {
            duplicates += duplicates_at(self.service(who)?)?;
        }
        self.findings.delivered = delivered;
        self.findings.received = received;
        self.findings.duplicates = duplicates;
        let sent = self.findings.deliveries.len();
        ensure!(
            delivered == sent && received == sent,
            "of {sent} messages sent, {delivered} are acknowledged and {received} arrived"
        );
        ensure!(
            duplicates == 0,
            "{duplicates} messages arrived more than once"
        );
        Ok(())
    }

    fn print_conversations(&self) -> anyhow::Result<()> {
        self.say.line(
            "\nConversations, as stored by the first node of each pair\n  \
             (delivered: acknowledged by the recipient's node; received: came in)",
        );
        let offline: Vec<&str> = self
            .findings
            .deliveries
            .iter()
            .filter(|d| d.while_offline)
            .map(|d| d.id.as_str())
            .collect();
        for (a, b) in [(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL)] {
            self.say.line(format!("\n  {} ↔ {}", NAMES[a], NAMES[b]));
            for m in self.service(a)?.messages(Some(NAMES[b]), None)? {
                let (from, to) = if m.direction == "out" {
                    (NAMES[a], NAMES[b])
                } else {
                    (NAMES[b], NAMES[a])
                };
                let note = if offline.contains(&m.id.as_str()) {
                    "  (sent while bob was offline)"
                } else {
                    ""
                };
                let at = format!(
                    "+{:.2}s",
                    m.sent_at.saturating_sub(self.started_ms) as f64 / 1000.0
                );
                self.say.line(format!(
                    "    {at:>7}  {from:<5} → {to:<5}  {:<9}  {}{note}",
                    m.state, m.text
                ));
            }
        }
        Ok(())
    }
}

fn print_summary(say: &Say, s: &Summary) {
    say.line("\nSummary");
    say.line(format!(
        "  nodes          {} (alice, bob, carol), {} restart",
        s.nodes, s.restarts
    ));
    say.line(format!(
        "  messages       {} sent, {} delivered and acknowledged, {} duplicates, {} lost",
        s.messages_sent,
        s.messages_delivered,
        s.duplicates,
        s.messages_sent.saturating_sub(s.messages_received)
    ));
    say.line(format!(
        "  restart        bob kept {} of {} messages and {} contacts; sessions {}",
        s.history_kept_after_restart,
        s.history_before_restart,
        s.contacts_after_restart,
        if s.sessions_survived {
            "intact"
        } else {
            "lost"
        }
    ));
    let median = median_latency(&s.messages);
    say.line(format!(
        "  latency        {median} ms median from send to the recipient's store (online recipients)"
    ));
    say.line(format!(
        "  elapsed        {:.1} s; all nodes stopped and their temporary directories removed",
        s.elapsed_ms as f64 / 1000.0
    ));
}

fn median_latency(messages: &[Delivery]) -> u64 {
    let mut l: Vec<u64> = messages
        .iter()
        .filter(|d| !d.while_offline)
        .map(|d| d.latency_ms)
        .collect();
    l.sort_unstable();
    l.get(l.len() / 2).copied().unwrap_or(0)
}

/// Messages a node lists or announced more than once.
fn duplicates_at(service: &Service) -> anyhow::Result<usize> {
    let mut listed: HashMap<String, usize> = HashMap::new();
    for m in service.messages(None, None)? {
        *listed.entry(m.id).or_default() += 1;
    }
    let mut announced: HashMap<String, usize> = HashMap::new();
    for event in service.events().since(0, MAX_EVENTS)? {
        if event["kind"] == "message.received" {
            let id = event["message"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *announced.entry(id).or_default() += 1;
        }
    }
    let extra = |counts: HashMap<String, usize>| -> usize {
        counts.values().map(|n| n.saturating_sub(1)).sum()
    };
    Ok(extra(listed) + extra(announced))
}

fn find(messages: Vec<MessageView>, id: &str) -> Option<MessageView> {
    messages.into_iter().find(|m| m.id == id)
}

fn index(name: &str) -> anyhow::Result<usize> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| anyhow!("no node named {name}"))
}

/// The first `n` and last `n` characters of `s`.
fn short(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 2 * n + 1 {
        return s.to_owned();
    }
    let head: String = chars[..n].iter().collect();
    let tail: String = chars[chars.len() - n..].iter().collect();
    format!("{head}…{tail}")
}
