//! `memlens lifecycle`: process exits, OOM kills and cgroup changes, newest first.

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use memlens_types::{
    api::Lifecycle,
    lifecycle::{LifecycleQuery, LifecycleRecord, RecordKind},
    text::printable,
    Bytes,
};

use crate::{args::LifecycleArgs, history::clock, Client};

pub async fn run(client: &Client, args: &LifecycleArgs) -> Result<()> {
    let answer = client
        .request::<Lifecycle>(&LifecycleQuery {
            cgroup: args.cgroup.clone(),
            since: Some(args.since),
            limit: usize::try_from(args.limit).ok(),
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if answer.records.is_empty() {
        println!(
            "nothing recorded since {} ago",
            humantime::format_duration(args.since)
        );
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "TIME (UTC)",
        "WHAT",
        "PID",
        "COMM",
        "STATUS",
        "MEMORY",
        "CGROUP",
    ]);
    for r in answer.records.iter().map(|e| &e.record) {
        table.add_row(vec![
            clock(r.ts_ms),
            what(r).to_string(),
            if r.pid == 0 {
                String::new()
            } else {
                r.pid.to_string()
            },
            printable(&r.comm).into_owned(),
            status(r),
            memory(r),
            r.cgroup_path.as_deref().map_or_else(
                || format!("memcg {}", r.cgroup_id),
                |p| printable(p).into_owned(),
            ),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn what(r: &LifecycleRecord) -> &'static str {
    match (r.kind, r.main_process) {
        (RecordKind::OomKill, _) => "OOM kill",
        (RecordKind::Exit, true) => "exit (main)",
        (RecordKind::Exit, false) => "exit",
        (RecordKind::CgroupCreated, _) => "cgroup created",
        (RecordKind::CgroupRemoved, _) => "cgroup removed",
    }
}

/// `OOMKilled (signal 9)`, `signal 15 (143)`, `exit 3`.
fn status(r: &LifecycleRecord) -> String {
    let base = match (r.signal, r.exit_code) {
        (Some(s), _) => format!("signal {s} ({})", 128 + s),
        (None, Some(c)) => format!("exit {c}"),
        (None, None) => String::new(),
    };
    if r.oom_killed {
        format!("OOMKilled {base}").trim_end().to_string()
    } else {
        base
    }
}

fn memory(r: &LifecycleRecord) -> String {
    match (r.anon_rss_bytes, r.file_rss_bytes, r.shmem_rss_bytes) {
        (Some(a), Some(f), Some(s)) => format!("rss {} (anon {})", Bytes(a + f + s), Bytes(a)),
        _ => r
            .evidence
            .as_ref()
            .map(|e| format!("cgroup {}", Bytes(e.usage_bytes)))
            .unwrap_or_default(),
    }
}
