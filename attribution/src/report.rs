//! Answers to leak queries: the matching stacks with held bytes, growth over a window, process
//! and symbolized frames.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use memlens_types::{leaks::LeakEntry, stack::Frame, MemcgId, PageKind};

use crate::{
    growth::GrowthHistory, symbols::SymbolCache, LeakKey, LeakView, StackStop, UnwindMethod, OTHER,
};

/// Which stacks a query wants.
#[derive(Clone, Debug, Default)]
pub struct LeakFilter {
    /// Only these memory cgroups (None: all).
    pub memcgs: Option<HashSet<MemcgId>>,
    pub pid: Option<u32>,
}

/// Held bytes and growth of every matching stack, before symbolization.
pub struct Matched {
    pub window: Duration,
    pub rows: Vec<(LeakKey, f64, f64, f64)>,
}

/// The stacks of `view` that `filter` selects, with (pages, objects, growth pages) over `since`.
#[must_use]
pub fn matching(
    view: &LeakView,
    history: &GrowthHistory,
    filter: &LeakFilter,
    since: Duration,
) -> Matched {
    let now = view.table.taken_at_unix_ms;
    let start = now.saturating_sub(since.as_millis() as u64);
    let base = history.at(start);
    let window = Duration::from_millis(now.saturating_sub(base.map_or(now, |b| b.unix_ms)));
    let rows = view
        .table
        .entries
        .iter()
        .filter(|(k, _)| filter.memcgs.as_ref().is_none_or(|m| m.contains(&k.memcg)))
        .filter(|(k, _)| filter.pid.is_none_or(|p| p == k.process.tgid))
        .map(|(k, held)| {
            let before = base.and_then(|b| b.pages.get(k)).copied().unwrap_or(0.0);
            (*k, held.pages, held.objects, held.pages - before)
        })
        .collect();
    Matched { window, rows }
}

/// Turns matched rows into symbolized entries.
pub fn entries(
    view: &LeakView,
    rows: &[(LeakKey, f64, f64, f64)],
    window: Duration,
    page_size: u64,
    cgroups: &HashMap<MemcgId, String>,
    symbols: &mut SymbolCache,
) -> Vec<LeakEntry> {
    rows.iter()
        .map(|&(key, pages, objects, growth)| {
            let other = key.user == OTHER;
            let process = view.processes.get(&key.process);
            let user = (!other)
                .then(|| symbols.user(view, key.process, key.user))
                .flatten();
            let kernel = (!other).then(|| symbols.kernel(view, key.kernel)).flatten();
            let stack = view.user_stacks.get(&key.user);
            // A stack that ends at a program's or thread's entry is whole, whatever the
            // unwinder made of the entry's caller; else an unwound stack says why it stopped,
            // and a frame-pointer stack was cut by a frame without a frame pointer.
            let stack_stop = match (stack, &user) {
                (_, Some(u)) if !u.truncated => None,
                (Some(s), _) if s.method != UnwindMethod::FramePointers || s.stop.is_some() => {
                    s.stop
                }
                (_, Some(_)) => Some(StackStop::FramePointerChain),
                _ => None,
            };
            let truncated = stack_stop.is_some();
            let growth_bytes = (growth * page_size as f64) as i64;
            LeakEntry {
                cgroup_id: key.memcg,
                cgroup: cgroups
                    .get(&key.memcg)
                    .cloned()
                    .unwrap_or_else(|| format!("memcg {}", key.memcg)),
                pid: key.process.tgid,
                comm: process.map(|p| p.comm.clone()).unwrap_or_default(),
                process_alive: view.alive.contains(&key.process),
                kind: key.kind,
                held_bytes: (pages * page_size as f64) as u64,
                objects: objects.round() as u64,
                growth_bytes,
                growth_bytes_per_second: if window.is_zero() {
                    0.0
                } else {
                    growth_bytes as f64 / window.as_secs_f64()
                },
                other,
                leaf_caller: stack.and_then(|s| s.leaf),
                unwound_by: stack.map(|s| s.method),
                stack_stop,
                truncated,
                user_stack: user.map(|u| u.frames.clone()).unwrap_or_default(),
                kernel_stack: kernel.map(|k| (*k).clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// What makes two entries the same code path once symbolized: cgroup, pid, page kind, "other",
/// user frames (name and line), kernel frame names.
type MergeKey = (
    MemcgId,
    u32,
    PageKind,
    bool,
    Vec<(String, Option<u32>)>,
    Vec<String>,
);

/// Merges entries whose symbolized stacks are the same (same functions and lines), in the same
/// cgroup, process and page kind: the addresses differed, the code path does not.
#[must_use]
pub fn merge(entries: Vec<LeakEntry>) -> Vec<LeakEntry> {
    let mut merged: Vec<LeakEntry> = Vec::with_capacity(entries.len());
    let mut index: HashMap<MergeKey, usize> = HashMap::new();
    for entry in entries {
        let key = (
            entry.cgroup_id,
            entry.pid,
            entry.kind,
            entry.other,
            entry
                .user_stack
                .iter()
                .map(|f| (f.display_name(), f.line))
                .collect(),
            entry.kernel_stack.iter().map(Frame::display_name).collect(),
        );
        match index.get(&key) {
            Some(&i) => {
                let into = &mut merged[i];
                into.held_bytes += entry.held_bytes;
                into.objects += entry.objects;
                into.growth_bytes += entry.growth_bytes;
                into.growth_bytes_per_second += entry.growth_bytes_per_second;
            }
            None => {
                index.insert(key, merged.len());
                merged.push(entry);
            }
        }
    }
    merged
}
