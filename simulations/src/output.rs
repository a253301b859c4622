//! What a run leaves in `--out DIR`: `summary.json`, CSV files (per message, per node, per
//! second, privacy per fraction), SVG plots and `report.md`.

use std::fmt::Write as _;
use std::path::Path as FsPath;

use anyhow::{anyhow, Context as _};
use plotters::prelude::*;

use crate::figures::Summary;
use crate::record::{Path, Run};

/// Write everything into `dir` (created if missing).
pub fn write(dir: &FsPath, summary: &Summary, run: &Run) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let put = |name: &str, text: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    put(
        "summary.json",
        serde_json::to_string_pretty(summary).context("cannot encode the summary")? + "\n",
    )?;
    put("messages.csv", messages_csv(run))?;
    put("nodes.csv", nodes_csv(run))?;
    put("timeseries.csv", timeseries_csv(run))?;
    put("privacy.csv", privacy_csv(summary))?;
    plot_latency(&dir.join("latency_cdf.svg"), run)?;
    plot_delivery(&dir.join("delivery_over_time.svg"), run)?;
    plot_linkage(&dir.join("linkage.svg"), summary)?;
    plot_storage(&dir.join("hosted_storage.svg"), run)?;
    put("report.md", report(summary))?;
    Ok(())
}

fn messages_csv(run: &Run) -> String {
    let mut s = String::from(
        "id,conversation,from,to,size,sent_ms,recipient_online,path,latency_ms,duplicates\n",
    );
    for m in &run.messages {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            m.id,
            m.conversation,
            run.nodes[m.from].name,
            run.nodes[m.to].name,
            m.size,
            m.at_ms,
            m.recipient_online,
            path_name(m.path),
            m.latency_ms().map(|l| l.to_string()).unwrap_or_default(),
            m.duplicates
        );
    }
    s
}

fn path_name(p: Path) -> &'static str {
    match p {
        Path::Direct => "direct",
        Path::Mailbox => "mailbox",
        Path::None => "none",
    }
}

fn nodes_csv(run: &Run) -> String {
    let mut s = String::from(
        "name,peer_id,role,bytes_out,envelope_out,mailbox_out,lookups,lookup_requests,hosted_envelopes,hosted_bytes,hosted_bytes_max,rejections,restarts,connections\n",
    );
    for n in &run.nodes {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            n.name,
            n.peer_id,
            serde_json::to_value(n.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            n.traffic.bytes_out(),
            n.traffic.envelope_out,
            n.traffic.mailbox_out,
            n.traffic.lookups,
            n.traffic.lookup_requests,
            n.hosted_envelopes,
            n.hosted_bytes,
            n.hosted_bytes_max,
            n.rejections,
            n.restarts,
            n.connections
        );
    }
    s
}

/// Per second of the run (from the start of traffic): messages sent, delivered, in flight,
/// and the latest sample of hosted storage and memory.
fn timeseries_csv(run: &Run) -> String {
    let start = run.traffic_start_ms;
    let end = run
        .messages
        .iter()
        .filter_map(|m| m.received_at)
        .chain(run.samples.last().map(|s| start + (s.t_s * 1000.0) as u64))
        .max()
        .unwrap_or(start);
    let seconds = (end.saturating_sub(start) / 1000 + 1) as usize;
    let mut sent = vec![0u64; seconds + 1];
    let mut delivered = vec![0u64; seconds + 1];
    for m in &run.messages {
        let s = (m.sent_at.saturating_sub(start) / 1000) as usize;
        sent[s.min(seconds)] += 1;
        if let Some(r) = m.received_at {
            delivered[(r.saturating_sub(start) / 1000).min(seconds as u64) as usize] += 1;
        }
    }
    let mut s = String::from(
        "second,sent,delivered,in_flight,online,hosted_bytes,hosted_envelopes,hosted_bytes_max_node,rss_kib\n",
    );
    let (mut total_sent, mut total_delivered) = (0u64, 0u64);
    for t in 0..=seconds {
        total_sent += sent[t];
        total_delivered += delivered[t];
        let sample = run.samples.iter().rev().find(|x| x.t_s <= t as f64 + 1.0);
        let _ = writeln!(
            s,
            "{t},{},{},{},{},{},{},{},{}",
            sent[t],
            delivered[t],
            total_sent.saturating_sub(total_delivered),
            sample.map(|x| x.online).unwrap_or(0),
            sample.map(|x| x.hosted_bytes).unwrap_or(0),
            sample.map(|x| x.hosted_envelopes).unwrap_or(0),
            sample.map(|x| x.hosted_bytes_max).unwrap_or(0),
            sample.map(|x| x.rss_kib).unwrap_or(0),
        );
    }
    s
}

