//! The symbolizer's own thread. blazesym's symbolizer is not `Send` (it caches parsed binaries
//! behind `Rc`), so one thread owns it with the symbol cache, and others hand it work.

use std::sync::mpsc::{self, SyncSender, TrySendError};

use super::cache::SymbolCache;

type Job = Box<dyn FnOnce(&mut SymbolCache) + Send>;

/// Queued jobs before senders wait (queries) or drop (background prefetch).
const QUEUE: usize = 64;

/// A handle on the symbolizer thread; cheap to clone.
#[derive(Clone)]
pub struct SymbolService {
    jobs: SyncSender<Job>,
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolizer thread is gone")]
pub struct ServiceGone;

impl SymbolService {
    /// Starts the thread.
    pub fn start() -> std::io::Result<SymbolService> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                let mut cache = SymbolCache::default();
                for job in queue {
                    job(&mut cache);
                }
            })?;
        Ok(SymbolService { jobs })
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
