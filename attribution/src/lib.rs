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
mod user_stacks;
pub mod view;

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use memlens_model::{
    census::{AllocRecords, Census},
    user_stack::UnwoundStacks,
    StackTable,
};
use memlens_procfs::{maps, Mapping};
use memlens_symbolize::leaf::{LeafResolver, LeafRule};
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
    memo: Vec<(u64, FrameMemo)>,
}

/// What one held frame's allocation was attributed to: the next census takes it as it is while
/// the frame holds the same allocation (most frames, census after census), instead of placing its
/// stacks again (hashing every address of both stacks, for each of a million frames on a large
/// host).
#[derive(Clone, Copy, Debug)]
struct FrameMemo {
    /// The allocation (the record's time and thread).
    ts_ns: u64,
    pid: u32,
    /// Signature of its kernel stack (`NONE`: none).
    kernel: u64,
    /// Address signature of its user stack in its process (`NONE`: none).
    by_address: u64,
    /// Whether that stack is the unwound copy (else the frame-pointer walk, or none).
    unwound: bool,
}

/// A process's mappings are re-read at most this often for addresses outside them (code it
/// loaded after it was first seen: dlopen, plugins).
const REMAP_INTERVAL: Duration = Duration::from_secs(1);

impl Attribution {
    #[must_use]
    pub fn new(max_keys: usize) -> Attribution {
        Attribution {
            max_keys,
            stack_ips: FastMap::default(),
            processes: FastMap::default(),
            leaf: LeafResolver::default(),
            leaf_rules: FastMap::default(),
            user_stacks: HashMap::new(),
            frames: FastSet::default(),
            located: FastMap::default(),
            kernel_stacks: FastMap::default(),
            remapped: FastMap::default(),
            memo: Vec::new(),
        }
    }

    /// Stacks the collector deleted from the kernel's map.
    pub fn forget_stacks(&mut self, keys: &[u64]) {
        for key in keys {
            self.stack_ips.remove(key);
        }
    }

