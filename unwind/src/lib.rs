//! Unwinding user stacks without frame pointers.
//!
//! Most native code is built without frame pointers (GCC and Clang at `-O2`, Rust's release
//! profile, distribution packages, glibc), so the kernel's frame-pointer walk stops after a frame
//! or two. At each sampled allocation the kernel program copies the user registers and the top of
//! the stack (`memlens_common::stack_copy`); here each copy is unwound with the unwind tables of
//! the binaries the process maps (framehop: `.eh_frame` through `.eh_frame_hdr`, else
//! `.debug_frame`; frame pointers where a binary has no tables), while the process still runs,
//! and the bytes are dropped.
//!
//! Go binaries have no unwind tables used here: Go keeps frame pointers in every frame, and the
//! caller of a frameless Go leaf (`runtime.memmove`) is found with `.gopclntab`'s frame sizes.
//! Code in no file (JIT, the vDSO) and processes gone before their mappings were read are
//! unwound by frame pointers, as the kernel's walk would have been.

mod ends;
mod modules;
mod process;
pub mod table;
mod walk;

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use framehop::x86_64::CacheX86_64;
use lru::LruCache;
use memlens_model::user_stack::{FoundBy, StackSample, StackStop, UnwoundFrame, UnwoundStack};
use memlens_procfs::maps;
use memlens_runtimes::python::Interpreters;

pub use ends::ProcessEnds;
use memlens_symbolize::tables::SharedModuleFiles;
use modules::SharedModules;
use process::{Code, Process};

/// Frames kept per stack.
pub const MAX_FRAMES: usize = 128;
/// Processes whose mappings are kept (the least recently unwound go first). Sized for a busy
/// node's allocating processes: with 2,000 of them taking turns through 1,024 entries, every
/// copy re-read its process's mappings (half the agent's CPU on the busy-node bench); an entry
/// is a few hundred bytes (the executable mappings; the tables are shared by binary).
const MAX_PROCESSES: NonZeroUsize = NonZeroUsize::new(8192).expect("non-zero");
/// A process's mappings are re-read at most this often when an address falls outside them: soon
/// enough for code loaded right after a first read (dlopen), rarely enough that a process full
/// of stray addresses costs little. An exec is not waited for: a process first seen between its
/// fork and its exec has a new [`memlens_procfs::Image`] after it, and is read again at once.
const REMAP_INTERVAL: Duration = Duration::from_millis(200);
/// How often a kept process is checked to still be the one with its pid (its start time read
/// from `/proc/<pid>/stat`): when the processes' ends are not known, and when they are (a pid
/// taken again is then seen at the next copy), as a backstop. Reading the start time every 5 s
/// for each of a busy node's 2,000 allocating processes was a fifth of the unwinder's CPU.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
const RECHECK_INTERVAL_WITH_ENDS: Duration = Duration::from_secs(60);
/// What the unwinder has done, readable from any thread.
#[derive(Debug, Default)]
pub struct UnwindStats {
    /// Stack copies unwound, and the stack bytes they carried.
    pub samples: AtomicU64,
    pub bytes: AtomicU64,
    /// Time spent unwinding, in ns, and of it reading mappings and binaries' unwind tables.
    pub busy_ns: AtomicU64,
    pub load_ns: AtomicU64,
    /// Copies unwound by frame pointers alone: Go binaries, code without a file, processes gone
    /// before their mappings were read.
    pub frame_pointers_only: AtomicU64,
    /// Unwound stacks that ended before the program's entry, and why.
    pub stopped_copy_ended: AtomicU64,
    pub stopped_unknown_address: AtomicU64,
    pub stopped_other: AtomicU64,
    /// Re-reads of a process's mappings for an address outside them (code loaded later).
    pub remaps: AtomicU64,
    /// Binaries whose unwind tables were read, and the bytes of tables held now.
    pub files_loaded: AtomicU64,
    pub table_bytes: AtomicU64,
    /// Binaries in the shared unwinder now (one module each, whatever the processes mapping it).
    pub modules: AtomicU64,
    /// Records with an unwound stack, and the distinct stacks they hold (as of the last refresh).
    pub held_slots: AtomicU64,
    pub held_stacks: AtomicU64,
    /// Unwind-rule lookups, those framehop's rule cache answered, and the misses on a rule
    /// cached before binaries were added or removed.
    pub rule_lookups: AtomicU64,
    pub rule_hits: AtomicU64,
    pub rule_misses_stale: AtomicU64,
}

