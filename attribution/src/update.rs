//! Aggregating one census into a leak table: each held frame's allocation placed by its kernel
//! and user stacks, with a memo per frame so that an allocation seen by the last census is not
//! placed again (a million frames on a large host), and the table capped to its size.

use std::sync::Arc;

use memlens_model::{
    census::{AllocRecords, Census},
    user_stack::UnwoundStacks,
    StackTable,
};

use crate::{
    signature, Attribution, FastMap, Held, LeakKey, LeakTable, LeakView, ProcessInfo, ProcessKey,
    NONE, OTHER,
};

/// What one held frame's allocation was attributed to: the next census takes it as it is while
/// the frame holds the same allocation (most frames, census after census), instead of placing its
/// stacks again (hashing every address of both stacks, for each of a million frames on a large
/// host).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameMemo {
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

impl Attribution {
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
        let mut entries: FastMap<LeakKey, Held> =
            FastMap::with_capacity_and_hasher(self.last_keys, Default::default());
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
        self.last_keys = entries.len();
        let (entries, overflow_keys) = cap(entries, self.max_keys);
        for key in entries.keys() {
            if let Some(s) = self.user_stacks.get(&key.user) {
                view.user_stacks.insert(key.user, Arc::clone(s));
                // Symbolized through a process that still runs, if one has the stack.
                if view.alive.contains(&key.process) {
                    view.symbolize_via.insert(key.user, key.process);
                } else {
                    view.symbolize_via.entry(key.user).or_insert(key.process);
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
}

/// Keeps the `max_keys` largest entries; merges the rest into their cgroup's "other" entry.
/// Returns the table, sized to what it keeps (the census's table can be ten times larger, and
/// a view lives until the next census is built beside it), and how many entries were merged.
fn cap(entries: FastMap<LeakKey, Held>, max_keys: usize) -> (FastMap<LeakKey, Held>, u64) {
    if entries.len() <= max_keys {
        let mut entries = entries;
        entries.shrink_to_fit();
        return (entries, 0);
    }
    let mut all: Vec<(LeakKey, Held)> = entries.into_iter().collect();
    all.sort_by(|a, b| b.1.pages.total_cmp(&a.1.pages).then(a.0.cmp(&b.0)));
    let rest = all.split_off(max_keys.saturating_sub(1));
    let merged = rest.len() as u64;
    let mut kept = FastMap::with_capacity_and_hasher(max_keys, Default::default());
    kept.extend(all);
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
        kept.entry(other).or_default().add(held);
    }
    kept.shrink_to_fit();
    (kept, merged)
}

#[cfg(test)]
mod tests {
    use memlens_types::{MemcgId, PageKind};

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
        let entries: FastMap<LeakKey, Held> = (1..=5u64)
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
        let (entries, merged) = cap(entries, 3);
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
    fn a_capped_table_holds_memory_for_what_it_keeps_only() {
        let entries: FastMap<LeakKey, Held> = (1..=100_000u64)
            .map(|n| {
                (
                    key(n),
                    Held {
                        pages: 1.0,
                        objects: 1.0,
                    },
                )
            })
            .collect();
        let (entries, merged) = cap(entries, 1_000);
        assert_eq!(merged, 99_001);
        assert!(
            entries.capacity() < 4_000,
            "{} slots kept for {} entries",
            entries.capacity(),
            entries.len()
        );
    }
}
