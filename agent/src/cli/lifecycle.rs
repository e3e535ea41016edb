//! `memlens lifecycle`: process exits, OOM kills and cgroup changes, newest first.

use std::path::Path;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};

use super::{history::clock, top::encode, LifecycleArgs};
use crate::{
    api::{client, LifecycleResponse},
    history::{LifecycleRecord, RecordKind},
    units::Bytes,
};

pub async fn run(socket: &Path, args: &LifecycleArgs) -> Result<()> {
    let mut query = format!(
        "/v1/lifecycle?since={}&limit={}",
        encode(&args.since),
        args.limit
    );
    if let Some(cgroup) = &args.cgroup {
        query.push_str(&format!("&cgroup={}", encode(cgroup)));
    }
    let answer: LifecycleResponse = client::get(socket, &query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if answer.records.is_empty() {
        println!("nothing recorded since {} ago", args.since);
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
            r.comm.clone(),
            status(r),
            memory(r),
            r.cgroup_path
                .clone()
                .unwrap_or_else(|| format!("memcg {}", r.cgroup_id)),
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
            .and_then(|e| e.get("usage_bytes")?.as_u64())
            .map(|u| format!("cgroup {}", Bytes(u)))
            .unwrap_or_default(),
    }
}
