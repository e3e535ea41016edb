//! Leak attribution: estimated bytes held per (memory cgroup, process, kernel stack, user stack),
//! from each page census, kept over time so growth per stack is known.
//!
//! A sampled frame stands for `2^shift` pages; an allocation of order `o` counts as
//! `2^(shift - o)` objects (its Horvitz-Thompson weight), so `objects` estimates how many
//! allocations are live, whatever their size.

pub mod allocations;
pub mod file_cache;
pub mod file_names;
pub mod growth;
pub mod query;
pub mod report;
pub mod symbol_service;
pub mod symbols;
mod update;
mod user_stacks;
pub mod view;

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use memlens_model::StackTable;
use memlens_procfs::{maps, Mapping};
use memlens_symbolize::{
    leaf::{LeafResolver, LeafRule},
    tables::SharedModuleFiles,
};
pub use memlens_types::stack::{LeafCaller, StackStop, UnwindMethod};
use memlens_types::{MemcgId, PageKind};
pub use user_stacks::{CodeLocation, UserFrame, UserStack};

/// Hash tables keyed by our own ids (pids, stack keys, signatures): hashed once per held frame
/// each census, where SipHash took a fifth of the refresh on a large host.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;
type FastSet<T> = foldhash::HashSet<T>;
pub use view::{View, Views};

/// Signature of the stacks merged into a cgroup's "other" entry once the table is full.
pub const OTHER: u64 = 0;
/// Signature of "no stack" (a kernel thread has no user stack; a failed capture).
pub const NONE: u64 = 1;

/// A process over time: pids are reused, so the start time is part of its identity. `start_ns`
/// is 0 when the allocating process was gone before the agent could look at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub tgid: u32,
    pub start_ns: u64,
}

/// What one leak-table entry counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeakKey {
    pub memcg: MemcgId,
    pub process: ProcessKey,
    /// Anonymous memory (a leak candidate), page cache, or kernel memory.
    pub kind: PageKind,
    /// Signature of the kernel stack (`OTHER`, `NONE` or a hash of its addresses).
    pub kernel: u64,
    /// Signature of the user stack, after leaf recovery, by where its code is in its files:
    /// the same for the same code path in every process of one binary.
    pub user: u64,
}

/// Estimated pages and live allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Held {
    pub pages: f64,
    pub objects: f64,
}

impl Held {
    fn add(&mut self, other: Held) {
        self.pages += other.pages;
        self.objects += other.objects;
    }
}

/// One census, aggregated by stack.
#[derive(Clone, Debug, Default)]
pub struct LeakTable {
    pub taken_at_unix_ms: u64,
    pub shift: u32,
    pub entries: FastMap<LeakKey, Held>,
    /// Distinct stacks merged into their cgroup's "other" entry because of the cap.
    pub overflow_keys: u64,
}

/// What was known of a process when its pages were seen.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub key: ProcessKey,
    pub comm: String,
    pub maps: Vec<Mapping>,
}

/// One census' table and everything it refers to: what queries read.
#[derive(Clone, Debug, Default)]
pub struct LeakView {
    pub table: LeakTable,
    pub user_stacks: HashMap<u64, Arc<UserStack>>,
    /// For each user stack, a process that has it (one still running, if any), to symbolize
    /// it through: processes of one binary share their stacks.
    pub symbolize_via: HashMap<u64, ProcessKey>,
    pub kernel_stacks: HashMap<u64, Arc<[u64]>>,
    pub processes: HashMap<ProcessKey, Arc<ProcessInfo>>,
    /// Processes still running at this census.
    pub alive: HashSet<ProcessKey>,
}

/// Turns censuses into leak tables; owned by the agent's refresh thread.
pub struct Attribution {
    max_keys: usize,
    /// Stack map contents by key (a key names one stack; kept until the collector deletes it).
    stack_ips: FastMap<u64, Arc<[u64]>>,
    /// The latest process seen with each pid.
    processes: FastMap<u32, Arc<ProcessInfo>>,
    leaf: LeafResolver,
    leaf_rules: FastMap<(ProcessKey, u64), LeafRule>,
    user_stacks: HashMap<u64, Arc<UserStack>>,
    /// The frames of `user_stacks`, each kept once (see [`UserStack::frames`]).
    frames: FastSet<Arc<UserFrame>>,
    /// The signature each process's stacks (by address signature) were interned under.
    located: FastMap<(ProcessKey, u64), u64>,
    kernel_stacks: FastMap<u64, Arc<[u64]>>,
    /// When each process's mappings were last re-read for an address outside them.
    remapped: FastMap<ProcessKey, Instant>,
    /// What the last census's held frames were attributed to, in superblock order.
    memo: Vec<(u64, update::FrameMemo)>,
    /// Distinct keys of the last census before the cap: the next one's table is made that large
    /// at once rather than doubled into (each doubling holds the old and the new table).
    last_keys: usize,
}

/// A process's mappings are re-read at most this often for addresses outside them (code it
/// loaded after it was first seen: dlopen, plugins).
const REMAP_INTERVAL: Duration = Duration::from_secs(1);