/// Unwinds stack copies; owned by one thread.
pub struct Unwinder {
    processes: LruCache<u32, Process>,
    /// Shared with the leaf resolver, so that each binary's tables are held once.
    files: SharedModuleFiles,
    modules: SharedModules,
    cache: CacheX86_64,
    stats: Arc<UnwindStats>,
    ends: Option<Arc<ProcessEnds>>,
    recheck: Duration,
    /// Puts Python frames in the stacks of CPython processes, when given (shared with the
    /// allocator traces' unwinders).
    python: Option<Arc<Mutex<Interpreters>>>,
}

impl Unwinder {
    /// An unwinder told of processes' ends through `ends`, when the lifecycle programs run,
    /// reading binaries' unwind tables through `files`.
    #[must_use]
    pub fn new(
        stats: Arc<UnwindStats>,
        ends: Option<Arc<ProcessEnds>>,
        files: SharedModuleFiles,
    ) -> Unwinder {
        Unwinder {
            processes: LruCache::new(MAX_PROCESSES),
            files,
            modules: SharedModules::default(),
            cache: CacheX86_64::new(),
            stats,
            recheck: if ends.is_some() {
                RECHECK_INTERVAL_WITH_ENDS
            } else {
                RECHECK_INTERVAL
            },
            ends,
            python: None,
        }
    }

    /// This unwinder with CPython processes' Python frames put in their stacks.
    #[must_use]
    pub fn with_python(mut self, python: Arc<Mutex<Interpreters>>) -> Unwinder {
        self.python = Some(python);
        self
    }

    /// What the unwinder counts.
    #[must_use]
    pub fn stats(&self) -> &UnwindStats {
        &self.stats
    }

    /// Marks the kept processes that ended since the last call.
    pub fn note_ends(&mut self) {
        let Some(ends) = &self.ends else {
            return;
        };
        let (ended, overflowed) = ends.take();
        for (tgid, ts_ns) in ended {
            if let Some(p) = self.processes.peek_mut(&tgid) {
                p.ended_ns = Some(ts_ns);
            }
            if let Some(mut python) = self.python.as_ref().and_then(|p| p.lock().ok()) {
                python.forget(tgid);
            }
        }
        if overflowed {
            let long_ago = Instant::now().checked_sub(self.recheck);
            for (_, p) in self.processes.iter_mut() {
                p.checked_at = long_ago.unwrap_or(p.checked_at);
            }
        }
    }

    /// Unwinds one copy.
    pub fn unwind(&mut self, sample: &StackSample<'_>) -> UnwoundStack {
        let started = Instant::now();
        let unwound = self.unwind_inner(sample);
        let s = &self.stats;
        let rules = self.cache.stats();
        s.rule_lookups.store(rules.total(), Ordering::Relaxed);
        s.rule_hits.store(rules.hits(), Ordering::Relaxed);
        s.rule_misses_stale
            .store(rules.miss_wrong_modules_count, Ordering::Relaxed);
        s.samples.fetch_add(1, Ordering::Relaxed);
        s.bytes
            .fetch_add(sample.stack.len() as u64, Ordering::Relaxed);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        s.busy_ns.fetch_add(ns, Ordering::Relaxed);
        if unwound
            .frames()
            .skip(1)
            .all(|f| f.found_by != FoundBy::UnwindTables)
        {
            s.frame_pointers_only.fetch_add(1, Ordering::Relaxed);
        }
        match unwound.stop {
            None => {}
            Some(StackStop::CopyEnded { .. }) => {
                s.stopped_copy_ended.fetch_add(1, Ordering::Relaxed);
            }
            Some(StackStop::UnknownAddress) => {
                s.stopped_unknown_address.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                s.stopped_other.fetch_add(1, Ordering::Relaxed);
            }
        }
        unwound
    }

    fn unwind_inner(&mut self, sample: &StackSample<'_>) -> UnwoundStack {
        if self.ensure_process(sample.tgid, sample.ts_ns).is_none() {
            // Gone before its mappings could be read: frame pointers, unchecked, as the
            // kernel's walk would have given.
            return self.walk_unknown(sample);
        }
        if self
            .processes
            .peek(&sample.tgid)
            .is_some_and(|p| p.code_at(sample.ip).is_none())
        {
            // Code mapped after the mappings were read.
            self.remap(sample.tgid);
        }
        let first = self.walk(sample);
        if first.stop == Some(StackStop::UnknownAddress) && self.remap(sample.tgid) {
            return self.walk(sample);
        }
        first
    }

