//! Answers to leak queries: the matching stacks with held bytes, growth over a window, process
//! and symbolized frames.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use memlens_types::{
    leaks::{LeakEntry, ProcessHeld, MAX_ENTRY_PROCESSES},
    stack::Frame,
    MemcgId, PageKind,
};

use crate::{
    growth::GrowthHistory, symbols::SymbolCache, LeakKey, LeakView, ProcessKey, StackStop,
    UnwindMethod, OTHER,
};

/// Which stacks a query wants.
#[derive(Clone, Debug, Default)]
pub struct LeakFilter {
    /// Only these memory cgroups (None: all).
    pub memcgs: Option<HashSet<MemcgId>>,
    pub pid: Option<u32>,
    /// Keep each process's stacks apart instead of merging the same stack of several processes.
    pub per_process: bool,
}

/// One stack's held pages, live allocations and growth, in one process or merged over several.
#[derive(Clone, Debug)]
pub struct Row {
    /// The stack; its process is the one holding the most of it.
    pub key: LeakKey,
    pub pages: f64,
    pub objects: f64,
    pub growth: f64,
    /// Every process holding it, with its pages, the largest first.
    pub processes: Vec<(ProcessKey, f64)>,
}

/// Held bytes and growth of every matching stack, before symbolization.
pub struct Matched {
    pub window: Duration,
    pub rows: Vec<Row>,
}

/// The stacks of `view` that `filter` selects, with (pages, objects, growth pages) over `since`;
/// the same stack in several processes is one row unless `filter.per_process`.
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
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<LeakKey, usize> = HashMap::new();
    for (k, held) in &view.table.entries {
        if filter
            .memcgs
            .as_ref()
            .is_some_and(|m| !m.contains(&k.memcg))
            || filter.pid.is_some_and(|p| p != k.process.tgid)
        {
            continue;
        }
        let before = base.and_then(|b| b.pages(k)).unwrap_or(0.0);
        let growth = held.pages - before;
        let merge_key = if filter.per_process {
            *k
        } else {
            LeakKey {
                process: ProcessKey {
                    tgid: 0,
                    start_ns: 0,
                },
                ..*k
            }
        };
        match index.get(&merge_key) {
            Some(&i) => {
                let row = &mut rows[i];
                row.pages += held.pages;
                row.objects += held.objects;
                row.growth += growth;
                row.processes.push((k.process, held.pages));
            }
            None => {
                index.insert(merge_key, rows.len());
                rows.push(Row {
                    key: *k,
                    pages: held.pages,
                    objects: held.objects,
                    growth,
                    processes: vec![(k.process, held.pages)],
                });
            }
        }
    }
    for row in &mut rows {
        row.processes
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        row.key.process = row.processes[0].0;
    }
    Matched { window, rows }
}

