//! The symbolizer's own thread. blazesym's symbolizer is not `Send` (it caches parsed binaries
//! behind `Rc`), so one thread owns it with the symbol cache, and others hand it work.

use std::{
    sync::{
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use memlens_model::python::PythonFrames;

use crate::symbols::{SymbolCache, SymbolStats};

type Job = Box<dyn FnOnce(&mut SymbolCache) + Send>;

/// Queued jobs before senders wait (queries) or drop (background prefetch).
const QUEUE: usize = 64;
/// The symbolizer counts as idle (and lets go of the files it read) after this long without a
/// job: long enough for a query's requests to share them, short against the refresh interval.
const IDLE_AFTER: Duration = Duration::from_secs(2);

/// A handle on the symbolizer thread; cheap to clone.
#[derive(Clone)]
pub struct SymbolService {
    jobs: SyncSender<Job>,
    stats: Arc<SymbolStats>,
    thread: Arc<std::thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolizer thread is gone")]
pub struct ServiceGone;

impl SymbolService {
    /// Starts the thread, which names Python frames from `python`; `released` runs after the symbolizer let go of the files it read
    /// (the agent gives the freed memory back to the system then, rather than at its next
    /// periodic trim: 15-20 MiB after a query or a refresh's new stacks on the busy-node bench).
    pub fn start(released: fn(), python: Arc<PythonFrames>) -> std::io::Result<SymbolService> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let stats = Arc::new(SymbolStats::default());
        let counted = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                let mut cache = SymbolCache::new(counted, python);
                loop {
                    match queue.recv_timeout(IDLE_AFTER) {
                        Ok(job) => job(&mut cache),
                        Err(RecvTimeoutError::Timeout) => {
                            if cache.idle() {
                                tracing::debug!("symbolizer idle: file caches dropped");
                                released();
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        Ok(SymbolService {
            jobs,
            stats,
            thread: Arc::new(thread),
        })
    }

    /// Stacks symbolized and cache hits so far.
    #[must_use]
    pub fn stats(&self) -> &SymbolStats {
        &self.stats
    }

    /// Whether the symbolizer thread has ended (a panic in a job ends it).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Runs `f` on the symbolizer thread and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SymbolCache) -> R + Send + 'static,
    ) -> Result<R, ServiceGone> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |cache| {
                let _ = reply.send(f(cache));
            }))
            .map_err(|_| ServiceGone)?;
        answer.recv().map_err(|_| ServiceGone)
    }

    /// Queues `f` without waiting; returns false (and drops it) when the queue is full.
    pub fn spawn(&self, f: impl FnOnce(&mut SymbolCache) + Send + 'static) -> bool {
        match self.jobs.try_send(Box::new(f)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}
