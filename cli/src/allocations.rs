//! `memlens leaks --allocations`: the processes' own allocation profiles (the Go runtime's heap
//! profile), or with `--for` a trace of their allocator, beside the page-level answer for the
//! same processes, so that where an allocator's reuse of freed memory makes them disagree, both
//! are in view.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use memlens_types::{
    allocations::{
        AllocationEntry, AllocationSource, AllocationsQuery, AllocationsResponse, TraceEnd,
        TraceRequest, TraceState, TraceStatus,
    },
    api::{
        Allocations, AllocationsFlamegraph, AllocationsPprof, Leaks, TraceById, TraceStop, Traces,
    },
    leaks::{LeaksQuery, LeaksResponse},
    text::printable,
    Bytes,
};

use crate::{args::LeaksArgs, Client};

/// Page-level stacks shown beside the allocations.
const PAGE_STACKS_SHOWN: usize = 3;
/// Named frames shown per page-level stack.
const PAGE_FRAMES_SHOWN: usize = 4;

/// Whether every process of `answer` has a profile of its own (Go programs): no trace needed.
fn all_profiled(answer: &AllocationsResponse) -> bool {
    !answer.processes.is_empty()
        && answer
            .processes
            .iter()
            .all(|p| p.source == Some(AllocationSource::GoRuntime))
}

pub async fn run(client: &Client, args: &LeaksArgs) -> Result<()> {
    let own_profiles = AllocationsQuery {
        pid: args.pid,
        cgroup: args.cgroup.clone(),
        pod: args.pod.clone(),
        trace: None,
        top: usize::try_from(args.top).ok(),
    };
    let trace = match (args.trace_for, args.trace_id) {
        (Some(window), _) => {
            // Go programs' runtimes keep a profile: it answers at once, without a trace.
            let profiled = client.request::<Allocations>(&own_profiles).await?;
            if all_profiled(&profiled) {
                eprintln!(
                    "no trace needed: every process keeps a heap profile of its own (Go), read \
                     now"
                );
                None
            } else {
                Some(trace(client, args, window).await?)
            }
        }
        (None, Some(id)) => Some(client.by_id::<TraceById>(id).await?),
        (None, None) => None,
    };
    let mut query = match &trace {
        Some(status) => AllocationsQuery {
            trace: Some(status.id),
            top: usize::try_from(args.top).ok(),
            ..AllocationsQuery::default()
        },
        None => own_profiles,
    };
    let allocations = client.request::<Allocations>(&query).await?;
    // Exports carry every stack of the profiles.
    query.top = None;
    if let Some(path) = &args.pprof {
        let bytes = client.bytes::<AllocationsPprof>(&query).await?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.flamegraph {
        let bytes = client.bytes::<AllocationsFlamegraph>(&query).await?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // The page-level answer is context: without it the allocations still stand.
    let pages = client
        .request::<Leaks>(&LeaksQuery {
            cgroup: args.cgroup.clone(),
            pod: args.pod.clone(),
            pid: args.pid,
            since: Some(args.since),
            top: Some(PAGE_STACKS_SHOWN),
            ..LeaksQuery::default()
        })
        .await
        .ok();
    if args.json {
        let both =
            serde_json::json!({ "allocations": allocations, "pages": pages, "trace": trace });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        if let Some(status) = &trace {
            print!("{}", trace_summary(status));
        }
        print!("{}", render(&allocations, pages.as_ref()));
    }
    Ok(())
}

/// Runs a trace for `window`, showing its cost on stderr once a second; Ctrl-C stops it early
/// (its results are kept).
async fn trace(client: &Client, args: &LeaksArgs, window: Duration) -> Result<TraceStatus> {
    let mut status = client
        .request::<Traces>(&TraceRequest {
            pid: args.pid,
            cgroup: args.cgroup.clone(),
            pod: args.pod.clone(),
            seconds: Some(window.as_secs_f64()),
            sample_bytes: Some(args.sample_bytes),
            budget_cpus: Some(args.budget),
        })
        .await
        .context("cannot start the trace")?;
    eprintln!(
        "trace {}: {} for {:.0} s; each allocating call costs {:.2} us more while traced, each free {:.2} us (measured now); stops itself past {:.2} CPUs",
        status.id,
        traced_processes(&status),
        status.seconds,
        status.alloc_call_cost_us,
        status.free_call_cost_us,
        status.budget_cpus
    );
    let mut interrupted = false;
    while status.state == TraceState::Running {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                eprintln!("stopping the trace");
                client.by_id::<TraceStop>(status.id).await?;
            }
        }
        status = client.by_id::<TraceById>(status.id).await?;
        eprintln!(
            "  {:>5.1} s of {:.0}: {:.0} calls/s x cost = {:.2} CPUs; {} samples",
            status.elapsed_seconds,
            status.seconds,
            status.calls_per_second,
            status.cost_cpus,
            status.samples
        );
    }
    Ok(status)
}

fn traced_processes(status: &TraceStatus) -> String {
    let traced: Vec<String> = status
        .processes
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| {
            format!(
                "{} [{}] ({})",
                printable(&p.comm),
                p.pid,
                p.allocator.as_deref().unwrap_or("?")
            )
        })
        .collect();
    traced.join(", ")
}

