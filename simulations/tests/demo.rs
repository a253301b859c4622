//! The whole demo, as `sotto-sim demo` runs it: real nodes, real swarms, real stores.

use std::collections::HashSet;

use anyhow::ensure;
use sotto_sim::demo::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_exactly_once_and_a_restart_loses_nothing() -> anyhow::Result<()> {
    let s = demo::run(&Options { narrate: false }).await?;

    ensure!(s.nodes == 3 && s.contacts == 6, "{s:?}");
    ensure!(s.safety_numbers_match, "safety numbers differ");

    ensure!(s.messages_sent == s.messages.len(), "{s:?}");
    ensure!(
        s.messages_sent >= 10,
        "only {} messages sent",
        s.messages_sent
    );
    ensure!(s.messages_delivered == s.messages_sent, "{s:?}");
    ensure!(s.messages_received == s.messages_sent, "{s:?}");
    ensure!(s.duplicates == 0, "{} duplicates", s.duplicates);
    let ids: HashSet<&str> = s.messages.iter().map(|m| m.id.as_str()).collect();
    ensure!(ids.len() == s.messages.len(), "message ids repeat");

    // Every ordered pair of nodes talked.
    let pairs: HashSet<(&str, &str)> = s
        .messages
        .iter()
        .map(|m| (m.from.as_str(), m.to.as_str()))
        .collect();
    ensure!(pairs.len() == 6, "pairs that talked: {pairs:?}");

    ensure!(s.restarts == 1, "{s:?}");
    ensure!(s.history_before_restart > 0, "{s:?}");
    ensure!(
        s.history_kept_after_restart == s.history_before_restart,
        "{s:?}"
    );
    ensure!(s.contacts_after_restart == 2, "{s:?}");
    ensure!(s.sessions_survived, "{s:?}");
    let offline: Vec<_> = s.messages.iter().filter(|m| m.while_offline).collect();
    ensure!(offline.len() == 1 && offline[0].to == "bob", "{offline:?}");
    Ok(())
}
