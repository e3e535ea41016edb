//! One census of the sampled page frames: which memory cgroup holds each, as what kind of page,
//! and what the probes recorded of its allocation.
//!
//! Each sampled frame stands for `2^shift` frames (see `memlens_common::page`), so a cgroup's
//! held pages are estimated as `2^shift` times its sampled frames, with a standard error of at
//! most `sqrt(held * 2^shift)` pages.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use memlens_common::page::PageAlloc;
use memlens_types::{MemcgId, PageKind, Pages};

/// Estimated pages one memory cgroup holds (charged to it directly, not via descendants).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldPages {
    pub anon: Pages,
    pub file: Pages,
    pub kernel: Pages,
    /// Of the above, pages whose allocation the probes saw (they have stacks).
    pub tracked: Pages,
    /// Sampled frames behind the estimate.
    pub frames: u64,
}

impl HeldPages {
    #[must_use]
    pub fn total(&self) -> Pages {
        Pages(self.anon.0 + self.file.0 + self.kernel.0)
    }

    /// Half-width of the 95% confidence interval of `total()`, in pages:
    /// `1.96 * sqrt(total * 2^shift)` (the variance bound of one draw per superblock).
    #[must_use]
    pub fn error95(&self, shift: u32) -> Pages {
        let bound = (self.total().0 as f64 * (1u64 << shift) as f64).sqrt() * 1.96;
        Pages(bound.ceil() as u64)
    }

    pub fn add(&mut self, kind: PageKind, pages: Pages, tracked: bool) {
        match kind {
            PageKind::Anon => self.anon += pages,
            PageKind::File => self.file += pages,
            PageKind::Kernel => self.kernel += pages,
        }
        if tracked {
            self.tracked += pages;
        }
        self.frames += 1;
    }

    /// Adds another cgroup's pages (for hierarchical totals).
    pub fn absorb(&mut self, other: &HeldPages) {
        self.anon += other.anon;
        self.file += other.file;
        self.kernel += other.kernel;
        self.tracked += other.tracked;
        self.frames += other.frames;
    }
}

/// One census of all sampled frames.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub by_memcg: HashMap<MemcgId, HeldPages>,
    pub shift: u32,
    /// Sampled frames examined.
    pub frames: u64,
    /// Of those, frames charged to some memory cgroup.
    pub charged_frames: u64,
    /// Frames whose state could not be read.
    pub read_errors: u64,
    pub duration: Duration,
    /// Stack ids the records of held frames refer to.
    pub referenced_stacks: HashSet<u64>,
    /// Held frames whose allocation the probes recorded: the input of leak attribution.
    pub tracked: Vec<TrackedFrame>,
}

/// A sampled frame held by a memory cgroup, with the record of its allocation.
#[derive(Clone, Copy, Debug)]
pub struct TrackedFrame {
    /// Index of the frame's superblock (and of its record in `PAGE_ALLOCS`).
    pub superblock: u64,
    pub memcg: MemcgId,
    pub kind: PageKind,
    pub record: PageAlloc,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bound_follows_the_variance_bound() {
        let held = HeldPages {
            anon: Pages(65_536),
            ..HeldPages::default()
        };
        // 256 MiB at 1 in 64: sqrt(65536 * 64) = 2048 pages; 95% -> 4015 pages (6.1%).
        assert_eq!(held.error95(6), Pages(4015));
    }
}