    /// Unwinds `sample` through its process's mappings.
    fn walk(&mut self, sample: &StackSample<'_>) -> UnwoundStack {
        let Some(process) = self.processes.get(&sample.tgid) else {
            return self.walk_unknown(sample);
        };
        let mut frames = Vec::new();
        // A frameless Go leaf: its caller is on top of the stack; unwinding goes on from there
        // (the frame pointer would give the caller's caller).
        let start = match process.go_leaf_return(sample.ip, sample.sp) {
            Some(at) => match sample.word(at) {
                Some(ra) if process.code_at(ra).is_some() => {
                    frames.push(UnwoundFrame {
                        addr: sample.ip,
                        found_by: FoundBy::Registers,
                    });
                    (ra, at + 8)
                }
                _ => (sample.ip, sample.sp),
            },
            None => (sample.ip, sample.sp),
        };
        let stop = walk::walk(
            &self.modules,
            &mut self.cache,
            sample,
            Some(process),
            start,
            &mut frames,
        );
        if let Some(mut python) = self.python.as_ref().and_then(|p| p.lock().ok()) {
            python.merge(sample, &mut frames);
        }
        UnwoundStack::new(&frames, stop)
    }

    /// Frame pointers only, every address taken as it is: for a process whose mappings are
    /// unknown.
    fn walk_unknown(&mut self, sample: &StackSample<'_>) -> UnwoundStack {
        let mut frames = Vec::new();
        let stop = walk::walk(
            &self.modules,
            &mut self.cache,
            sample,
            None,
            (sample.ip, sample.sp),
            &mut frames,
        );
        UnwoundStack::new(&frames, stop)
    }

    /// Makes sure the process with pid `tgid` at `ts_ns` is known, and is the one kept.
    fn ensure_process(&mut self, tgid: u32, ts_ns: u64) -> Option<()> {
        if let Some(p) = self.processes.get_mut(&tgid) {
            let reused = p.ended_ns.is_some_and(|ended| ts_ns > ended);
            if !reused && p.checked_at.elapsed() < self.recheck {
                return Some(());
            }
            match memlens_procfs::start_time_ns(tgid) {
                Ok(start) if start == p.start_ns => {
                    p.checked_at = Instant::now();
                    p.ended_ns = None;
                    return Some(());
                }
                _ => {
                    self.processes.pop(&tgid);
                }
            }
        }
        let start_ns = memlens_procfs::start_time_ns(tgid).ok()?;
        let process = self.load(tgid, start_ns)?;
        self.processes.put(tgid, process);
        Some(())
    }

    /// Re-reads the mappings of `tgid` if it was not done within `REMAP_INTERVAL` (code loaded
    /// after the process was first seen: dlopen, plugins), or if it has exec'd since. True when
    /// they were re-read.
    fn remap(&mut self, tgid: u32) -> bool {
        let Some(p) = self.processes.peek(&tgid) else {
            return false;
        };
        if p.mapped_at.elapsed() < REMAP_INTERVAL && memlens_procfs::image(tgid).ok() == p.image {
            return false;
        }
        let start_ns = p.start_ns;
        tracing::debug!("pid {tgid}: reading its mappings again");
        match self.load(tgid, start_ns) {
            Some(process) => {
                self.stats.remaps.fetch_add(1, Ordering::Relaxed);
                self.processes.put(tgid, process);
                true
            }
            None => false,
        }
    }

    /// Reads the mappings of `tgid` and places the binaries it maps.
    fn load(&mut self, tgid: u32, start_ns: u64) -> Option<Process> {
        let started = Instant::now();
        self.modules.sweep();
        let process = self.load_inner(tgid, start_ns);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.load_ns.fetch_add(ns, Ordering::Relaxed);
        process
    }

