//! The refresh: every `--refresh`, one census of the sampled frames, the leak and file-cache
//! attribution of it, the kernel's counters of every cgroup, and (every `--history-interval`) a
//! sample of each into the database; published as the newest [`View`].

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use memlens_attribution::{
    file_cache::{self, FileView},
    file_names::FileResolver,
    query::LeakSources,
    Attribution, View,
};
use memlens_cgroup::{CgroupLayout, Discovery};
use memlens_kernel::{
    collectors::{census::PageCensus, page_cache::PageCacheCollector, stack_gc::StackGc},
    Probes,
};
use memlens_model::{python::PythonFrames, user_stack::UnwoundChanges};
use memlens_store::Store;
use memlens_types::{selector::MountPoint, unix_ms, PageSize};
use memlens_unwind::table::UnwoundTable;

use super::unwind::Unwinding;

/// Stack collection runs at most this often; a kernel stack reused from the per-CPU memo is at
/// most `settings::values::MAX_KERNEL_STACK_REUSE` old, far less than two collections apart.
const STACK_GC_INTERVAL: Duration = Duration::from_secs(10);
/// Files kept per cgroup in the file-cache view.
const TOP_FILES: usize = 50;
/// Most stack copies the refresh unwinds itself before attributing a census (about 1 µs each):
/// those the unwinder thread has not read yet.
const CATCH_UP: usize = 65_536;
/// New stacks of live processes symbolized in the background per refresh.
const PREFETCH_PER_REFRESH: usize = 256;
/// Unwound stacks are saved for the next agent at most this often (a crash loses at most this
/// much of them, or a refresh interval when that is longer).
const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Owns everything one refresh reads.
pub struct Refresher {
    pub layout: CgroupLayout,
    pub mounts: Arc<[MountPoint]>,
    pub probes: Probes,
    pub census: Option<PageCensus>,
    pub attribution: Attribution,
    /// Stack copies and their unwound stacks, when stacks are copied.
    pub unwinding: Option<Arc<Mutex<Unwinding>>>,
    pub leaks: LeakSources,
    pub store: Store,
    pub history_interval: Duration,
    pub max_cgroups: usize,
    pub page_size: PageSize,
    pub stack_gc: StackGc,
    pub last_gc: Option<Instant>,
    pub stacks_in_use: usize,
    pub file_cache: PageCacheCollector,
    pub file_names: FileResolver,
    pub last_recorded: Option<Instant>,
    /// Whether unwound stacks are saved: the kernel's records outlive the agent.
    pub save_unwound: bool,
    pub last_save: Option<Instant>,
    /// The Python frames unwound stacks name, saved with them.
    pub python_frames: Arc<PythonFrames>,
}