fn privacy_csv(summary: &Summary) -> String {
    let mut s = String::from(
        "f,colluders,observations,relay_observations,conversations,strategy,linkage,chance,linkage_hosts,precision_hosts,linkage_relays,precision_relays,linkage_timing,precision_timing,linkage_by_address,guesses,precision,span_mean,span_max,span_share,anonymity_mean,messages_to_disclosure,both_guards_colluding,named_with_both_guards_colluding,f_squared,one_drop\n",
    );
    for p in &summary.privacy {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.4},{:.4},{},{:.4},{},{:.4},{:.3},{},{:.4},{:.2},{},{:.4},{:.4},{:.4},{:.4}",
            p.fraction,
            p.colluders,
            p.observations,
            p.relay_observations,
            p.conversations,
            p.strategy,
            p.linkage,
            p.chance,
            strategies_csv(p),
            p.linkage_by_address,
            p.guesses,
            p.precision,
            p.span_mean,
            p.span_max,
            p.span_share,
            p.anonymity_mean,
            p.messages_to_disclosure
                .map(|m| format!("{m:.1}"))
                .unwrap_or_default(),
            p.both_guards_colluding,
            p.named_with_both_guards_colluding,
            p.f_squared,
            p.one_drop
        );
    }
    s
}

/// Each strategy's linkage and precision, as CSV fields (hosts, relays, timing).
fn strategies_csv(p: &crate::privacy::Figures) -> String {
    ["hosts", "relays", "timing"]
        .iter()
        .map(|name| {
            p.strategies
                .iter()
                .find(|s| s.name == *name)
                .map(|s| format!("{:.4},{:.4}", s.linkage, s.precision))
                .unwrap_or_else(|| ",".into())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Each strategy's linkage and precision, for the report.
fn strategies_md(p: &crate::privacy::Figures) -> String {
    p.strategies
        .iter()
        .map(|s| format!("{:.3} ({:.3})", s.linkage, s.precision))
        .collect::<Vec<_>>()
        .join(" / ")
}

type Series = (String, Vec<(f64, f64)>, RGBColor);

/// A line chart of `series` in an SVG file at `path`.
fn line_chart(
    path: &FsPath,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (x_max, y_max): (f64, f64),
    series: Vec<Series>,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (720, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max.max(1e-9), 0f64..y_max.max(1e-9))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (label, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn cdf(mut v: Vec<f64>) -> Vec<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mut out = vec![(0.0, 0.0)];
    out.extend(v.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n)));
    out
}

fn plot_latency(path: &FsPath, run: &Run) -> anyhow::Result<()> {
    let of = |p: Path| -> Vec<f64> {
        run.messages
            .iter()
            .filter(|m| m.path == p)
            .filter_map(|m| m.latency_ms())
            .map(|l| l as f64 / 1000.0)
            .collect()
    };
    let (direct, mailbox) = (of(Path::Direct), of(Path::Mailbox));
    let x_max = direct
        .iter()
        .chain(mailbox.iter())
        .copied()
        .fold(0.0, f64::max)
        * 1.05;
    let mut series = Vec::new();
    if !direct.is_empty() {
        series.push((format!("direct ({})", direct.len()), cdf(direct), BLUE));
    }
    if !mailbox.is_empty() {
        series.push((format!("mailbox ({})", mailbox.len()), cdf(mailbox), RED));
    }
    line_chart(
        path,
        "End-to-end latency (CDF)",
        (
            "seconds from send to the recipient's store",
            "share of delivered messages",
        ),
        (x_max.max(1.0), 1.0),
        series,
    )
}

fn plot_delivery(path: &FsPath, run: &Run) -> anyhow::Result<()> {
    let start = run.traffic_start_ms;
    let mut sent: Vec<f64> = run
        .messages
        .iter()
        .map(|m| m.sent_at.saturating_sub(start) as f64 / 1000.0)
        .collect();
    let mut got: Vec<f64> = run
        .messages
        .iter()
        .filter_map(|m| m.received_at)
        .map(|r| r.saturating_sub(start) as f64 / 1000.0)
        .collect();
    sent.sort_by(f64::total_cmp);
    got.sort_by(f64::total_cmp);
    let steps = |v: &[f64]| -> Vec<(f64, f64)> {
        let mut out = vec![(0.0, 0.0)];
        out.extend(v.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)));
        out
    };
    let x_max = run
        .samples
        .last()
        .map(|s| s.t_s)
        .unwrap_or(0.0)
        .max(got.last().copied().unwrap_or(0.0))
        .max(sent.last().copied().unwrap_or(0.0));
    let y_max = sent.len() as f64 * 1.05;
    let mut sent_line = steps(&sent);
    let mut got_line = steps(&got);
    if let Some(&(_, y)) = sent_line.last() {
        sent_line.push((x_max, y));
    }
    if let Some(&(_, y)) = got_line.last() {
        got_line.push((x_max, y));
    }
    line_chart(
        path,
        "Messages sent and delivered over time",
        ("seconds after traffic began", "messages (cumulative)"),
        (x_max.max(1.0), y_max.max(1.0)),
        vec![
            ("sent".into(), sent_line, BLUE),
            ("delivered".into(), got_line, GREEN),
        ],
    )
}

