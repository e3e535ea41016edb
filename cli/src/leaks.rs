//! `memlens leaks`: which code paths hold memory, and which keep growing.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use memlens_types::{
    api::{Leaks, LeaksFlamegraph, LeaksPprof},
    leaks::{LeakEntry, LeaksQuery, LeaksResponse},
    stack::LeafCaller,
    text::printable,
    Bytes, PageKind,
};

use crate::{args::LeaksArgs, workload_name, Client, ClientError};

/// Kernel frames shown per entry in the text output (the full stack is in --json).
const KERNEL_FRAMES_SHOWN: usize = 4;

pub async fn run(client: &Client, args: &LeaksArgs) -> Result<()> {
    if args.allocations {
        return crate::allocations::run(client, args).await;
    }
    // A pinned census can expire while a slow first symbolization runs: ask again once.
    match fetch(client, args).await {
        Err(e)
            if e.downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_gone) =>
        {
            fetch(client, args).await
        }
        result => result,
    }
}

async fn fetch(client: &Client, args: &LeaksArgs) -> Result<()> {
    let mut query = LeaksQuery {
        cgroup: args.cgroup.clone(),
        pod: args.pod.clone(),
        pid: args.pid,
        per_process: args.per_process,
        since: Some(args.since),
        top: usize::try_from(args.top).ok(),
        at: None,
    };
    let response = client.request::<Leaks>(&query).await?;
    // The profile and the flame graph describe the same census as the answer above.
    query.at = Some(response.taken_at_unix_ms);
    if let Some(path) = &args.pprof {
        let bytes = client.bytes::<LeaksPprof>(&query).await?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.flamegraph {
        let bytes = client.bytes::<LeaksFlamegraph>(&query).await?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print!("{}", render(&response, args.paths));
    }
    Ok(())
}

fn render(r: &LeaksResponse, paths: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} held by {} stacks (estimated from 1 page in {}); growth over the last {:.0} s{}",
        Bytes(r.held_bytes),
        r.matching_stacks,
        1u64 << r.sample_shift,
        r.window_seconds,
        if r.window_seconds + 1.0 < r.requested_window_seconds {
            format!(
                " (asked {:.0} s: history is shorter)",
                r.requested_window_seconds
            )
        } else {
            String::new()
        }
    );
    if r.overflow_stacks > 0 {
        let _ = writeln!(
            out,
            "{} small stacks merged into \"other stacks\" entries by the cap",
            r.overflow_stacks
        );
    }
    let _ = writeln!(out, "\nTop stacks by growth:");
    for (i, e) in r.by_growth.iter().enumerate() {
        entry(&mut out, i + 1, e, paths);
    }
    let _ = writeln!(out, "\nTop stacks by held bytes:");
    for (i, e) in r.by_held.iter().enumerate() {
        entry(&mut out, i + 1, e, paths);
    }
    out
}

/// `comm [pid]`, `comm [pid, exited]`, or for a stack several processes hold,
/// `comm [pid and 5 more processes]` (the largest holder named).
fn process(e: &LeakEntry) -> String {
    if e.pid == 0 {
        return String::new();
    }
    let more = match e.process_count.saturating_sub(1) {
        0 => String::new(),
        1 => " and 1 more process".to_string(),
        n => format!(" and {n} more processes"),
    };
    format!(
        "{} [{}{}{more}]",
        printable(&e.comm),
        e.pid,
        if e.process_alive { "" } else { ", exited" }
    )
}

pub(super) fn entry(out: &mut String, rank: usize, e: &LeakEntry, paths: bool) {
    let growth = if e.growth_bytes >= 0 {
        format!("+{}", Bytes(e.growth_bytes.unsigned_abs()))
    } else {
        format!("-{}", Bytes(e.growth_bytes.unsigned_abs()))
    };
    let _ = writeln!(
        out,
        "#{rank:<2} {growth} ({}/s)  held {} {}  {} allocations  {}  {}",
        Bytes(e.growth_bytes_per_second.max(0.0) as u64),
        Bytes(e.held_bytes),
        match e.kind {
            PageKind::Anon => "anon",
            PageKind::File => "file cache",
            PageKind::Kernel => "kernel",
        },
        e.objects,
        process(e),
        workload_name(e.pod.as_ref(), &e.cgroup, &e.cgroup, paths)
    );
    if e.other {
        let _ = writeln!(out, "      [other stacks]");
        return;
    }
    for frame in &e.user_stack {
        let location = match (&frame.file, frame.line) {
            (Some(f), Some(l)) => format!("  {}:{l}", f.rsplit('/').next().unwrap_or(f)),
            _ => frame
                .module
                .as_ref()
                .map(|m| format!("  ({m})"))
                .unwrap_or_default(),
        };
        let note = if frame.recovered {
            "  [caller recovered from the stack]"
        } else if frame.inlined {
            "  [inlined]"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "      {}{}{note}",
            printable(&frame.display_name()),
            printable(&location)
        );
    }
    match e.leaf_caller {
        Some(LeafCaller::MaybeMissing) => {
            let _ = writeln!(
                out,
                "      (the innermost function's caller may be missing: no unwind rule for it)"
            );
        }
        None if e.user_stack.is_empty() => {
            let _ = writeln!(out, "      (no user stack: kernel thread or interrupt)");
        }
        _ => {}
    }
    if e.truncated && !e.user_stack.is_empty() {
        let why = e
            .stack_stop
            .map_or_else(|| "see README".to_string(), |stop| stop.to_string());
        let _ = writeln!(out, "      ... (stack truncated: {why})");
    }
    if !e.kernel_stack.is_empty() {
        let names: Vec<String> = e
            .kernel_stack
            .iter()
            .take(KERNEL_FRAMES_SHOWN)
            .map(|f| f.display_name())
            .collect();
        let more = e.kernel_stack.len().saturating_sub(KERNEL_FRAMES_SHOWN);
        let _ = writeln!(
            out,
            "      kernel: {}{}",
            names.join(" < "),
            if more > 0 {
                format!(" < ... ({more} more)")
            } else {
                String::new()
            }
        );
    }
}
