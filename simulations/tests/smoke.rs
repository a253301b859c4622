//! The smoke scenario with real nodes: every message arrives, and a seed fixes the figures.

use anyhow::ensure;
use sotto_sim::engine::{self, Options};
use sotto_sim::figures::{summarise, Summary};
use sotto_sim::scenario::Scenario;

fn smoke() -> anyhow::Result<Scenario> {
    Scenario::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml"))
}

async fn run(scenario: &Scenario) -> anyhow::Result<Summary> {
    let run = engine::run(scenario, &Options::default()).await?;
    Ok(summarise(scenario, scenario.seed, &run))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_delivers_every_message_without_churn_or_loss() -> anyhow::Result<()> {
    let scenario = smoke()?;
    ensure!(scenario.churn.offline_share == 0.0 && scenario.network.loss == 0.0);
    let s = run(&scenario).await?;
    let d = &s.delivery;
    println!("seed {}: {d:?}", s.seed);
    ensure!(
        d.sent >= 5,
        "only {} messages sent (seed {})",
        d.sent,
        s.seed
    );
    ensure!(d.send_errors == 0 && d.skipped == 0, "{d:?}");
    ensure!(
        d.ratio == 1.0 && d.delivered == d.sent,
        "delivery ratio {} (seed {}): {d:?}",
        d.ratio,
        s.seed
    );
    ensure!(d.duplicates == 0, "{} duplicates", d.duplicates);
    // Mailbox-only nodes: every message went through hosts.
    ensure!(s.latency_mailbox.count == d.sent, "{:?}", s.latency_mailbox);
    ensure!(s.latency_direct.count == 0, "{:?}", s.latency_direct);
    ensure!(s.conversations_ready == s.conversations, "{s:?}");
    ensure!(s.bytes.on_links > s.bytes.payload, "{:?}", s.bytes);
    ensure!(s.lookups.lookups > 0, "{:?}", s.lookups);
    // Nobody colludes at f = 0; at the largest f the colluders see host requests and
    // relayed cells, and every strategy is scored. (Whether they link anyone in eight nodes
    // depends on whose guards they are: private paths are on.)
    let p = &s.privacy;
    ensure!(
        p[0].fraction == 0.0 && p[0].linkage == 0.0 && p[0].guesses == 0,
        "{p:?}"
    );
    ensure!(p[0].anonymity_mean == (s.nodes - 1) as f64, "{:?}", p[0]);
    let last = &p[p.len() - 1];
    ensure!(
        last.observations > 0 && last.relay_observations > 0 && last.strategies.len() == 3,
        "{last:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_group_gets_every_message_to_every_member() -> anyhow::Result<()> {
    let scenario = Scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/groups-small.toml"),
    )?;
    let s = run(&scenario).await?;
    let g = s
        .group
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no group figures"))?;
    println!("{g:?}");
    ensure!(g.latency.count == g.run.delivered, "{:?}", g.latency);
    let g = &g.run;
    ensure!(
        g.joined == g.members,
        "{} of {} joined",
        g.joined,
        g.members
    );
    ensure!(g.messages == 6, "{} messages sent", g.messages);
    ensure!(
        g.delivered == g.expected && g.expected == 6 * 5,
        "{} of {} deliveries",
        g.delivered,
        g.expected
    );
    ensure!(g.dropped == 0, "{} group envelopes refused", g.dropped);
    Ok(())
}
