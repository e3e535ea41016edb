//! Symbolized stacks, cached: by (process, user stack) and by kernel stack. Filled in the
//! background for new stacks of live processes (so a process that exits later keeps its names)
//! and on demand when a query needs a stack not seen yet.

use std::{collections::HashMap, sync::Arc};

use super::{Frame, Symbolizer};
use crate::attribution::{LeakView, ProcessKey};

/// Most cached stacks (user and kernel each); past it the cache starts over.
const MAX_STACKS: usize = 50_000;

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

#[derive(Default)]
pub struct SymbolCache {
    symbolizer: Symbolizer,
    user: HashMap<(ProcessKey, u64), Arc<SymbolizedStack>>,
    kernel: HashMap<u64, Arc<Vec<Frame>>>,
    /// Stacks symbolized so far (for the symbolizer's own statistics).
    pub symbolized: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
}

impl SymbolCache {
    /// The symbolized user stack `sig` of `process` in `view`.
    pub fn user(
        &mut self,
        view: &LeakView,
        process: ProcessKey,
        sig: u64,
    ) -> Option<Arc<SymbolizedStack>> {
        if let Some(s) = self.user.get(&(process, sig)) {
            self.hits += 1;
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
        if self.user.len() >= MAX_STACKS {
            self.user.clear();
        }
        self.symbolized += 1;
        let stack = Arc::new(SymbolizedStack { frames, truncated });
        self.user.insert((process, sig), Arc::clone(&stack));
        Some(stack)
    }

    /// The symbolized kernel stack `sig` in `view`.
    pub fn kernel(&mut self, view: &LeakView, sig: u64) -> Option<Arc<Vec<Frame>>> {
        if let Some(s) = self.kernel.get(&sig) {
            self.hits += 1;
            return Some(Arc::clone(s));
        }
        let addrs = view.kernel_stacks.get(&sig)?;
        let frames = Arc::new(self.symbolizer.kernel_stack(addrs));
        if self.kernel.len() >= MAX_STACKS {
            self.kernel.clear();
        }
        self.symbolized += 1;
        self.kernel.insert(sig, Arc::clone(&frames));
        Some(frames)
    }

    /// Symbolizes up to `budget` user stacks of live processes not cached yet; returns how many.
    pub fn prefetch(&mut self, view: &LeakView, budget: usize) -> usize {
        let todo: Vec<(ProcessKey, u64)> = view
            .table
            .entries
            .keys()
            .filter(|k| {
                view.alive.contains(&k.process) && !self.user.contains_key(&(k.process, k.user))
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
        let gone: std::collections::HashSet<ProcessKey> = self
            .user
            .keys()
            .map(|(p, _)| *p)
            .filter(|p| !view.processes.contains_key(p))
            .collect();
        if gone.is_empty() {
            return;
        }
        self.user.retain(|(p, _), _| !gone.contains(p));
        for process in gone {
            self.symbolizer.forget_process(process.tgid);
        }
    }
}