/// Turns matched rows into symbolized entries.
pub fn entries(
    view: &LeakView,
    rows: &[Row],
    window: Duration,
    page_size: u64,
    cgroups: &HashMap<MemcgId, String>,
    symbols: &mut SymbolCache,
) -> Vec<LeakEntry> {
    rows.iter()
        .map(|row| {
            let (key, pages, objects, growth) = (row.key, row.pages, row.objects, row.growth);
            let other = key.user == OTHER;
            let process = view.processes.get(&key.process);
            let user = (!other).then(|| symbols.user(view, key.user)).flatten();
            let processes: Vec<ProcessHeld> = if other {
                Vec::new()
            } else {
                row.processes
                    .iter()
                    .map(|(p, pages)| ProcessHeld {
                        pid: p.tgid,
                        comm: view
                            .processes
                            .get(p)
                            .map(|i| i.comm.clone())
                            .unwrap_or_default(),
                        alive: view.alive.contains(p),
                        held_bytes: (pages * page_size as f64) as u64,
                    })
                    .collect()
            };
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
                pod: None,
                pid: key.process.tgid,
                comm: process.map(|p| p.comm.clone()).unwrap_or_default(),
                process_alive: view.alive.contains(&key.process),
                process_count: processes.len(),
                processes: if processes.len() > 1 {
                    processes
                } else {
                    Vec::new()
                },
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
                user_stack: match (&user, stack) {
                    (Some(u), Some(s)) => u.frames_in(s, process.map(AsRef::as_ref)),
                    _ => Vec::new(),
                },
                kernel_stack: kernel.map(|k| (*k).clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// What makes two entries the same code path once symbolized: cgroup, pid (when processes are
/// kept apart), page kind, "other", user frames (name and line), kernel frame names.
type MergeKey = (
    MemcgId,
    Option<u32>,
    PageKind,
    bool,
    Vec<(String, Option<u32>)>,
    Vec<String>,
);

/// Merges entries whose symbolized stacks are the same (same functions and lines), in the same
/// cgroup, page kind and, when `per_process`, process: the addresses differed, the code path does
/// not. Then lists at most `MAX_ENTRY_PROCESSES` processes per entry.
#[must_use]
pub fn merge(entries: Vec<LeakEntry>, per_process: bool) -> Vec<LeakEntry> {
    let mut merged: Vec<LeakEntry> = Vec::with_capacity(entries.len());
    let mut index: HashMap<MergeKey, usize> = HashMap::new();
    for entry in entries {
        let key = (
            entry.cgroup_id,
            per_process.then_some(entry.pid),
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
                merge_processes(into, &entry);
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
    for entry in &mut merged {
        entry.processes.truncate(MAX_ENTRY_PROCESSES);
    }
    merged
}

/// Adds `from`'s processes to `into`'s (before their bytes are summed), the largest holder
/// first; `into` names the largest.
fn merge_processes(into: &mut LeakEntry, from: &LeakEntry) {
    let listed = |e: &LeakEntry| -> Vec<ProcessHeld> {
        if e.processes.is_empty() && e.pid != 0 {
            vec![ProcessHeld {
                pid: e.pid,
                comm: e.comm.clone(),
                alive: e.process_alive,
                held_bytes: e.held_bytes,
            }]
        } else {
            e.processes.clone()
        }
    };
    let mut all = listed(into);
    for p in listed(from) {
        match all.iter_mut().find(|q| q.pid == p.pid) {
            Some(q) => q.held_bytes += p.held_bytes,
            None => all.push(p),
        }
    }
    all.sort_by(|a, b| b.held_bytes.cmp(&a.held_bytes).then(a.pid.cmp(&b.pid)));
    if let Some(top) = all.first() {
        into.pid = top.pid;
        into.comm.clone_from(&top.comm);
        into.process_alive = top.alive;
    }
    into.process_count = all.len();
    into.processes = if all.len() > 1 { all } else { Vec::new() };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of one process whose stack is `alloc_node <- main` (as symbolized).
    fn entry(pid: u32, held_bytes: u64) -> LeakEntry {
        let frame = |name: &str, line| Frame {
            addr: 0x1000 + u64::from(pid),
            function: Some(name.into()),
            module: Some("deepleak".into()),
            module_offset: Some(0x1000),
            file: Some("deepleak.c".into()),
            line: Some(line),
            inlined: false,
            recovered: false,
        };
        LeakEntry {
            cgroup_id: MemcgId(7),
            cgroup: "/workers".into(),
            pod: None,
            pid,
            comm: format!("worker{pid}"),
            process_alive: true,
            process_count: 1,
            processes: Vec::new(),
            kind: PageKind::Anon,
            held_bytes,
            objects: 1,
            growth_bytes: 0,
            growth_bytes_per_second: 0.0,
            other: false,
            leaf_caller: None,
            unwound_by: Some(UnwindMethod::UnwindTables),
            stack_stop: None,
            truncated: false,
            user_stack: vec![frame("alloc_node", 31), frame("main", 90)],
            kernel_stack: Vec::new(),
        }
    }

    #[test]
    fn one_stack_in_several_processes_is_one_entry_naming_the_largest_holder() {
        let merged = merge(vec![entry(10, 100), entry(11, 300), entry(10, 50)], false);
        assert_eq!(merged.len(), 1);
        let e = &merged[0];
        assert_eq!((e.held_bytes, e.pid, e.process_count), (450, 11, 2));
        let shares: Vec<(u32, u64)> = e.processes.iter().map(|p| (p.pid, p.held_bytes)).collect();
        assert_eq!(shares, [(11, 300), (10, 150)]);
        assert_eq!(e.comm, "worker11");

        let apart = merge(vec![entry(10, 100), entry(11, 300), entry(10, 50)], true);
        assert_eq!(apart.len(), 2);
        assert!(apart
            .iter()
            .all(|e| e.process_count == 1 && e.processes.is_empty()));

        let many: Vec<LeakEntry> = (1..=40).map(|pid| entry(pid, u64::from(pid))).collect();
        let merged = merge(many, false);
        assert_eq!(merged[0].process_count, 40);
        assert_eq!(merged[0].processes.len(), MAX_ENTRY_PROCESSES);
        assert_eq!(merged[0].processes[0].pid, 40);
    }
}
