//! Symbolized stacks, cached by user stack and by kernel stack. A user stack is the same in every
//! process of one binary (it is kept by file and offset), so it is symbolized once, through a
//! process that has it. Filled in the background for new stacks of live processes (so a process
//! that exits later keeps its names) and on demand when a query needs a stack not seen yet.
//!
//! Stacks share their frames: a frame's names are kept once per code location (file and offset)
//! and a stack holds only pointers to them. A node's 100,000 distinct stacks run through a few
//! thousand locations; kept per stack, the same names took about 10 KiB a stack.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use hashlink::LruCache;
use memlens_procfs::Mapping;
use memlens_symbolize::{StackAddr, Symbolizer};
use memlens_types::stack::Frame;

use memlens_model::python::{PythonFrameId, PythonFrames};

use crate::{CodeLocation, LeakView, ProcessInfo, ProcessKey, UserFrame, UserStack};

/// Most cached stacks, user and kernel each (the least recently used go first).
const MAX_STACKS: usize = 50_000;
/// Most code locations whose names are kept.
const MAX_LOCATIONS: usize = 100_000;

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
    /// it is in; shared with every stack through the same code location.
    pub per_frame: Vec<Arc<[Frame]>>,
    /// The stack ends before the program's or thread's entry.
    pub truncated: bool,
}

impl SymbolizedStack {
    /// Every frame, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.per_frame.iter().flat_map(|f| f.iter())
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

/// Python frame `id` as a frame of a symbolized stack: its function, file and line (a frame
/// standing for unread ones has only a function, which says why).
fn python_frame(frames: &PythonFrames, id: PythonFrameId) -> Frame {
    let found = frames.get(id);
    Frame {
        addr: id.address(),
        function: Some(found.as_ref().map_or_else(
            || "[Python frame unknown]".to_string(),
            |f| f.function.to_string(),
        )),
        module: None,
        module_offset: None,
        file: found
            .as_ref()
            .filter(|f| !f.file.is_empty())
            .map(|f| f.file.to_string()),
        line: found.as_ref().map(|f| f.line).filter(|&l| l > 0),
        inlined: false,
        recovered: false,
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
    /// The Python frames stacks refer to.
    python: Arc<PythonFrames>,
    user: LruCache<u64, Arc<SymbolizedStack>>,
    /// The names at each code location (of frames that were named).
    locations: LruCache<Arc<UserFrame>, Arc<[Frame]>>,
    kernel: LruCache<u64, Arc<Vec<Frame>>>,
    /// Live processes the symbolizer may have looked at, to forget them once gone.
    seen: HashSet<ProcessKey>,
    stats: Arc<SymbolStats>,
}

impl Default for SymbolCache {
    fn default() -> SymbolCache {
        SymbolCache {
            symbolizer: Symbolizer::default(),
            python: Arc::default(),
            user: LruCache::new(MAX_STACKS),
            locations: LruCache::new(MAX_LOCATIONS),
            kernel: LruCache::new(MAX_STACKS),
            seen: HashSet::new(),
            stats: Arc::default(),
        }
    }
}

impl SymbolCache {
    /// A cache that counts into `stats` and names Python frames from `python`.
    #[must_use]
    pub fn new(stats: Arc<SymbolStats>, python: Arc<PythonFrames>) -> SymbolCache {
        SymbolCache {
            stats,
            python,
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
        // Python frames are named by the table the unwinder filled; locations named before are
        // not looked up again.
        let mut per_frame: Vec<Option<Arc<[Frame]>>> = stack
            .frames
            .iter()
            .map(|f| match &f.location {
                CodeLocation::Python(id) => Some(Arc::from([python_frame(&self.python, *id)])),
                _ => self.locations.get(f).cloned(),
            })
            .collect();
        let missing: Vec<usize> = (0..per_frame.len())
            .filter(|&i| per_frame[i].is_none())
            .collect();
        if !missing.is_empty() {
            let addrs = stack.addresses_in(info);
            let lookups: Vec<StackAddr> = missing.iter().map(|&i| addrs[i]).collect();
            let found = self
                .symbolizer
                .user_stack(process.tgid, alive, &info.maps, &lookups);
            for (&i, frames) in missing.iter().zip(found) {
                let frames: Arc<[Frame]> = frames.into();
                if frames.iter().all(|f| f.function.is_some()) {
                    self.locations
                        .insert(Arc::clone(&stack.frames[i]), Arc::clone(&frames));
                }
                per_frame[i] = Some(frames);
            }
        }
        let per_frame: Vec<Arc<[Frame]>> = per_frame
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        let truncated = per_frame
            .iter()
            .flat_map(|f| f.iter())
            .last()
            .is_none_or(|f| {
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
            self.user.insert(sig, Arc::clone(&stack));
        }
        Some(stack)
    }

    /// Symbolizes `addrs`, a stack of the live process `pid` whose mappings are `maps`, without
    /// caching it (profiles read on demand).
    pub fn process_stack(&mut self, pid: u32, maps: &[Mapping], addrs: &[StackAddr]) -> Vec<Frame> {
        self.stats.symbolized.fetch_add(1, Ordering::Relaxed);
        let native: Vec<StackAddr> = addrs
            .iter()
            .filter(|a| PythonFrameId::of_address(a.addr).is_none())
            .copied()
            .collect();
        let mut named = self
            .symbolizer
            .user_stack(pid, true, maps, &native)
            .into_iter();
        let mut frames = Vec::with_capacity(addrs.len());
        for a in addrs {
            match PythonFrameId::of_address(a.addr) {
                Some(id) => frames.push(python_frame(&self.python, id)),
                None => frames.extend(named.next().unwrap_or_default()),
            }
        }
        frames
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
        self.kernel.insert(sig, Arc::clone(&frames));
        Some(frames)
    }

    /// Symbolizes up to `budget` user stacks of live processes not cached yet; returns how many.
    pub fn prefetch(&mut self, view: &LeakView, budget: usize) -> usize {
        let todo: Vec<u64> = view
            .symbolize_via
            .iter()
            .filter(|(sig, p)| view.alive.contains(p) && !self.user.contains_key(sig))
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

    /// Called when no work has come for a while: drops what blazesym keeps of the files it read.
    /// Names found are kept per location here, so only new locations need the files again; a
    /// refresh's new stacks read them once (about 30 ms for glibc with its separate debug file,
    /// whose decompressed and parsed DWARF is 13 MiB), and they are not held between refreshes.
    /// Returns whether anything was dropped.
    pub fn idle(&mut self) -> bool {
        self.symbolizer.drop_file_caches()
    }
}