fn plot_linkage(path: &FsPath, summary: &Summary) -> anyhow::Result<()> {
    let p = &summary.privacy;
    let k = summary.settings.mailbox.replicas;
    let x_max = p.iter().map(|x| x.fraction).fold(0.0, f64::max).max(0.05);
    let fine: Vec<f64> = (0..=100).map(|i| x_max * i as f64 / 100.0).collect();
    line_chart(
        path,
        "Conversations linked by colluding hosts",
        ("f, share of colluding nodes", "share of conversations"),
        (x_max, 1.0),
        vec![
            (
                "linkage (measured)".into(),
                p.iter().map(|x| (x.fraction, x.linkage)).collect(),
                RED,
            ),
            (
                "span share (measured)".into(),
                p.iter().map(|x| (x.fraction, x.span_share)).collect(),
                MAGENTA,
            ),
            (
                format!("1-(1-f)^{k}"),
                fine.iter()
                    .map(|f| (*f, 1.0 - (1.0 - f).powi(k as i32)))
                    .collect(),
                BLUE,
            ),
            (
                "f²".into(),
                fine.iter().map(|f| (*f, f * f)).collect(),
                GREEN,
            ),
        ],
    )
}

fn plot_storage(path: &FsPath, run: &Run) -> anyhow::Result<()> {
    let mut peak: Vec<u64> = run.nodes.iter().map(|n| n.hosted_bytes_max).collect();
    let mut last: Vec<u64> = run.nodes.iter().map(|n| n.hosted_bytes).collect();
    peak.sort_unstable_by(|a, b| b.cmp(a));
    last.sort_unstable_by(|a, b| b.cmp(a));
    let kib = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, b)| (i as f64, *b as f64 / 1024.0))
            .collect()
    };
    let y_max = peak.first().copied().unwrap_or(0) as f64 / 1024.0 * 1.05;
    line_chart(
        path,
        "Hosted storage per node (nodes sorted by size)",
        ("node rank", "KiB hosted"),
        (
            run.nodes.len().saturating_sub(1).max(1) as f64,
            y_max.max(1.0),
        ),
        vec![
            ("peak in a sample".into(), kib(&peak), RED),
            ("at the end".into(), kib(&last), BLUE),
        ],
    )
}

