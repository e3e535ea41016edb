//! `memlens leaks --allocations`: the processes' own allocation profiles (the Go runtime's heap
//! profile), beside the page-level answer for the same processes, so that where an allocator's
//! reuse of freed memory makes them disagree, both are in view.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use memlens_types::{
    allocations::{AllocationEntry, AllocationSource, AllocationsQuery, AllocationsResponse},
    api::{Allocations, AllocationsFlamegraph, AllocationsPprof, Leaks},
    leaks::{LeaksQuery, LeaksResponse},
    text::printable,
    Bytes,
};

use crate::{args::LeaksArgs, Client};

/// Page-level stacks shown beside the allocations.
const PAGE_STACKS_SHOWN: usize = 3;
/// Named frames shown per page-level stack.
const PAGE_FRAMES_SHOWN: usize = 4;

pub async fn run(client: &Client, args: &LeaksArgs) -> Result<()> {
    let mut query = AllocationsQuery {
        pid: args.pid,
        cgroup: args.cgroup.clone(),
        pod: args.pod.clone(),
        top: usize::try_from(args.top).ok(),
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
        let both = serde_json::json!({ "allocations": allocations, "pages": pages });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        print!("{}", render(&allocations, pages.as_ref()));
    }
    Ok(())
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
