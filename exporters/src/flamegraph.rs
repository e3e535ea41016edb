//! Leak entries as a flame graph SVG, drawn by inferno: one tower per stack, width = held bytes,
//! root = the process (the largest holder, with how many more hold the same stack), then its stack outermost first (the user stack; the kernel stack for
//! kernel threads, as in the pprof profile).

use inferno::flamegraph::{self, Options};

use memlens_types::{allocations::AllocationEntry, leaks::LeakEntry};

use crate::pprof::profile_frames;

/// Folded stacks (`a;b;c <bytes>`), the format inferno reads.
#[must_use]
pub fn folded(entries: &[LeakEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.held_bytes > 0)
        .map(|e| {
            let root = match e.process_count {
                0 | 1 => format!("{} [{}]", e.comm, e.pid),
                n => format!("{} [{} +{} processes]", e.comm, e.pid, n - 1),
            };
            let mut frames = vec![clean(&root)];
            if e.other {
                frames.push("[other stacks]".into());
            }
            let kernel = e.user_stack.is_empty();
            frames.extend(profile_frames(e).iter().rev().map(|f| {
                let name = clean(&f.display_name());
                if kernel {
                    format!("{name}_[k]")
                } else {
                    name
                }
            }));
            format!("{} {}", frames.join(";"), e.held_bytes)
        })
        .collect()
}

/// `;` separates frames and the last space the count: neither may appear in a frame.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(' ', "\u{a0}")
}

/// Folded stacks of allocation-profile entries: root = the process, width = bytes in use.
#[must_use]
pub fn folded_allocations(entries: &[AllocationEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.inuse_bytes > 0)
        .map(|e| {
            let mut frames = vec![clean(&format!("{} [{}]", e.comm, e.pid))];
            frames.extend(e.user_stack.iter().rev().map(|f| clean(&f.display_name())));
            format!("{} {}", frames.join(";"), e.inuse_bytes)
        })
        .collect()
}

/// Renders `entries` as an SVG flame graph.
pub fn svg(entries: &[LeakEntry], title: &str) -> Result<Vec<u8>, String> {
    render(&folded(entries), title)
}

/// Renders allocation-profile entries as an SVG flame graph of bytes in use.
pub fn allocations_svg(entries: &[AllocationEntry], title: &str) -> Result<Vec<u8>, String> {
    render(&folded_allocations(entries), title)
}

fn render(lines: &[String], title: &str) -> Result<Vec<u8>, String> {
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = "bytes".into();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