/// The markdown report.
pub fn report(s: &Summary) -> String {
    let mut r = String::new();
    let d = &s.delivery;
    let _ = writeln!(r, "# sotto-sim: {}\n", s.scenario);
    let _ = writeln!(
        r,
        "- seed: {}\n- code: sotto-sim {}\n- nodes: {}, conversations: {} ({} ready before traffic)\n- mailbox: {}; private paths {}\n- duration: {} s of traffic, {} s drain; wall time {:.1} s, peak RSS {:.0} MiB\n",
        s.seed,
        s.code_version,
        s.nodes,
        s.conversations,
        s.conversations_ready,
        if s.settings.mailbox.mailbox_only {
            "every message through dead drops (mailbox-only)"
        } else {
            "direct to online contacts, dead drops for offline ones"
        },
        if s.settings.mailbox.private_paths {
            "on"
        } else {
            "off"
        },
        s.settings.duration_s,
        s.settings.drain_s,
        s.timing.wall_ms as f64 / 1000.0,
        s.timing.peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(r, "| figure | value |\n| --- | --- |");
    let _ = writeln!(
        r,
        "| delivered (before the run ended) | {} of {} sends attempted ({:.1} %) |",
        d.delivered,
        d.attempted,
        100.0 * d.ratio
    );
    let _ = writeln!(
        r,
        "| sends that failed or timed out (not delivered) | {} |",
        d.send_errors
    );
    for w in &d.within {
        let _ = writeln!(
            r,
            "| delivered within {} s | {:.1} % |",
            w.deadline_s,
            100.0 * w.ratio
        );
    }
    let _ = writeln!(
        r,
        "| sent to an offline recipient | {} ({} delivered) |",
        d.to_offline, d.to_offline_delivered
    );
    let _ = writeln!(r, "| duplicates | {} |", d.duplicates);
    for (name, l) in [
        ("direct", &s.latency_direct),
        ("mailbox", &s.latency_mailbox),
    ] {
        let _ = writeln!(
            r,
            "| latency {name} p50 / p90 / p99 (n) | {} / {} / {} ms ({}) |",
            l.p50_ms, l.p90_ms, l.p99_ms, l.count
        );
    }
    let _ = writeln!(
        r,
        "| bytes sent per node, mean / max | {:.0} / {} |",
        s.bytes.per_node_mean, s.bytes.per_node_max
    );
    let _ = writeln!(
        r,
        "| amplification (bytes on links per payload byte) | {:.1} |",
        s.bytes.amplification
    );
    let _ = writeln!(
        r,
        "| hosted per node at the end, mean / max; peak max | {:.0} / {} / {} bytes |",
        s.storage.final_mean, s.storage.final_max, s.storage.peak_max
    );
    let _ = writeln!(
        r,
        "| deposits refused by hosts | {} |",
        s.storage.rejections
    );
    let _ = writeln!(
        r,
        "| Kademlia requests per lookup (log2 N) | {:.1} ({:.1}), {} lookups |",
        s.lookups.requests_per_lookup, s.lookups.log2_n, s.lookups.lookups
    );
    if let Some(summary) = &s.group {
        let (g, latency) = (&summary.run, &summary.latency);
        let _ = writeln!(r, "\n## The group\n");
        let _ = writeln!(r, "| figure | value |\n| --- | --- |");
        let _ = writeln!(
            r,
            "| members joined / in the group | {} / {} (in {:.1} s) |",
            g.joined,
            g.members,
            g.join_ms as f64 / 1000.0
        );
        let _ = writeln!(
            r,
            "| messages; deliveries to the other members | {}; {} of {} ({:.1} %) |",
            g.messages,
            g.delivered,
            g.expected,
            if g.expected == 0 {
                0.0
            } else {
                100.0 * g.delivered as f64 / g.expected as f64
            }
        );
        let _ = writeln!(
            r,
            "| latency to the members p50 / p90 / p99 / max (n) | {} / {} / {} / {} ms ({}) |",
            latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms, latency.count
        );
        let _ = writeln!(
            r,
            "| senders' bytes per message; a non-sender's over the same time | {} ; {} |",
            g.sender_bytes_per_message, g.non_sender_bytes_per_message_time
        );
        let _ = writeln!(
            r,
            "| senders' own cells per message (less a non-sender's over the same time) | {:.1} |",
            g.sender_cells_per_message
        );
        let _ = writeln!(
            r,
            "| hosted bytes per message (all hosts) | {} |",
            g.hosted_bytes_per_message
        );
        let _ = writeln!(r, "| group envelopes members refused | {} |", g.dropped);
        let _ = writeln!(
            r,
            "| senders' group outboxes empty after | {} |",
            g.outboxes_empty_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "not within the drain".to_owned())
        );
        let _ = writeln!(
            r,
            "| at the end, members with messages waiting for a sender key (messages) | {} ({}) |",
            g.members_waiting_for_keys, g.messages_waiting_for_keys
        );
    }
    if s.spam.attempts > 0 {
        let _ = writeln!(
            r,
            "| spam deposits: stored / refused / failed | {} / {} / {} |",
            s.spam.stored, s.spam.refused, s.spam.failed
        );
    }
    if s.observations_dropped > 0 {
        let _ = writeln!(
            r,
            "\n**The recorder was full: {} host and relay events were not kept, so the privacy figures \
             below are computed on part of what the colluders saw (they understate linkage).**",
            s.observations_dropped
        );
    }
    let _ = writeln!(
        r,
        "\n## Privacy against colluding peers (hosts and relays)\n\nThe figures of the strategy whose linkage is furthest above chance (what naming as many pairs at random would link); each strategy's linkage (precision) beside them.\n\n| f | colluders | best | linkage | chance | hosts / relays / timing: linkage (precision) | by dead drop | precision | span mean / max (epochs) | span share | anonymity set | messages to disclosure (median) | both guards collude: of all / of named | f² | 1−(1−f)^k |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for p in &s.privacy {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.2} / {} | {:.3} | {:.1} | {} | {:.3} / {:.3} | {:.3} | {:.3} |",
            p.fraction,
            p.colluders,
            p.strategy,
            p.linkage,
            p.chance,
            strategies_md(p),
            p.linkage_by_address,
            p.precision,
            p.span_mean,
            p.span_max,
            p.span_share,
            p.anonymity_mean,
            p.messages_to_disclosure
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "–".into()),
            p.both_guards_colluding,
            p.named_with_both_guards_colluding,
            p.f_squared,
            p.one_drop
        );
    }
    let _ = writeln!(
        r,
        "\n![latency](latency_cdf.svg)\n![delivery](delivery_over_time.svg)\n![linkage](linkage.svg)\n![storage](hosted_storage.svg)"
    );
    r
}
