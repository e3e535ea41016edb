//! `memlens events`: list, show (evidence and a chart), export, check now.

use std::fmt::Write as _;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use memlens_types::{
    api::{Events, EventsCheck, NoQuery},
    event::{CheckReport, Event, EventsQuery, Evidence, Status},
    evidence::{GrowthEvidence, RestartEvidence},
    lifecycle::MAX_RECORDS,
    pod::PodMeta,
    text::printable,
    Bytes,
};

use crate::{
    allocations,
    args::EventsCommand,
    chart::{self, ChartInput},
    history::clock,
    leaks::entry,
    workload_name, Client,
};

/// Stacks shown per event.
const STACKS_SHOWN: usize = 3;

pub async fn run(client: &Client, command: &EventsCommand) -> Result<()> {
    match command {
        EventsCommand::List(args) => {
            let answer = client
                .request::<Events>(&EventsQuery {
                    status: args.status,
                    kind: args.kind,
                    limit: usize::try_from(args.limit).ok(),
                })
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", list(&answer.events, args.paths));
            }
        }
        EventsCommand::Show(args) => {
            let event = client.event(args.id).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&event)?);
            } else {
                print!("{}", show(&event));
            }
        }
        EventsCommand::Export(args) => {
            let json = match args.id {
                Some(id) => serde_json::to_string_pretty(&client.event(id).await?)?,
                None => serde_json::to_string_pretty(
                    &client
                        .request::<Events>(&EventsQuery {
                            limit: Some(MAX_RECORDS),
                            ..EventsQuery::default()
                        })
                        .await?
                        .events,
                )?,
            };
            println!("{json}");
        }
        EventsCommand::Check(args) => {
            let report = client.request::<EventsCheck>(&NoQuery {}).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check(&report));
            }
        }
    }
    Ok(())
}

fn list(events: &[Event], paths: bool) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "ID",
        "STATUS",
        "KIND",
        "SEVERITY",
        "FIRST SEEN",
        "DURATION",
        "WORKLOAD",
        "SUMMARY",
    ]);
    for e in events {
        let d = &e.dimensions;
        let pod = match (&d.namespace, &d.pod) {
            (Some(namespace), Some(pod)) => Some(PodMeta {
                namespace: namespace.clone(),
                pod: pod.clone(),
                container: d.container_name.clone(),
            }),
            _ => None,
        };
        table.add_row(vec![
            e.id.to_string(),
            e.status.as_str().to_string(),
            e.kind().as_str().to_string(),
            e.severity.as_str().to_string(),
            clock(e.first_seen_unix_ms),
            duration(e.duration_seconds),
            workload_name(pod.as_ref(), &e.subject, &e.subject, paths),
            e.summary.clone(),
        ]);
    }
    format!("{table}\n")
}

fn duration(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

fn check(report: &CheckReport) -> String {
    let mut out = String::new();
    if let Some(why) = &report.skipped {
        let _ = writeln!(out, "no detector ran: {why}");
        return out;
    }
    let _ = writeln!(out, "ran: {}", report.detectors.join(", "));
    for (title, events) in [
        ("raised", &report.raised),
        ("still open", &report.still_open),
        ("recovered", &report.recovered),
    ] {
        let _ = writeln!(out, "{title}: {}", events.len());
        for e in events.iter() {
            let _ = writeln!(
                out,
                "  #{} {} {}: {}",
                e.id,
                e.kind(),
                e.severity.as_str(),
                printable(&e.summary)
            );
        }
    }
    if !report.held_back.is_empty() {
        let _ = writeln!(out, "held back: {}", report.held_back.len());
        for h in &report.held_back {
            let _ = writeln!(
                out,
                "  no {} for {}: {}",
                h.kind,
                printable(&h.subject),
                printable(&h.reason)
            );
        }
    }
    out
}

fn show(e: &Event) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {}  {}  {}  {}",
        e.id,
        e.kind(),
        e.severity.as_str(),
        e.status.as_str()
    );
    let _ = writeln!(out, "{}", printable(&e.summary));
    let _ = writeln!(
        out,
        "first seen {} UTC, last seen {} UTC, {} {}",
        clock(e.first_seen_unix_ms),
        clock(e.last_seen_unix_ms),
        if e.status == Status::Open {
            "open for"
        } else {
            "lasted"
        },
        duration(e.duration_seconds)
    );
    let d = &e.dimensions;
    let mut dims = vec![format!("host={}", d.host)];
    for (key, value) in [
        ("cluster", &d.cluster),
        ("namespace", &d.namespace),
        ("pod", &d.pod),
        ("pod_uid", &d.pod_uid),
        ("container", &d.container),
        ("cgroup", &d.cgroup),
    ] {
        if let Some(v) = value {
            dims.push(format!("{key}={}", printable(v)));
        }
    }
    let _ = writeln!(out, "{}\n", dims.join(" "));
    match &e.evidence {
        Evidence::LeakSuspected(g) | Evidence::FileCachePressure(g) => growth(&mut out, g),
        Evidence::AbnormalRestarts(r) => restarts(&mut out, r),
    }
    out
}

