//! The lifecycle drain: process exits, OOM kills and cgroup changes from the kernel's ring
//! buffer, every 100 ms, into the database, each OOM kill and main-process end with the memory
//! its cgroup held just before (the census moves on within seconds).

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use memlens_attribution::{
    query::{self, LeakSources},
    Views,
};
use memlens_kernel::collectors::lifecycle::{Lifecycle, LifecycleRing, LifecycleStats};
use memlens_store::Store;
use memlens_unwind::ProcessEnds;

use crate::health::{EndOnDrop, Heartbeat};

const POLL: Duration = Duration::from_millis(100);
/// Most records given evidence per round (a crash loop must not stall the ring buffer).
const EVIDENCE_PER_ROUND: usize = 8;
/// Stacks and files kept as evidence of a process' end.
const EVIDENCE_TOP: usize = 5;

/// What the drain reads and writes.
pub struct Drain {
    pub ring: LifecycleRing,
    pub lifecycle: Lifecycle,
    pub views: Arc<Views>,
    pub leaks: LeakSources,
    pub stats: Arc<LifecycleStats>,
    pub heartbeat: Arc<Heartbeat>,
    /// Told of process ends, for the unwinder (when stacks are copied).
    pub ends: Option<Arc<ProcessEnds>>,
}

/// Starts the thread draining the ring into the database at `db`.
pub fn spawn(
    mut drain: Drain,
    db: &Path,
    retention: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut store = Store::open(db, retention)?;
    Ok(std::thread::Builder::new()
        .name("lifecycle".into())
        .spawn(move || {
            let _ended = EndOnDrop(Arc::clone(&drain.heartbeat));
            while !stop.load(Ordering::Relaxed) {
                let view = drain.views.latest();
                let path_of = |id: u64| {
                    view.snapshot
                        .cgroups
                        .iter()
                        .find(|r| r.id.0 == id)
                        .map(|r| r.path.clone())
                };
                let ends = drain.ends.clone();
                let mut ended = |tgid, ts_ns| {
                    if let Some(ends) = &ends {
                        ends.push(tgid, ts_ns);
                    }
                };
                let mut records =
                    drain
                        .ring
                        .drain(&mut drain.lifecycle, &path_of, &mut ended, &drain.stats);
                for record in records
                    .iter_mut()
                    .filter(|r| r.oom_killed || r.main_process)
                    .take(EVIDENCE_PER_ROUND)
                {
                    record.evidence = record.cgroup_path.as_deref().and_then(|path| {
                        query::memory_at(
                            &drain.views,
                            &drain.leaks,
                            path,
                            record.ts_ms,
                            EVIDENCE_TOP,
                        )
                    });
                }
                if !records.is_empty() {
                    match store.record_lifecycle(&records) {
                        Ok((n, capped)) => {
                            drain.stats.count(&records);
                            drain.stats.recorded.fetch_add(n as u64, Ordering::Relaxed);
                            drain
                                .stats
                                .capped
                                .fetch_add(capped as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            drain.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("lifecycle events not recorded: {e}");
                        }
                    }
                }
                drain.heartbeat.beat();
                std::thread::sleep(POLL);
            }
        })?)
}
