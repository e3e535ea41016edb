//! The page census: for every sampled frame, whether a memory cgroup holds it and as what kind of
//! page (from the kernel's own page state), joined with what the probes recorded about its
//! allocation.

use std::time::Instant;

use memlens_common::page::sampled_pfn;
use memlens_model::census::{Census, TrackedFrame};
use memlens_types::{Pages, Pfn};

use crate::{
    loader::PageAllocTable,
    physmem::{page_kind, PageState},
};

/// Takes censuses of the sampled frames.
pub struct PageCensus {
    state: PageState,
    shift: u32,
    seed: u64,
}

impl PageCensus {
    #[must_use]
    pub fn new(state: PageState, shift: u32, seed: u64) -> PageCensus {
        PageCensus { state, shift, seed }
    }

    /// Reads the state of every sampled frame.
    #[must_use]
    pub fn take(&self, table: &PageAllocTable) -> Census {
        let started = Instant::now();
        let mut census = Census {
            shift: self.shift,
            ..Census::default()
        };
        let weight = Pages(1 << self.shift);
        for superblock in 0..table.len() {
            let pfn = Pfn(sampled_pfn(superblock, self.shift, self.seed));
            census.frames += 1;
            let (memcg, flags) = match self.state.charged(pfn) {
                Ok(Some(charged)) => charged,
                Ok(None) => continue,
                Err(_) => {
                    census.read_errors += 1;
                    continue;
                }
            };
            census.charged_frames += 1;
            let record = table.get(superblock).filter(|a| a.ts_ns != 0);
            if let Some(a) = record {
                for key in [a.kernel_stack, a.user_stack] {
                    if key != 0 {
                        census.referenced_stacks.insert(key);
                    }
                }
            }
            let kind = page_kind(flags);
            if let Some(record) = record {
                census.tracked.push(TrackedFrame {
                    superblock,
                    memcg,
                    kind,
                    record,
                });
            }
            census
                .by_memcg
                .entry(memcg)
                .or_default()
                .add(kind, weight, record.is_some());
        }
        census.duration = started.elapsed();
        census
    }
}