impl Attribution {
    /// Keeps at most `max_keys` stacks per census; reads binaries' unwind tables (for leaf
    /// rules) through `tables`, the cache the unwinder reads too.
    #[must_use]
    pub fn new(max_keys: usize, tables: SharedModuleFiles) -> Attribution {
        Attribution {
            max_keys,
            stack_ips: FastMap::default(),
            processes: FastMap::default(),
            leaf: LeafResolver::new(tables),
            leaf_rules: FastMap::default(),
            user_stacks: HashMap::new(),
            frames: FastSet::default(),
            located: FastMap::default(),
            kernel_stacks: FastMap::default(),
            remapped: FastMap::default(),
            memo: Vec::new(),
            last_keys: 0,
        }
    }

    /// Stacks the collector deleted from the kernel's map.
    pub fn forget_stacks(&mut self, keys: &[u64]) {
        for key in keys {
            self.stack_ips.remove(key);
        }
    }

    /// The stack with map id `id`, read once and then cached.
    fn stack(&mut self, stacks: &dyn StackTable, key: u64) -> Option<Arc<[u64]>> {
        if key == 0 {
            return None;
        }
        if let Some(ips) = self.stack_ips.get(&key) {
            return Some(Arc::clone(ips));
        }
        let ips: Arc<[u64]> = stacks.addresses(key)?.into();
        if ips.is_empty() {
            return None;
        }
        self.stack_ips.insert(key, Arc::clone(&ips));
        Some(ips)
    }

    /// The process that allocated at `ts_ns` with pid `tgid`, and whether it still runs.
    fn process(&mut self, tgid: u32, ts_ns: u64, comm: &[u8; 16]) -> (Arc<ProcessInfo>, bool) {
        const SLACK_NS: u64 = 1_000_000_000;
        let known = self.processes.get(&tgid).cloned();
        match memlens_procfs::start_time_ns(tgid) {
            // The running process with this pid is the one that allocated.
            Ok(start) if start <= ts_ns.saturating_add(SLACK_NS) => {
                if let Some(p) = known.filter(|p| p.key.start_ns == start) {
                    return (p, true);
                }
                let info = Arc::new(ProcessInfo {
                    key: ProcessKey {
                        tgid,
                        start_ns: start,
                    },
                    comm: memlens_procfs::process::comm(tgid).unwrap_or_else(|| comm_string(comm)),
                    maps: code_maps(tgid).unwrap_or_default(),
                });
                self.processes.insert(tgid, Arc::clone(&info));
                (info, true)
            }
            // Gone (or its pid now belongs to a newer process): what we knew, if anything.
            _ => {
                if let Some(p) = known.filter(|p| {
                    p.key.start_ns != 0 && p.key.start_ns <= ts_ns.saturating_add(SLACK_NS)
                }) {
                    return (p, false);
                }
                let info = Arc::new(ProcessInfo {
                    key: ProcessKey { tgid, start_ns: 0 },
                    comm: comm_string(comm),
                    maps: Vec::new(),
                });
                self.processes.insert(tgid, Arc::clone(&info));
                (info, false)
            }
        }
    }

    /// `process` with its mappings read again, unless that was done within `REMAP_INTERVAL`.
    fn remap(&mut self, process: &ProcessInfo) -> Option<Arc<ProcessInfo>> {
        if self
            .remapped
            .get(&process.key)
            .is_some_and(|t| t.elapsed() < REMAP_INTERVAL)
        {
            return None;
        }
        self.remapped.insert(process.key, Instant::now());
        let fresh = Arc::new(ProcessInfo {
            key: process.key,
            comm: process.comm.clone(),
            maps: code_maps(process.key.tgid).ok()?,
        });
        self.processes.insert(process.key.tgid, Arc::clone(&fresh));
        Some(fresh)
    }
}

/// The executable mappings of process `tgid`: stacks' frames are in code, and a busy node's
/// thousands of processes each map dozens of data regions and libraries' data segments.
fn code_maps(tgid: u32) -> std::io::Result<Vec<Mapping>> {
    let mut all = maps::read_maps(tgid)?;
    all.retain(|m| m.executable);
    all.shrink_to_fit();
    Ok(all)
}

/// A stack's signature; `OTHER` and `NONE` are never produced.
fn signature<K: Hash>(keys: impl IntoIterator<Item = K>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for key in keys {
        key.hash(&mut hasher);
    }
    hasher.finish().max(NONE + 1)
}

fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use memlens_symbolize::StackAddr;

    use super::*;

    #[test]
    fn signatures_avoid_the_reserved_values_and_see_recovery() {
        let a = [StackAddr {
            addr: 1,
            return_address: false,
            recovered: false,
        }];
        let b = [StackAddr {
            addr: 1,
            return_address: false,
            recovered: true,
        }];
        let (sa, sb) = (
            signature(a.iter().map(|x| (x.addr, x.recovered))),
            signature(b.iter().map(|x| (x.addr, x.recovered))),
        );
        assert!(sa > NONE && sb > NONE);
        assert_ne!(sa, sb);
        assert_eq!(comm_string(b"leak\0\0\0\0\0\0\0\0\0\0\0\0"), "leak");
    }
}

#[cfg(test)]
mod update_tests;
