//! With a fixed seed, two runs of a small scenario give the same delivery and privacy
//! figures: mailbox-only nodes with seeded keys, epochs counted from the start of traffic,
//! sends kept away from epoch boundaries, and mailbox work from the nodes' own PeerIds
//! (private paths choose relays by timing as well as by chance).

use anyhow::ensure;
use sotto_sim::engine::{self, Options};
use sotto_sim::figures::{summarise, Summary};
use sotto_sim::scenario::Scenario;

async fn run(scenario: &Scenario) -> anyhow::Result<Summary> {
    let run = engine::run(scenario, &Options::default()).await?;
    Ok(summarise(scenario, scenario.seed, &run))
}

/// The figures that do not depend on timing.
fn fixed_figures(s: &Summary) -> String {
    let p: Vec<String> = s
        .privacy
        .iter()
        .map(|p| {
            format!(
                "f={} colluders={} conversations={} linkage={:.6} by_address={:.6} span_share={:.6} span_max={}",
                p.fraction,
                p.colluders,
                p.conversations,
                p.linkage,
                p.linkage_by_address,
                p.span_share,
                p.span_max
            )
        })
        .collect();
    format!(
        "sent={} delivered={} ratio={} to_offline={}\n{}",
        s.delivery.sent,
        s.delivery.delivered,
        s.delivery.ratio,
        s.delivery.to_offline,
        p.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_same_delivery_and_privacy_figures_twice() -> anyhow::Result<()> {
    // A smaller smoke: two of them run at once.
    let mut scenario = Scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml"),
    )?;
    scenario.name = "smoke-twice".into();
    scenario.network.nodes = 6;
    scenario.traffic.conversations = 3;
    // Which relays carry a request depends on when each node heard of which (identify, as
    // connections come up): with private paths the hosts' records, and so the privacy
    // figures, vary from run to run. Without them they are a function of the seed.
    scenario.mailbox.private_paths = false;
    scenario.check()?;
    let (a, b) = tokio::join!(run(&scenario), run(&scenario));
    let (a, b) = (fixed_figures(&a?), fixed_figures(&b?));
    println!("{a}");
    ensure!(
        a == b,
        "seed {}: the runs differ:\n{a}\n---\n{b}",
        scenario.seed
    );
    Ok(())
}