    fn load_inner(&mut self, tgid: u32, start_ns: u64) -> Option<Process> {
        // Before the mappings: an exec in between makes the next miss read them again.
        let image = memlens_procfs::image(tgid).ok();
        let maps = maps::read_maps(tgid).ok()?;
        let mut code = Vec::new();
        for mapping in maps.iter().filter(|m| m.executable) {
            let file = if mapping.inode == 0 {
                None
            } else {
                let got = self
                    .files
                    .lock()
                    .ok()
                    .and_then(|mut f| f.get(tgid, mapping));
                got.and_then(|f| Some((Arc::clone(&f), f.bias(mapping)?)))
            };
            let canonical = file.as_ref().and_then(|(f, _)| self.modules.base_of(f));
            code.push(Code {
                start: mapping.start,
                end: mapping.end,
                file,
                canonical,
            });
        }
        code.sort_unstable_by_key(|c| c.start);
        if let Some(mut python) = self.python.as_ref().and_then(|p| p.lock().ok()) {
            python.inspect(tgid, start_ns, &maps);
        }
        if let Ok(files) = self.files.lock() {
            self.stats
                .files_loaded
                .store(files.loaded, Ordering::Relaxed);
            self.stats
                .table_bytes
                .store(files.bytes() as u64, Ordering::Relaxed);
        }
        self.stats
            .modules
            .store(self.modules.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        Some(Process {
            start_ns,
            image,
            code,
            mapped_at: now,
            checked_at: now,
            ended_ns: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;

    use super::*;

    /// A copy of this thread's registers and stack, taken inside `capture`, unwound.
    #[inline(never)]
    fn capture(unwinder: &mut Unwinder) -> UnwoundStack {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        let maps = maps::read_maps(std::process::id()).expect("own maps");
        let top = maps::find(&maps, sp).expect("the stack is mapped").end;
        let len = (top - sp).min(16384) as usize;
        // SAFETY: [sp, sp + len) is inside this thread's stack mapping, above the stack pointer.
        let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        let sample = StackSample {
            ts_ns: 1,
            tgid: std::process::id(),
            pid: 0,
            ip,
            sp,
            bp,
            first_superblock: 0,
            superblocks: 1,
            stack: &stack,
            python: memlens_model::user_stack::PythonRecords::NONE,
        };
        unwinder.unwind(&sample)
    }

    #[inline(never)]
    fn middle(unwinder: &mut Unwinder, depth: u32) -> UnwoundStack {
        if black_box(depth) == 0 {
            capture(unwinder)
        } else {
            black_box(middle(unwinder, depth - 1))
        }
    }

    #[test]
    fn a_pid_is_read_again_only_for_copies_taken_after_its_process_ended() {
        let ends = Arc::new(ProcessEnds::default());
        let mut unwinder = Unwinder::new(Arc::default(), Some(Arc::clone(&ends)), Arc::default());
        let me = std::process::id();
        let start = |u: &Unwinder| u.processes.peek(&me).map(|p| p.start_ns);
        unwinder.ensure_process(me, 10).expect("own process");
        let real = start(&unwinder);
        // Stand-in for the process that had the pid before: another start time.
        if let Some(p) = unwinder.processes.peek_mut(&me) {
            p.start_ns = 1;
        }
        ends.push(me, 20);
        unwinder.note_ends();
        unwinder.ensure_process(me, 15).expect("kept");
        assert_eq!(
            start(&unwinder),
            Some(1),
            "taken before the end: not read again"
        );
        unwinder.ensure_process(me, 30).expect("read again");
        assert_eq!(
            start(&unwinder),
            real,
            "taken after the end: the pid's new process"
        );
        assert_eq!(unwinder.processes.peek(&me).and_then(|p| p.ended_ns), None);
    }

    #[test]
    fn a_thread_without_frame_pointers_unwinds_to_its_entry() {
        let stats = Arc::new(UnwindStats::default());
        let mut unwinder = Unwinder::new(Arc::clone(&stats), None, Arc::default());
        // A thread of its own: its stack is shallow, so the copy reaches the thread's entry.
        let stack = std::thread::spawn(move || middle(&mut unwinder, 5))
            .join()
            .expect("thread");
        assert_eq!(stack.stop, None, "{stack:?}");
        // capture, six `middle`s, the closure and std's thread start-up, glibc's start_thread.
        let frames: Vec<UnwoundFrame> = stack.frames().collect();
        assert!(frames.len() >= 9, "{} frames", frames.len());
        assert_eq!(frames[0].found_by, FoundBy::Registers);
        assert!(frames[1..]
            .iter()
            .all(|f| f.found_by == FoundBy::UnwindTables));
        // The six calls of `middle` return to the same instruction.
        let middle_returns = frames.iter().filter(|f| f.addr == frames[2].addr).count();
        assert!(middle_returns >= 5, "{stack:?}");
        assert_eq!(stats.samples.load(Ordering::Relaxed), 1);
    }
}
