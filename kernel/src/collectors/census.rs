//! The page census: for every sampled frame, whether a memory cgroup holds it and as what kind of
//! page (from the kernel's own page state), joined with what the probes recorded about its
//! allocation.
//!
//! Reading a frame's state costs two `pread`s (about half a microsecond here), so reading every
//! sampled frame each refresh costs in proportion to the host's memory: 27 ms per 24 GiB at 1 in
//! 128, over a second on 1 TiB. Past a budget of frames per census the census is incremental: it
//! keeps what it last read of each frame and reads, within the budget, first the frames
//! allocated again since their last read (the probe's record changed: where memory grows and
//! churns) in at most three quarters of it, then the next frames of a sweep over all of them
//! (where memory was freed, since no probe sees frees, and pages from before the agent). A frame's
//! state is then at most one sweep old (`frames / budget` censuses, four times that under churn
//! filling its share); the first census reads every frame.

use std::time::Instant;

use memlens_common::page::{sampled_pfn, PageAlloc};
use memlens_model::census::{Census, TrackedFrame};
use memlens_types::{MemcgId, PageKind, Pages, Pfn};

use crate::{
    loader::PageAllocTable,
    physmem::{page_kind, PageState},
};

/// What the census last read of one sampled frame.
#[derive(Clone, Copy, Debug, Default)]
struct FrameState {
    /// The memory cgroup charged for the frame and the page's kind; None when none is.
    charged: Option<(MemcgId, PageKind)>,
    /// The timestamp of the probe's record when the frame was read (0: none): a later one means
    /// the frame was allocated again since.
    record_ts: u64,
}

/// Takes censuses of the sampled frames.
pub struct PageCensus {
    state: PageState,
    shift: u32,
    seed: u64,
    /// Most frames read per census (past the first).
    budget: usize,
    /// What was last read of each frame, by superblock; empty before the first census.
    known: Vec<FrameState>,
    /// Where the next census goes on looking for frames allocated again.
    changed_cursor: usize,
    /// Where the sweep goes on.
    sweep_cursor: usize,
}

impl PageCensus {
    /// A census of the frames `shift` and `seed` sample, reading at most `budget` frames per
    /// census after the first.
    #[must_use]
    pub fn new(state: PageState, shift: u32, seed: u64, budget: usize) -> PageCensus {
        PageCensus {
            state,
            shift,
            seed,
            budget: budget.max(1),
            known: Vec::new(),
            changed_cursor: 0,
            sweep_cursor: 0,
        }
    }

    /// Reads the frames due (every frame within the budget, else those allocated again since
    /// their last read and the sweep's next) and counts every frame by its last read state.
    pub fn take(&mut self, table: &PageAllocTable) -> Census {
        let started = Instant::now();
        let frames = usize::try_from(table.len()).unwrap_or(usize::MAX);
        let mut census = Census {
            shift: self.shift,
            frames: table.len(),
            ..Census::default()
        };
        let record_ts = |superblock: usize| table.written_at(superblock as u64);
        let first = self.known.len() != frames;
        if first {
            self.known = vec![FrameState::default(); frames];
        }
        if first || frames <= self.budget {
            for superblock in 0..frames {
                self.read(superblock, record_ts(superblock), &mut census);
            }
        } else {
            // Allocated again since read, from where the last census stopped looking, in at
            // most three quarters of the budget: the sweep always moves on, however much churns.
            let mut left = self.budget - self.budget / 4;
            for _ in 0..frames {
                if left == 0 {
                    break;
                }
                let superblock = self.changed_cursor;
                self.changed_cursor = (superblock + 1) % frames;
                let ts = record_ts(superblock);
                if self.known[superblock].record_ts != ts {
                    self.read(superblock, ts, &mut census);
                    left -= 1;
                }
            }
            for _ in 0..left + self.budget / 4 {
                let superblock = self.sweep_cursor;
                self.sweep_cursor = (superblock + 1) % frames;
                self.read(superblock, record_ts(superblock), &mut census);
            }
        }
        let weight = Pages(1 << self.shift);
        for (superblock, known) in self.known.iter().enumerate() {
            let Some((memcg, kind)) = known.charged else {
                continue;
            };
            census.charged_frames += 1;
            let latest = table.get(superblock as u64).filter(|a| a.ts_ns != 0);
            if let Some(record) = &latest {
                reference(&mut census, record);
            }
            // The record is the frame's only if the frame was read since it was written: an
            // allocation not read yet may be another cgroup's.
            let record = latest.filter(|a| a.ts_ns == known.record_ts);
            if record.is_some() {
                census.tracked.push(TrackedFrame {
                    superblock: superblock as u64,
                    memcg,
                    kind,
                    record_ts: known.record_ts,
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

    /// Reads one frame's state into `known`.
    fn read(&mut self, superblock: usize, record_ts: u64, census: &mut Census) {
        let pfn = Pfn(sampled_pfn(superblock as u64, self.shift, self.seed));
        census.frames_read += 1;
        let charged = match self.state.charged(pfn) {
            Ok(charged) => charged.map(|(memcg, flags)| (memcg, page_kind(flags))),
            Err(_) => {
                census.read_errors += 1;
                None
            }
        };
        self.known[superblock] = FrameState { charged, record_ts };
    }
}

/// Notes the stacks `record` refers to, so that they are kept.
fn reference(census: &mut Census, record: &PageAlloc) {
    for key in [record.kernel_stack, record.user_stack] {
        if key != 0 {
            census.referenced_stacks.insert(key);
        }
    }
}
