//! Allocator traces as data: which functions of which object a trace probes in a process (the
//! plan, found from the process's binaries and handed to the kernel side), and what the probes
//! sampled, assembled into per-process [`AllocationProfile`]s.

use std::collections::HashMap;

use crate::allocations::{AllocationProfile, SampledStack};

/// What a probed allocator function does, which decides the program attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocatorRole {
    /// Allocates its first argument's bytes: `malloc`, `valloc`, `operator new`, `mallocx`.
    SizeFirst,
    /// Allocates its second argument's bytes: `memalign`, `aligned_alloc`.
    SizeSecond,
    /// `calloc(count, size)`.
    Calloc,
    /// `posix_memalign(memptr, alignment, size)`.
    PosixMemalign,
    /// Releases its first argument and allocates its second argument's bytes: `realloc`,
    /// `rallocx`.
    Realloc,
    /// Releases its first argument: `free`, `operator delete`, `sdallocx`.
    Free,
}

impl AllocatorRole {
    /// Whether the function returns a block (its return is probed too).
    #[must_use]
    pub fn allocates(self) -> bool {
        self != AllocatorRole::Free
    }
}

/// One function to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorFunction {
    pub symbol: String,
    /// Offset of its first instruction in the object file (what a uprobe is attached at).
    pub file_offset: u64,
    pub role: AllocatorRole,
    /// Its first instruction is a `push`, which the kernel may emulate at the probe instead of
    /// single-stepping it (a second trap): what the probe costs a call depends on it.
    pub starts_with_push: bool,
}

/// The allocator of one process, as the process resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorPlan {
    pub pid: u32,
    /// The object as the agent opens it (`/proc/<pid>/map_files/...`: the process's own file,
    /// whatever its mount namespace).
    pub open_path: String,
    /// The object as the process names it, for people.
    pub path: String,
    /// Which allocator it is ("glibc", "jemalloc", ...).
    pub allocator: String,
    pub functions: Vec<AllocatorFunction>,
}

/// What a trace's probes reported, as the collector decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// An allocation of `size` bytes was sampled in process `tgid`, at `frames` (innermost
    /// first; empty when its stack could not be copied).
    Sample {
        id: u64,
        tgid: u32,
        size: u64,
        frames: Vec<u64>,
    },
    /// The sampled call returned; `kept` is false when it failed or its block could not be
    /// tracked (its free would go unseen).
    Returned { id: u64, kept: bool },
    /// The sampled block was released.
    Freed { id: u64 },
}

/// A sampled allocation on record.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    tgid: u32,
    stack: u32,
    size: u64,
    /// Its call returned a block the probes track.
    returned: bool,
}

/// Distinct (process, stack) pairs kept per trace; samples of further stacks are counted.
pub const MAX_TRACE_STACKS: usize = 65_536;
/// Samples kept until freed; further samples are counted.
pub const MAX_TRACE_SAMPLES: usize = 1 << 20;

/// The samples of one trace, by stack, with which of them are still held.
#[derive(Debug, Default)]
pub struct TraceRecorder {
    stack_index: HashMap<(u32, Vec<u64>), u32>,
    stacks: Vec<(u32, SampledStack)>,
    samples: HashMap<u64, Sampled>,
    /// Samples left out by the bounds above.
    pub dropped_samples: u64,
    /// Samples whose call never reported a block (failed, or untracked): not counted.
    pub unreturned_samples: u64,
}