impl Refresher {
    /// One refresh.
    pub fn view(&mut self) -> View {
        let census = self
            .census
            .as_mut()
            .map(|c| c.take(&self.probes.page_allocs));
        // The cgroups' own counters are read right after the census, before the attribution
        // (hundreds of ms on a busy node), so that the estimate and `memory.stat` in one row
        // describe the same moment for a cgroup whose memory moves.
        let discovery =
            memlens_cgroup::discover(&self.layout, self.max_cgroups).unwrap_or_else(|e| {
                tracing::warn!("cannot list cgroups: {e}");
                Discovery::default()
            });
        let mut snapshot = memlens_model::snapshot::build(
            &self.layout,
            &discovery,
            census.as_ref(),
            self.page_size,
        );
        if let Some(census) = &census {
            if self
                .last_gc
                .is_none_or(|t| t.elapsed() >= STACK_GC_INTERVAL)
            {
                let (in_use, deleted) = self
                    .stack_gc
                    .collect(&mut self.probes.stacks, &census.referenced_stacks);
                self.stacks_in_use = in_use;
                self.attribution.forget_stacks(&deleted);
                self.last_gc = Some(Instant::now());
            }
        }
        let mut unwound = UnwoundChanges::default();
        let leaks = census.as_ref().map(|census| {
            // The copies of the allocations this census sees are unwound first; the attribution
            // then reads a copy of the table's slots, so the unwinder goes on meanwhile.
            let slots = self.unwinding.as_ref().and_then(|u| {
                let mut u = u.lock().ok()?;
                u.drain(CATCH_UP);
                u.collect();
                if self.save_unwound && self.last_save.is_none_or(|t| t.elapsed() >= SAVE_INTERVAL)
                {
                    self.last_save = Some(Instant::now());
                    unwound = u.table.take_changed();
                }
                Some(
                    u.table
                        .snapshot_of(census.tracked.iter().map(|f| f.superblock)),
                )
            });
            let view = match &slots {
                Some(slots) => self.attribution.update(
                    census,
                    &self.probes.page_allocs,
                    &self.probes.stacks,
                    slots,
                    unix_ms(),
                ),
                None => self.attribution.update(
                    census,
                    &self.probes.page_allocs,
                    &self.probes.stacks,
                    &UnwoundTable::new(0),
                    unix_ms(),
                ),
            };
            drop(slots);
            if let Ok(mut history) = self.leaks.history.write() {
                history.record(&view.table);
            }
            let view = Arc::new(view);
            let background = Arc::clone(&view);
            // Symbolize new stacks while their processes live; skipped when the symbolizer is busy.
            self.leaks.symbols.spawn(move |symbols| {
                symbols.forget_gone(&background);
                symbols.prefetch(&background, PREFETCH_PER_REFRESH);
            });
            view
        });
        self.save(unwound);
        snapshot.sample_shift = self.probes.report.sample_shift;
        snapshot.counters = self.probes.counters.totals();
        snapshot.stacks_in_use = self.stacks_in_use;
        snapshot.stacks_collected = self.stack_gc.collected;
        snapshot.programs = self.probes.program_stats();
        let files = match self.probes.file_pages.as_mut() {
            Some(map) => {
                let counts = self.file_cache.collect(map);
                let view = file_cache::build(
                    &counts,
                    &discovery,
                    &mut self.file_names,
                    self.page_size,
                    TOP_FILES,
                );
                file_cache::annotate(&mut snapshot.cgroups, &view);
                view
            }
            None => FileView::default(),
        };
        if self
            .last_recorded
            .is_none_or(|t| t.elapsed() >= self.history_interval)
        {
            self.last_recorded = Some(Instant::now());
            if let Err(e) = self
                .store
                .record(snapshot.taken_at_unix_ms, &snapshot.cgroups)
            {
                tracing::warn!("history not recorded: {e}");
            }
        }
        View {
            snapshot,
            leaks: leaks.unwrap_or_default(),
            files: Arc::new(files),
            mounts: Arc::clone(&self.mounts),
        }
    }

    /// Unwinds the copies waiting and saves what no refresh saved yet: the agent is stopping.
    pub fn finish(&mut self) {
        if !self.save_unwound {
            return;
        }
        let unwound = match self.unwinding.as_ref().and_then(|u| u.lock().ok()) {
            Some(mut u) => {
                u.drain(CATCH_UP);
                u.table.take_changed()
            }
            None => return,
        };
        self.save(unwound);
    }

    /// Saves the stacks unwound since the last save, for the next agent; when that fails,
    /// everything is saved again next time.
    fn save(&mut self, changes: UnwoundChanges) {
        if changes.is_empty() {
            return;
        }
        // The Python frames first: a saved stack may name them.
        let frames = self.python_frames.unsaved();
        if let Some((last, _)) = frames.last() {
            match self.store.save_python_frames(&frames) {
                Ok(()) => self.python_frames.saved(*last),
                Err(e) => tracing::warn!("Python frames not saved for the next agent: {e}"),
            }
        }
        if let Err(e) = self.store.save_unwound(&changes) {
            tracing::warn!("unwound stacks not saved for the next agent: {e}");
            if let Some(mut u) = self.unwinding.as_ref().and_then(|u| u.lock().ok()) {
                u.table.save_failed();
            }
        }
    }
}