    /// Aggregates one census; a record's user stack is its unwound one when `unwound` has it,
    /// else the kernel's frame-pointer walk. A frame whose record `records` no longer has (it
    /// was allocated again since the census read it) is left out.
    pub fn update(
        &mut self,
        census: &Census,
        records: &dyn AllocRecords,
        stacks: &dyn StackTable,
        unwound: &dyn UnwoundStacks,
        unix_ms: u64,
    ) -> LeakView {
        let weight = f64::from(1u32 << census.shift.min(31));
        let mut view = LeakView::default();
        let mut checked: FastMap<u32, (Arc<ProcessInfo>, bool)> = FastMap::default();
        let mut entries: FastMap<LeakKey, Held> = FastMap::default();
        let mut via: FastMap<u64, ProcessKey> = FastMap::default();
        // The census lists its frames in superblock order, and so does the memo it leaves: the
        // last census's memo is walked alongside (no hashing, a million frames on a large host).
        let mut memo = Vec::with_capacity(census.tracked.len());
        let last_memo = std::mem::take(&mut self.memo);
        let mut last_memo = last_memo.iter().peekable();
        for frame in &census.tracked {
            let Some(record) = records.record_of(frame) else {
                continue;
            };
            let record = &record;
            let (mut process, alive) = checked
                .entry(record.tgid)
                .or_insert_with(|| self.process(record.tgid, record.ts_ns, &record.comm))
                .clone();
            // What the last census made of this allocation, if the frame still holds it.
            let last = std::iter::from_fn(|| last_memo.next_if(|(s, _)| *s <= frame.superblock))
                .last()
                .filter(|(s, m)| {
                    *s == frame.superblock && m.ts_ns == record.ts_ns && m.pid == record.pid
                })
                .map(|(_, m)| *m);
            let kernel = match last {
                Some(m) if m.kernel == NONE || self.kernel_stacks.contains_key(&m.kernel) => {
                    m.kernel
                }
                _ => self.stack(stacks, record.kernel_stack).map_or(NONE, |ips| {
                    let sig = signature(ips.iter().map(|a| (*a, false)));
                    self.kernel_stacks.entry(sig).or_insert(ips);
                    sig
                }),
            };
            // A stack from the frame-pointer walk gives way to the copy once that is unwound.
            let copy = match last {
                Some(m) if m.unwound => None,
                _ => unwound.unwound(frame.superblock, record.pid, record.ts_ns),
            };
            let last = last.filter(|m| m.unwound || copy.is_none());
            let placed = last.and_then(|m| match m.by_address {
                NONE => Some((NONE, m)),
                by_address => self.placed(process.key, by_address).map(|sig| (sig, m)),
            });
            let user = match placed {
                Some((user, m)) => {
                    memo.push((frame.superblock, FrameMemo { kernel, ..m }));
                    user
                }
                None => {
                    let copy = copy
                        .or_else(|| unwound.unwound(frame.superblock, record.pid, record.ts_ns));
                    let unwound = copy.is_some();
                    let raw = match copy {
                        Some(stack) => Some(Attribution::unwound_stack(&stack)),
                        None => self
                            .stack(stacks, record.user_stack)
                            .map(|ips| self.walked_stack(&process, alive, &ips, record)),
                    };
                    let (user, by_address) = match raw {
                        None => (NONE, NONE),
                        Some(raw) => {
                            let by_address = raw.address_signature();
                            let user = match self.placed(process.key, by_address) {
                                Some(sig) => sig,
                                None => {
                                    if alive && raw.outside(&process.maps) {
                                        if let Some(fresh) = self.remap(&process) {
                                            checked.insert(record.tgid, (Arc::clone(&fresh), true));
                                            process = fresh;
                                        }
                                    }
                                    self.intern(&process, by_address, raw)
                                }
                            };
                            (user, by_address)
                        }
                    };
                    memo.push((
                        frame.superblock,
                        FrameMemo {
                            ts_ns: record.ts_ns,
                            pid: record.pid,
                            kernel,
                            by_address,
                            unwound,
                        },
                    ));
                    user
                }
            };
            // Symbolized through a process that still runs, if one has the stack.
            if alive {
                via.insert(user, process.key);
            } else {
                via.entry(user).or_insert(process.key);
            }
            let key = LeakKey {
                memcg: frame.memcg,
                process: process.key,
                kind: frame.kind,
                kernel,
                user,
            };
            let order = i32::from(record.order.min(30));
            let objects = weight * 2f64.powi(-order);
            entries.entry(key).or_default().add(Held {
                pages: weight,
                objects,
            });
        }
        self.memo = memo;
        for (process, alive) in checked.into_values() {
            if alive {
                view.alive.insert(process.key);
            }
            view.processes.entry(process.key).or_insert(process);
        }
        let overflow_keys = cap(&mut entries, self.max_keys);
        for key in entries.keys() {
            if let Some(s) = self.user_stacks.get(&key.user) {
                view.user_stacks.insert(key.user, Arc::clone(s));
                if let Some(&p) = via.get(&key.user) {
                    view.symbolize_via.insert(key.user, p);
                }
            }
            if let Some(s) = self.kernel_stacks.get(&key.kernel) {
                view.kernel_stacks.insert(key.kernel, Arc::clone(s));
            }
        }
        // Keep only what the current table refers to.
        self.user_stacks
            .retain(|sig, _| view.user_stacks.contains_key(sig));
        // Frames of no kept stack (nor of a symbol cache entry) go.
        self.frames.retain(|f| Arc::strong_count(f) > 1);
        self.kernel_stacks
            .retain(|sig, _| view.kernel_stacks.contains_key(sig));
        self.leaf_rules
            .retain(|(p, _), _| view.processes.contains_key(p));
        self.located.retain(|(p, _), sig| {
            view.processes.contains_key(p) && view.user_stacks.contains_key(sig)
        });
        self.processes
            .retain(|_, p| view.processes.contains_key(&p.key));
        self.remapped.retain(|p, _| view.processes.contains_key(p));
        view.table = LeakTable {
            taken_at_unix_ms: unix_ms,
            shift: census.shift,
            entries,
            overflow_keys,
        };
        view
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

/// Keeps the `max_keys` largest entries; merges the rest into their cgroup's "other" entry.
/// Returns how many entries were merged.
fn cap(entries: &mut FastMap<LeakKey, Held>, max_keys: usize) -> u64 {
    if entries.len() <= max_keys {
        return 0;
    }
    let mut all: Vec<(LeakKey, Held)> = entries.drain().collect();
    all.sort_by(|a, b| b.1.pages.total_cmp(&a.1.pages).then(a.0.cmp(&b.0)));
    let rest = all.split_off(max_keys.saturating_sub(1));
    let merged = rest.len() as u64;
    entries.extend(all);
    for (key, held) in rest {
        let other = LeakKey {
            memcg: key.memcg,
            process: ProcessKey {
                tgid: 0,
                start_ns: 0,
            },
            kind: key.kind,
            kernel: OTHER,
            user: OTHER,
        };
        entries.entry(other).or_default().add(held);
    }
    merged
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

    fn key(n: u64) -> LeakKey {
        LeakKey {
            memcg: MemcgId(7),
            process: ProcessKey {
                tgid: 1,
                start_ns: 1,
            },
            kind: PageKind::Anon,
            kernel: 100 + n,
            user: 100 + n,
        }
    }

    #[test]
    fn the_cap_merges_the_smallest_stacks_into_other_per_cgroup() {
        let mut entries: FastMap<LeakKey, Held> = (1..=5u64)
            .map(|n| {
                (
                    key(n),
                    Held {
                        pages: n as f64,
                        objects: 1.0,
                    },
                )
            })
            .collect();
        let merged = cap(&mut entries, 3);
        assert_eq!(merged, 3);
        assert_eq!(entries.len(), 3);
        assert!(entries.contains_key(&key(5)) && entries.contains_key(&key(4)));
        let other = entries
            .iter()
            .find(|(k, _)| k.user == OTHER)
            .map(|(_, v)| *v)
            .expect("other entry");
        assert_eq!(other.pages, 6.0);
        let total: f64 = entries.values().map(|h| h.pages).sum();
        assert_eq!(total, 15.0, "nothing is lost by the cap");
    }

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