impl TraceRecorder {
    /// Takes one event.
    pub fn record(&mut self, event: TraceEvent) {
        match event {
            TraceEvent::Sample {
                id,
                tgid,
                size,
                frames,
            } => {
                if self.samples.len() >= MAX_TRACE_SAMPLES {
                    self.dropped_samples += 1;
                    return;
                }
                let key = (tgid, frames);
                let stack = match self.stack_index.get(&key) {
                    Some(&i) => i,
                    None if self.stacks.len() >= MAX_TRACE_STACKS => {
                        self.dropped_samples += 1;
                        return;
                    }
                    None => {
                        let i = self.stacks.len() as u32;
                        self.stacks.push((
                            tgid,
                            SampledStack {
                                pcs: key.1.clone(),
                                allocs: 0,
                                frees: 0,
                                alloc_bytes: 0,
                                free_bytes: 0,
                            },
                        ));
                        self.stack_index.insert(key, i);
                        i
                    }
                };
                self.samples.insert(
                    id,
                    Sampled {
                        tgid,
                        stack,
                        size,
                        returned: false,
                    },
                );
            }
            TraceEvent::Returned { id, kept } => {
                let Some(sample) = self.samples.get_mut(&id) else {
                    return;
                };
                if !kept {
                    self.samples.remove(&id);
                    self.unreturned_samples += 1;
                    return;
                }
                sample.returned = true;
                if let Some((_, stack)) = self.stacks.get_mut(sample.stack as usize) {
                    stack.allocs += 1;
                    stack.alloc_bytes += sample.size;
                }
            }
            TraceEvent::Freed { id } => {
                let Some(sample) = self.samples.remove(&id) else {
                    return;
                };
                if !sample.returned {
                    return;
                }
                if let Some((_, stack)) = self.stacks.get_mut(sample.stack as usize) {
                    stack.frees += 1;
                    stack.free_bytes += sample.size;
                }
            }
        }
    }

    /// Samples whose call has not returned yet (in flight, or never matched).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.samples.values().filter(|s| !s.returned).count()
    }

    /// Every sample taken and kept so far.
    #[must_use]
    pub fn sampled(&self) -> u64 {
        self.stacks.iter().map(|(_, s)| s.allocs).sum()
    }

    /// The profile of process `pid` at `sample_rate_bytes`: allocations in the window, and
    /// frees of them.
    #[must_use]
    pub fn profile(&self, pid: u32, sample_rate_bytes: u64) -> AllocationProfile {
        let stacks = self
            .stacks
            .iter()
            .filter(|(tgid, s)| *tgid == pid && s.allocs > 0)
            .map(|(_, s)| s.clone())
            .collect();
        AllocationProfile {
            pid,
            sample_rate_bytes,
            stacks,
            dropped_stacks: 0,
            leaf_is_ip: true,
        }
    }

    /// Processes with samples.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.samples.values().map(|s| s.tgid).collect();
        pids.extend(self.stacks.iter().map(|(tgid, _)| *tgid));
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, size: u64, frames: &[u64]) -> TraceEvent {
        TraceEvent::Sample {
            id,
            tgid: 7,
            size,
            frames: frames.to_vec(),
        }
    }

    #[test]
    fn held_blocks_are_allocations_without_frees() {
        let mut r = TraceRecorder::default();
        // Two kept by the leak's stack, three by the churn's, of which all three are freed.
        for (id, frames) in [
            (1, [1, 2]),
            (2, [1, 2]),
            (3, [3, 4]),
            (4, [3, 4]),
            (5, [3, 4]),
        ] {
            r.record(sample(id, 100, &frames));
            r.record(TraceEvent::Returned { id, kept: true });
        }
        for id in [3, 4, 5] {
            r.record(TraceEvent::Freed { id });
        }
        // A failed allocation counts for nothing; a free of an unknown sample is ignored.
        r.record(sample(6, 100, &[1, 2]));
        r.record(TraceEvent::Returned { id: 6, kept: false });
        r.record(TraceEvent::Freed { id: 99 });
        let p = r.profile(7, 1);
        let leak = p.stacks.iter().find(|s| s.pcs == [1, 2]).unwrap();
        assert_eq!((leak.allocs, leak.frees, leak.alloc_bytes), (2, 0, 200));
        let churn = p.stacks.iter().find(|s| s.pcs == [3, 4]).unwrap();
        assert_eq!((churn.allocs, churn.frees, churn.free_bytes), (3, 3, 300));
        assert_eq!(r.unreturned_samples, 1);
        assert!(r.profile(8, 1).stacks.is_empty());
        assert_eq!(r.pids(), vec![7]);
    }

    #[test]
    fn a_sample_still_in_its_call_counts_once_it_returns() {
        let mut r = TraceRecorder::default();
        r.record(sample(1, 64, &[9]));
        assert_eq!(r.in_flight(), 1);
        assert!(r.profile(7, 1).stacks.is_empty());
        r.record(TraceEvent::Returned { id: 1, kept: true });
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.sampled(), 1);
    }
}
