//! Symbolized stacks, cached: by (process, user stack) and by kernel stack. Filled in the
//! background for new stacks of live processes (so a process that exits later keeps its names)
//! and on demand when a query needs a stack not seen yet.

use std::{
    collections::HashSet,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use lru::LruCache;
use memlens_symbolize::Symbolizer;
use memlens_types::stack::Frame;

use crate::{LeakView, ProcessKey};

/// Most cached stacks, user and kernel each (the least recently used go first).
const MAX_STACKS: NonZeroUsize = NonZeroUsize::new(50_000).expect("non-zero");

/// Functions a complete user stack ends in (its outermost frame). A stack ending elsewhere was
/// cut short by code without frame pointers.
const STACK_BOTTOMS: [&str; 12] = [
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "runtime.goexit",
    "runtime.main",
    "runtime.mstart",
];

/// A symbolized user stack.
#[derive(Clone, Debug)]
pub struct SymbolizedStack {
    pub frames: Vec<Frame>,
    /// The frame-pointer walk stopped before the program's entry.
    pub truncated: bool,
}

/// What the symbolizer has done, readable from any thread without waiting for it.
#[derive(Debug, Default)]
pub struct SymbolStats {
    /// Stacks symbolized so far.
    pub symbolized: AtomicU64,
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
}

pub struct SymbolCache {
    symbolizer: Symbolizer,
    user: LruCache<(ProcessKey, u64), Arc<SymbolizedStack>>,
    kernel: LruCache<u64, Arc<Vec<Frame>>>,
    stats: Arc<SymbolStats>,
}

impl Default for SymbolCache {
    fn default() -> SymbolCache {
        SymbolCache {
            symbolizer: Symbolizer::default(),
            user: LruCache::new(MAX_STACKS),
            kernel: LruCache::new(MAX_STACKS),
            stats: Arc::default(),
        }
    }
}

impl SymbolCache {
    /// A cache that counts into `stats`.
    #[must_use]
    pub fn counting(stats: Arc<SymbolStats>) -> SymbolCache {
        SymbolCache {
            stats,
            ..SymbolCache::default()
        }
    }

    /// The symbolized user stack `sig` of `process` in `view`.
    pub fn user(
        &mut self,
        view: &LeakView,
        process: ProcessKey,
        sig: u64,
    ) -> Option<Arc<SymbolizedStack>> {
        if let Some(s) = self.user.get(&(process, sig)) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Some(Arc::clone(s));
        }
        let stack = view.user_stacks.get(&sig)?;
        let info = view.processes.get(&process)?;
        let alive = view.alive.contains(&process);
        let frames = self
            .symbolizer
            .user_stack(process.tgid, alive, &info.maps, &stack.addrs);
        let truncated = frames.last().is_none_or(|f| {
            f.function
                .as_deref()
                .is_none_or(|name| !STACK_BOTTOMS.contains(&name))
        });
        self.stats.symbolized.fetch_add(1, Ordering::Relaxed);
        let stack = Arc::new(SymbolizedStack { frames, truncated });
        self.user.put((process, sig), Arc::clone(&stack));
        Some(stack)
    }

    /// The symbolized kernel stack `sig` in `view`.
    pub fn kernel(&mut self, view: &LeakView, sig: u64) -> Option<Arc<Vec<Frame>>> {
        if let Some(s) = self.kernel.get(&sig) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Some(Arc::clone(s));
        }
        let addrs = view.kernel_stacks.get(&sig)?;
        let frames = Arc::new(self.symbolizer.kernel_stack(addrs));
        self.stats.symbolized.fetch_add(1, Ordering::Relaxed);
        self.kernel.put(sig, Arc::clone(&frames));
        Some(frames)
    }

    /// Symbolizes up to `budget` user stacks of live processes not cached yet; returns how many.
    pub fn prefetch(&mut self, view: &LeakView, budget: usize) -> usize {
        let todo: Vec<(ProcessKey, u64)> = view
            .table
            .entries
            .keys()
            .filter(|k| {
                view.alive.contains(&k.process) && !self.user.contains(&(k.process, k.user))
            })
            .map(|k| (k.process, k.user))
            .take(budget)
            .collect();
        for &(process, sig) in &todo {
            let _ = self.user(view, process, sig);
        }
        todo.len()
    }

    /// Drops cached data of processes that are gone from `view`.
    pub fn forget_gone(&mut self, view: &LeakView) {
        let gone: HashSet<ProcessKey> = self
            .user
            .iter()
            .map(|((p, _), _)| *p)
            .filter(|p| !view.processes.contains_key(p))
            .collect();
        if gone.is_empty() {
            return;
        }
        let stale: Vec<(ProcessKey, u64)> = self
            .user
            .iter()
            .map(|(k, _)| *k)
            .filter(|(p, _)| gone.contains(p))
            .collect();
        for key in stale {
            self.user.pop(&key);
        }
        for process in gone {
            self.symbolizer.forget_process(process.tgid);
        }
    }
}