/// What a finished trace did and cost.
fn trace_summary(s: &TraceStatus) -> String {
    let mut out = String::new();
    let end = match s.end {
        Some(TraceEnd::Completed) | None => "its window ended",
        Some(TraceEnd::Stopped) => "stopped on request",
        Some(TraceEnd::ProcessesExited) => "every traced process exited",
        Some(TraceEnd::OverBudget) => "its cost went past the budget",
        Some(TraceEnd::AgentStopping) => "the agent stopped",
    };
    let _ = writeln!(
        out,
        "Trace {}: {:.1} s of {:.0} ({end}); {} allocating and {} freeing calls; cost {:.2} CPUs on average ({:.2} us per allocating call, {:.2} us per free); {} samples (1 per {} allocated on average), {} of them freed",
        s.id,
        s.elapsed_seconds,
        s.seconds,
        s.alloc_calls,
        s.free_calls,
        s.mean_cost_cpus,
        s.alloc_call_cost_us,
        s.free_call_cost_us,
        s.samples,
        Bytes(s.sample_bytes),
        s.sampled_frees
    );
    for p in &s.processes {
        if let Some(why) = &p.error {
            let _ = writeln!(
                out,
                "  {} [{}] not traced: {}",
                printable(&p.comm),
                p.pid,
                printable(why)
            );
        }
    }
    let lost = s.lost_ring_full + s.lost_live_full + s.dropped_samples;
    if lost > 0 || s.stack_copy_errors > 0 {
        let _ = writeln!(
            out,
            "  samples lost: {} (event buffer full), {} (block table full), {} (agent bounds); {}              without a stack",
            s.lost_ring_full, s.lost_live_full, s.dropped_samples, s.stack_copy_errors
        );
    }
    out
}

/// One stack of an allocation profile, with its frames.
pub(super) fn entry(out: &mut String, rank: usize, e: &AllocationEntry) {
    let _ = writeln!(
        out,
        "#{rank:<2} in use {}  {} objects  ({} allocated)  {} [{}]",
        Bytes(e.inuse_bytes),
        e.inuse_objects,
        Bytes(e.alloc_bytes),
        printable(&e.comm),
        e.pid
    );
    for frame in &e.user_stack {
        let location = match (&frame.file, frame.line) {
            (Some(f), Some(l)) => format!("  {}:{l}", f.rsplit('/').next().unwrap_or(f)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "      {}{}{}",
            printable(&frame.display_name()),
            printable(&location),
            if frame.inlined { "  [inlined]" } else { "" }
        );
    }
}

fn render(r: &AllocationsResponse, pages: Option<&LeaksResponse>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Allocation profiles:");
    for p in &r.processes {
        let who = format!("{} [{}]", printable(&p.comm), p.pid);
        match (&p.source, &p.error) {
            (Some(AllocationSource::GoRuntime), _) => {
                let _ = writeln!(
                    out,
                    "  {who}  Go runtime heap profile (one sample per {} allocated, as of the last \
                     garbage collection): {} in use in {} objects, {} allocated since start; {} \
                     stacks read in {:.1} ms",
                    Bytes(p.sample_rate_bytes),
                    Bytes(p.inuse_bytes),
                    p.inuse_objects,
                    Bytes(p.alloc_bytes),
                    p.stacks,
                    p.read_seconds * 1000.0
                );
            }
            (Some(AllocationSource::AllocatorTrace), _) => {
                let _ = writeln!(
                    out,
                    "  {who}  allocator trace (one sample per {} allocated): {} allocated in the window in {} objects, {} of it still held in {} objects",
                    Bytes(p.sample_rate_bytes),
                    Bytes(p.alloc_bytes),
                    p.alloc_objects,
                    Bytes(p.inuse_bytes),
                    p.inuse_objects
                );
            }
            (_, Some(why)) => {
                let _ = writeln!(out, "  {who}  no profile: {}", printable(why));
            }
            (None, None) => {
                let _ = writeln!(out, "  {who}  no profile");
            }
        }
    }
    if r.processes_left_out > 0 {
        let _ = writeln!(
            out,
            "  ({} more processes not read: the largest are read first)",
            r.processes_left_out
        );
    }
    let _ = writeln!(out, "\nTop stacks by bytes in use (from the allocations):");
    for (i, e) in r.by_inuse.iter().enumerate() {
        entry(&mut out, i + 1, e);
    }
    if let Some(pages) = pages {
        let _ = writeln!(
            out,
            "\nThe page-level answer for the same processes (the code that first touched each \
             page; an allocator that reuses freed memory makes it name other code):"
        );
        for (i, e) in pages.by_held.iter().enumerate() {
            let names: Vec<String> = e
                .user_stack
                .iter()
                .filter_map(|f| f.function.as_deref())
                .take(PAGE_FRAMES_SHOWN)
                .map(|f| printable(f).into_owned())
                .collect();
            let _ = writeln!(
                out,
                "#{:<2} held {}  {} [{}]  {}",
                i + 1,
                Bytes(e.held_bytes),
                printable(&e.comm),
                e.pid,
                if names.is_empty() {
                    "[no user stack]".to_string()
                } else {
                    names.join(" < ")
                }
            );
        }
    }
    out
}
