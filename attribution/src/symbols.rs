//! Symbolized stacks, cached by user stack and by kernel stack. A user stack is the same in every
//! process of one binary (it is kept by file and offset), so it is symbolized once, through a
//! process that has it. Filled in the background for new stacks of live processes (so a process
//! that exits later keeps its names) and on demand when a query needs a stack not seen yet.

use std::{
    collections::HashSet,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use lru::LruCache;
use memlens_procfs::Mapping;
use memlens_symbolize::{StackAddr, Symbolizer};
use memlens_types::stack::Frame;

use crate::{LeakView, ProcessInfo, ProcessKey, UserStack};

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
    /// For each of the stack's frames, the functions inlined at it (innermost first) and the one
    /// it is in.
    pub per_frame: Vec<Vec<Frame>>,
    /// The stack ends before the program's or thread's entry.
    pub truncated: bool,
}

impl SymbolizedStack {
    /// Every frame, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.per_frame.iter().flatten()
    }

    /// Every frame, innermost first, at its address in `process` (the stack is shared by the
    /// processes of one binary, each with its code at other addresses).
    #[must_use]
    pub fn frames_in(&self, stack: &UserStack, process: Option<&ProcessInfo>) -> Vec<Frame> {
        self.per_frame
            .iter()
            .zip(&stack.frames)
            .flat_map(|(frames, at)| {
                let addr = process.and_then(|p| at.location.address_in(p));
                frames.iter().map(move |f| Frame {
                    addr: addr.unwrap_or(f.addr),
                    ..f.clone()
                })
            })
            .collect()
    }
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
    user: LruCache<u64, Arc<SymbolizedStack>>,
    kernel: LruCache<u64, Arc<Vec<Frame>>>,
    /// Live processes the symbolizer may have looked at, to forget them once gone.
    seen: HashSet<ProcessKey>,
    stats: Arc<SymbolStats>,
}

impl Default for SymbolCache {
    fn default() -> SymbolCache {
        SymbolCache {
            symbolizer: Symbolizer::default(),
            user: LruCache::new(MAX_STACKS),
            kernel: LruCache::new(MAX_STACKS),
            seen: HashSet::new(),
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

    /// The symbolized user stack `sig` in `view`.
    pub fn user(&mut self, view: &LeakView, sig: u64) -> Option<Arc<SymbolizedStack>> {
        if let Some(s) = self.user.get(&sig) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Some(Arc::clone(s));
        }
        let stack = view.user_stacks.get(&sig)?;
        let process = view.symbolize_via.get(&sig)?;
        let info = view.processes.get(process)?;
        let alive = view.alive.contains(process);
        let per_frame =
            self.symbolizer
                .user_stack(process.tgid, alive, &info.maps, &stack.addresses_in(info));
        let truncated = per_frame.iter().flatten().last().is_none_or(|f| {
            f.function
                .as_deref()
                .is_none_or(|name| !STACK_BOTTOMS.contains(&name))
        });
        self.stats.symbolized.fetch_add(1, Ordering::Relaxed);
        let stack = Arc::new(SymbolizedStack {
            per_frame,
            truncated,
        });
        // Names missing because the only process with the stack is gone may be found through a
        // process of the same binary later: not remembered.
        if alive || stack.frames().all(|f| f.function.is_some()) {
            self.user.put(sig, Arc::clone(&stack));
        }
        Some(stack)
    }

    /// Symbolizes `addrs`, a stack of the live process `pid` whose mappings are `maps`, without
    /// caching it (profiles read on demand).
    pub fn process_stack(&mut self, pid: u32, maps: &[Mapping], addrs: &[StackAddr]) -> Vec<Frame> {
        self.stats.symbolized.fetch_add(1, Ordering::Relaxed);
        self.symbolizer
            .user_stack(pid, true, maps, addrs)
            .into_iter()
            .flatten()
            .collect()
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
        let todo: Vec<u64> = view
            .symbolize_via
            .iter()
            .filter(|(sig, p)| view.alive.contains(p) && !self.user.contains(sig))
            .map(|(sig, _)| *sig)
            .take(budget)
            .collect();
        for &sig in &todo {
            let _ = self.user(view, sig);
        }
        todo.len()
    }

    /// Drops what the symbolizer keeps of processes that are gone from `view` (their stacks'
    /// names stay: other processes of the same binaries may have them).
    pub fn forget_gone(&mut self, view: &LeakView) {
        let gone: Vec<ProcessKey> = self
            .seen
            .iter()
            .filter(|p| !view.processes.contains_key(p))
            .copied()
            .collect();
        for process in gone {
            self.seen.remove(&process);
            self.symbolizer.forget_process(process.tgid);
        }
        self.seen.extend(view.alive.iter().copied());
    }
}
