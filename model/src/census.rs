//! One census of the sampled page frames: which memory cgroup holds each, as what kind of page,
//! and what the probes recorded of its allocation.
//!
//! Each sampled frame stands for `2^shift` frames (see `memlens_common::page`), so a cgroup's
//! held pages are estimated as `2^shift` times its sampled frames, with a standard error of at
//! most `sqrt(held * 2^shift)` pages.

use std::time::Duration;

/// The probes' record of a sampled allocation, as the attribution reads it.
pub use memlens_common::page::PageAlloc;
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

    /// Half-width of a 95% confidence interval of `total()`, in pages.
    ///
    /// The estimate is `2^shift` times the `k` sampled frames charged to the cgroup, a sum of
    /// independent draws (one per superblock) whose variance is at most its mean, `λ`. The
    /// interval is the score interval of that bound, the `λ` with `|k - λ| <= 1.96 sqrt(λ)`:
    /// `k + 1.92 ± 1.96 sqrt(k + 0.96)`, made symmetric about `k` by its wider (upper) side.
    /// An interval around `k ± 1.96 sqrt(k)` (the estimate's own variance) was too narrow
    /// exactly when the estimate fell short: no width at all with no frame seen, and 85% of
    /// 4 MiB cgroups' intervals held the kernel's figure at 1 in 512 (docs/design.md, "The
    /// estimator and its error").
    #[must_use]
    pub fn error95(&self, shift: u32) -> Pages {
        const Z: f64 = 1.96;
        let k = self.frames as f64;
        let frames = Z * Z / 2.0 + Z * (k + Z * Z / 4.0).sqrt();
        Pages((frames * (1u64 << shift) as f64).ceil() as u64)
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
    pub by_memcg: foldhash::HashMap<MemcgId, HeldPages>,
    pub shift: u32,
    /// Sampled frames counted (every one, by its last read state).
    pub frames: u64,
    /// Of those, frames whose state this census read (the rest were read by earlier ones).
    pub frames_read: u64,
    /// Of those, frames charged to some memory cgroup.
    pub charged_frames: u64,
    /// Frames whose state could not be read.
    pub read_errors: u64,
    pub duration: Duration,
    /// Stack ids the records of held frames refer to.
    /// (Both tables are updated once per held frame: a fast hash, not SipHash.)
    pub referenced_stacks: foldhash::HashSet<u64>,
    /// Held frames whose allocation the probes recorded, in superblock order: the input of leak
    /// attribution.
    pub tracked: Vec<TrackedFrame>,
}

/// A sampled frame held by a memory cgroup whose allocation the probes recorded.
///
/// The record itself stays in the kernel's array ([`AllocRecords`]) and is read again by the
/// attribution: a copy per held frame (136 bytes) would be the largest part of a census on a
/// large host (a million held frames at 1 in 128 on 1 TiB).
#[derive(Clone, Copy, Debug)]
pub struct TrackedFrame {
    /// Index of the frame's superblock (and of its record in `PAGE_ALLOCS`).
    pub superblock: u64,
    pub memcg: MemcgId,
    pub kind: PageKind,
    /// The record's timestamp when the census read the frame: a record read later with another
    /// is a later allocation's (the frame was freed and allocated again since).
    pub record_ts: u64,
}

/// The probes' allocation records, by superblock.
pub trait AllocRecords {
    /// The record of `superblock`'s latest sampled allocation, if in range.
    fn record(&self, superblock: u64) -> Option<PageAlloc>;

    /// That record if it is still the one a census saw for `frame`.
    fn record_of(&self, frame: &TrackedFrame) -> Option<PageAlloc> {
        self.record(frame.superblock)
            .filter(|r| r.ts_ns == frame.record_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(frames: u64, shift: u32) -> HeldPages {
        HeldPages {
            anon: Pages(frames << shift),
            frames,
            ..HeldPages::default()
        }
    }

    #[test]
    fn many_frames_give_the_variance_bound() {
        // 256 MiB at 1 in 64: 1024 frames; 1.96 sqrt(1024) = 62.7 frames, plus the score
        // interval's 1.92 and the 0.96 under the root: 64.7 frames of 64 pages (6.3%).
        assert_eq!(held(1024, 6).error95(6), Pages(4139));
    }

    #[test]
    fn few_or_no_frames_still_give_an_interval() {
        // None seen at 1 in 512: the cgroup may still hold up to 3.84 sampled frames' worth.
        assert_eq!(held(0, 9).error95(9), Pages(1967));
        // One frame: the upper end is 4.7 frames away, not 1.96.
        assert_eq!(held(1, 9).error95(9), Pages(2389));
    }
}