fn growth(out: &mut String, g: &GrowthEvidence) {
    let secs = |s: Option<f64>| s.map_or_else(|| "not within the horizon".into(), duration);
    if !g.reason.is_empty() {
        let _ = writeln!(out, "why: {}", printable(&g.reason));
    }
    if let Some(allowance) = &g.allowance {
        let _ = writeln!(out, "allowance: {}", printable(allowance));
    }
    let _ = writeln!(
        out,
        "{} growth {}/h, last third of the window {}/h (anon {}/h, file cache {}/h) over {} \
         samples, {:.0}% of pairs rising",
        g.measure,
        Bytes(g.growth_bytes_per_hour.max(0.0) as u64),
        Bytes(g.recent_growth_bytes_per_hour.max(0.0) as u64),
        Bytes(g.anon_growth_bytes_per_hour.max(0.0) as u64),
        Bytes(g.file_growth_bytes_per_hour.max(0.0) as u64),
        g.samples,
        g.rising_share * 100.0
    );
    let r = &g.reclaim;
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "over the window: limit hits {}, memory.high events {}, OOM kills {}, page cache refaulted {}",
        count(r.limit_hits),
        count(r.high_events),
        count(r.oom_kills),
        r.refaulted_bytes
            .map_or_else(|| "-".to_string(), |b| Bytes(b).to_string())
    );
    let _ = writeln!(
        out,
        "{} {} (usage {}) of limit {} ({:?}); threshold {}; forecast in {}: {}",
        g.measure,
        Bytes(g.measured_bytes),
        Bytes(g.usage_bytes),
        Bytes(g.limit_bytes),
        g.limit_source,
        Bytes(g.threshold_bytes),
        duration(g.forecast[1].0.saturating_sub(g.forecast[0].0) as f64 / 1000.0),
        Bytes(g.forecast_bytes)
    );
    let _ = writeln!(
        out,
        "time to threshold: {}; time to limit: {}\n",
        secs(g.time_to_threshold_seconds),
        secs(g.time_to_limit_seconds)
    );
    let now = g.evaluated_at_unix_ms as f64;
    let rel = |(t, b): (u64, u64)| ((t as f64 - now) / 1000.0, b as f64);
    let history: Vec<(f64, f64)> = g.series.iter().copied().map(rel).collect();
    let _ = write!(
        out,
        "{}",
        chart::render(&ChartInput {
            history: &history,
            forecast: Some((rel(g.forecast[0]), rel(g.forecast[1]))),
            limit: Some(g.limit_bytes as f64),
            width: 100,
            height: 16,
        })
    );
    if !g.top_processes.is_empty() {
        let mut table = Table::new();
        table
            .load_preset(NOTHING)
            .set_header(vec!["PID", "COMM", "RSS", "ANON", "FILE"]);
        for p in &g.top_processes {
            table.add_row(vec![
                p.pid.to_string(),
                printable(&p.comm).into_owned(),
                Bytes(p.rss_bytes).to_string(),
                Bytes(p.anon_bytes).to_string(),
                Bytes(p.file_bytes).to_string(),
            ]);
        }
        let _ = writeln!(out, "\nTop processes by memory:\n{table}");
    }
    if !g.top_stacks.is_empty() {
        let _ = writeln!(out, "\nTop growing stacks:");
        for (i, s) in g.top_stacks.iter().take(STACKS_SHOWN).enumerate() {
            entry(out, i + 1, s, false);
        }
    }
    if !g.allocation_stacks.is_empty() {
        let _ = writeln!(
            out,
            "\nStacks holding the most, from the processes' own allocation profiles:"
        );
        for (i, s) in g.allocation_stacks.iter().take(STACKS_SHOWN).enumerate() {
            allocations::entry(out, i + 1, s);
        }
    }
    if let Some(hint) = &g.allocation_trace_hint {
        let _ = writeln!(out, "\nAllocations: {}", printable(hint));
    }
    if !g.top_files.is_empty() {
        let _ = writeln!(out, "\nFiles with the most page cache:");
        for f in &g.top_files {
            let _ = writeln!(
                out,
                "  {:>10}  {}",
                Bytes(f.bytes).to_string(),
                printable(&f.display())
            );
        }
    }
}

fn restarts(out: &mut String, r: &RestartEvidence) {
    let _ = writeln!(
        out,
        "{} restarts ({} OOM kills) in the last {}; {} of {} members restarted ({:.0}%, before {:.0}%)\n",
        r.restarts,
        r.oom_kills,
        duration(r.window_seconds),
        r.restarted_members,
        r.members,
        r.restarted_share * 100.0,
        r.previous_restarted_share * 100.0
    );
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "TIME (UTC)",
        "REASON",
        "EXIT",
        "PID",
        "COMM",
        "MEMORY AT DEATH",
        "CGROUP",
    ]);
    for x in &r.recent {
        table.add_row(vec![
            clock(x.at_unix_ms),
            x.reason.to_string(),
            x.container_exit_code.to_string(),
            x.pid.to_string(),
            printable(&x.comm).into_owned(),
            x.memory_at_death_bytes
                .map(|b| Bytes(b).to_string())
                .unwrap_or_default(),
            printable(&x.cgroup).into_owned(),
        ]);
    }
    let _ = writeln!(out, "{table}");
    if let Some((at, memory)) = r.recent.iter().find_map(|x| {
        x.memory
            .as_ref()
            .filter(|_| x.oom_killed)
            .map(|m| (x.at_unix_ms, m))
    }) {
        // The census is periodic: a process that filled its limit faster than that was seen
        // smaller than it died.
        let _ = writeln!(
            out,
            "\nAt the latest OOM kill, the cgroup used {} in the census {:.1} s before it; held by:",
            Bytes(memory.usage_bytes),
            at.saturating_sub(memory.taken_at_unix_ms) as f64 / 1000.0
        );
        for (i, s) in memory.top_stacks.iter().take(STACKS_SHOWN).enumerate() {
            entry(out, i + 1, s, false);
        }
        for f in &memory.top_files {
            let _ = writeln!(
                out,
                "  {:>10}  {}",
                Bytes(f.bytes).to_string(),
                printable(&f.display())
            );
        }
    }
}
