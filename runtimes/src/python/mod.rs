//! Python frames in native stacks: CPython processes found as the unwinder meets them, named to
//! the kernel programs (which then walk each sample's Python frames, see
//! `memlens_common::python`), and the frames they record resolved to function, file and line and
//! put in place of the interpreter's native frames.
//!
//! Each call of `_PyEval_EvalFrameDefault` runs a stretch of the frame chain: from the current
//! frame out to an entry frame (3.11 marks it `is_entry`; from 3.12 a shim frame owned by the C
//! stack follows it). The stretches, innermost first, take the places of the native frames in
//! the evaluation loop, innermost first, so native and Python frames read in the order they
//! were called (`malloc <- zlib_compress <- compress_all (app.py:12) <- main (app.py:30)`).
//! Stretches beyond the native frames unwound (a copy too short to reach them) follow the last
//! native frame. A CPython whose frames cannot be read (too old, unknown, not matching its
//! layout) keeps its native frames, with a frame saying why above each evaluation loop's.

pub mod binary;
mod code;
mod layout;
mod linetable;

use std::{
    collections::HashMap,
    fs::File,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use memlens_common::python::{PythonWalk, FRAME_CODE_FLAGS, FRAME_ENTRY, FRAME_SHIM};
use memlens_model::{
    python::{PythonFrame, PythonFrameId, PythonFrames, PythonProcesses},
    user_stack::{FoundBy, StackSample, UnwoundFrame},
};
use memlens_procfs::{mem::read_remote, FileKey, Mapping};

use binary::PythonBinary;
use code::CodeInfo;
pub use layout::{Layout, LayoutError};

/// CPython binaries whose symbols are remembered, by [`FileKey`].
const MAX_BINARIES: NonZeroUsize = NonZeroUsize::new(64).expect("non-zero");
/// Code objects remembered, over every process (a large service runs through a few thousand).
const MAX_CODES: NonZeroUsize = NonZeroUsize::new(16_384).expect("non-zero");
/// Resolved (code object, instruction) pairs remembered, over every process.
const MAX_INSTRUCTIONS: NonZeroUsize = NonZeroUsize::new(65_536).expect("non-zero");
/// A CPython process not initialized yet (its main interpreter has no thread) is looked at
/// again at its next sample this long after: soon, since a program starts allocating right
/// after (the look is three reads of its memory).
const RETRY: Duration = Duration::from_millis(10);
/// How often the processes met are checked to still run (when the unwinder is not told of
/// processes' ends, those that ended would otherwise stay named, up to the map's bound).
const SWEEP: Duration = Duration::from_secs(60);

/// What the Python reader did, readable from any thread.
#[derive(Debug, Default)]
pub struct PythonStats {
    /// CPython processes whose frames the programs walk now.
    pub named: AtomicU64,
    /// CPython processes found whose frames are not read (a version before 3.11, an unknown
    /// one, memory not matching the layout), and those not named because the map was full.
    pub unread: AtomicU64,
    pub map_full: AtomicU64,
    /// Samples of named processes, and of them those whose walk found no thread state (a
    /// thread that never ran Python) or failed to read, or was cut at the frame limit.
    pub samples: AtomicU64,
    pub no_thread_state: AtomicU64,
    pub read_failed: AtomicU64,
    pub cut: AtomicU64,
    /// Python frames put in stacks, and code objects read (and of them, failed).
    pub frames: AtomicU64,
    pub code_reads: AtomicU64,
    pub code_errors: AtomicU64,
    /// Time spent resolving frames (reading code objects included), in ns.
    pub busy_ns: AtomicU64,
}

/// How one CPython process is read.
#[derive(Debug)]
struct Reader {
    layout: Layout,
    code_type: Option<u64>,
    eval: Option<(u64, u64)>,
}

#[derive(Debug)]
enum State {
    /// Named to the programs.
    Read(Arc<Reader>),
    /// Not initialized yet when last looked at.
    Starting {
        binary: Arc<PythonBinary>,
        bias: u64,
        tried: Instant,
    },
    /// Its frames are not read; `note` says why, above each evaluation loop's frame.
    Unread {
        eval: Option<(u64, u64)>,
        note: PythonFrameId,
    },
}

#[derive(Debug)]
struct Process {
    start_ns: u64,
    binary: FileKey,
    state: State,
}

/// The CPython processes met, and what their frames were resolved to.
pub struct Interpreters {
    binaries: LruCache<FileKey, Option<Arc<PythonBinary>>>,
    processes: HashMap<u32, Process>,
    codes: LruCache<(u32, u64), Option<Arc<CodeInfo>>>,
    instructions: LruCache<(u32, u64, u64), PythonFrameId>,
    frames: Arc<PythonFrames>,
    registry: Box<dyn PythonProcesses>,
    stats: Arc<PythonStats>,
    swept: Instant,
}

impl Interpreters {
    /// Resolves frames into `frames` and names processes in `registry`, whose processes named
    /// by a previous agent are taken as this one's until they are met again.
    #[must_use]
    pub fn new(
        frames: Arc<PythonFrames>,
        registry: Box<dyn PythonProcesses>,
        stats: Arc<PythonStats>,
    ) -> Interpreters {
        Interpreters {
            binaries: LruCache::new(MAX_BINARIES),
            processes: HashMap::new(),
            codes: LruCache::new(MAX_CODES),
            instructions: LruCache::new(MAX_INSTRUCTIONS),
            frames,
            registry,
            stats,
            swept: Instant::now(),
        }
    }

    /// What the reader counts.
    #[must_use]
    pub fn stats(&self) -> &Arc<PythonStats> {
        &self.stats
    }

    /// Looks at process `tgid` (started at `start_ns`), whose mappings were just read as
    /// `maps`: a CPython process not known yet is named to the programs; one that is no longer
    /// (an exec) is forgotten.
    pub fn inspect(&mut self, tgid: u32, start_ns: u64, maps: &[Mapping]) {
        // The interpreter is in the executable (Debian's python3) or in libpython (a launcher
        // executable named python3.x beside it, or a program embedding Python).
        let candidates = maps
            .iter()
            .filter(|m| m.inode != 0 && m.offset == 0 && binary::may_be_python(&m.module_name()));
        let mut found = None;
        for mapping in candidates {
            let Ok(key) = mapping.file_key(tgid) else {
                continue;
            };
            if self
                .processes
                .get(&tgid)
                .is_some_and(|p| p.start_ns == start_ns && p.binary == key)
            {
                return;
            }
            if let Some(binary) = self.binary(tgid, mapping, &key) {
                found = Some((mapping, key, binary));
                break;
            }
        }
        self.forget(tgid);
        let Some((mapping, key, binary)) = found else {
            return;
        };
        let bias = binary.bias(mapping.start);
        let state = self.start(tgid, &binary, bias);
        self.processes.insert(
            tgid,
            Process {
                start_ns,
                binary: key,
                state,
            },
        );
    }

    /// Forgets process `tgid` (it ended, or runs something else now).
    pub fn forget(&mut self, tgid: u32) {
        // Named perhaps by a previous agent, if not by this one.
        self.registry.forget(tgid);
        if let Some(p) = self.processes.remove(&tgid) {
            match p.state {
                State::Read(_) => {
                    self.stats.named.fetch_sub(1, Ordering::Relaxed);
                }
                State::Unread { .. } => {
                    self.stats.unread.fetch_sub(1, Ordering::Relaxed);
                }
                State::Starting { .. } => {}
            }
        }
    }

    /// Forgets the processes met that ended (their start time no longer that of their pid), at
    /// most every `SWEEP`.
    fn sweep(&mut self) {
        if self.swept.elapsed() < SWEEP {
            return;
        }
        self.swept = Instant::now();
        let ended: Vec<u32> = self
            .processes
            .iter()
            .filter(|(tgid, p)| memlens_procfs::start_time_ns(**tgid).ok() != Some(p.start_ns))
            .map(|(tgid, _)| *tgid)
            .collect();
        for tgid in ended {
            self.forget(tgid);
        }
    }

    /// Forgets the processes a previous agent named that this one has not met (called once the
    /// processes alive are known, so that a pid reused meanwhile is not walked).
    pub fn forget_unmet(&mut self, alive: impl Fn(u32) -> bool) {
        for tgid in self.registry.named() {
            if !self.processes.contains_key(&tgid) && !alive(tgid) {
                self.registry.forget(tgid);
            }
        }
    }

    /// The symbols of the binary `mapping` maps, read once per binary.
    fn binary(&mut self, tgid: u32, mapping: &Mapping, key: &FileKey) -> Option<Arc<PythonBinary>> {
        if let Some(known) = self.binaries.get(key) {
            return known.clone();
        }
        let read = File::open(mapping.map_file(tgid))
            .and_then(|f| binary::inspect(f, &mapping.module_name()));
        let found = match read {
            Ok(found) => found.map(Arc::new),
            Err(e) => {
                tracing::debug!("pid {tgid}: {}: {e}", mapping.path);
                return None;
            }
        };
        self.binaries.put(key.clone(), found.clone());
        found
    }

    /// Works out how to read the process and names it to the programs when it can.
    fn start(&mut self, tgid: u32, binary: &Arc<PythonBinary>, bias: u64) -> State {
        let eval = binary
            .eval
            .map(|(s, e)| (s.wrapping_add(bias), e.wrapping_add(bias)));
        let runtime = binary.runtime.wrapping_add(bias);
        let layout = match binary.version {
            None => Err("CPython of unknown version: Python frames not read".to_string()),
            Some(v) => {
                let mut published = vec![0u8; Layout::published_len(v)];
                match read_remote(tgid, runtime, &mut published) {
                    Ok(()) => Layout::of_version(v, &published).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reading CPython {v}'s runtime state: {e}")),
                }
            }
        };
        let layout = layout.and_then(|l| {
            if l.fits_window() {
                Ok(l)
            } else {
                Err(
                    "frame fields beyond what the kernel program reads: Python frames not read"
                        .to_string(),
                )
            }
        });
        let unread = |me: &mut Interpreters, why: String| {
            tracing::info!("pid {tgid}: {why}");
            me.stats.unread.fetch_add(1, Ordering::Relaxed);
            State::Unread {
                eval,
                note: me.frames.intern(PythonFrame {
                    function: format!("[{why}]").into(),
                    file: "".into(),
                    line: 0,
                }),
            }
        };
        let layout = match layout {
            Ok(l) => l,
            Err(why) => return unread(self, why),
        };
        match initialized(tgid, &layout, runtime) {
            Ok(false) => State::Starting {
                binary: Arc::clone(binary),
                bias,
                tried: Instant::now(),
            },
            Err(why) => unread(self, why),
            Ok(true) => {
                if !self.registry.name(tgid, &layout.kernel(runtime)) {
                    self.stats.map_full.fetch_add(1, Ordering::Relaxed);
                    return unread(self, "too many Python processes: frames not read".into());
                }
                self.stats.named.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("pid {tgid}: CPython frames read");
                State::Read(Arc::new(Reader {
                    layout,
                    code_type: binary.code_type.map(|t| t.wrapping_add(bias)),
                    eval,
                }))
            }
        }
    }

    /// Puts the Python frames recorded with `sample` in the place of their evaluation loop's
    /// native frames in `frames` (the sample's unwound stack, innermost first).
    pub fn merge(&mut self, sample: &StackSample<'_>, frames: &mut Vec<UnwoundFrame>) {
        self.sweep();
        let tgid = sample.tgid;
        let Some(process) = self.processes.get_mut(&tgid) else {
            return;
        };
        if let State::Starting {
            binary,
            bias,
            tried,
        } = &process.state
        {
            if tried.elapsed() < RETRY {
                return;
            }
            let (binary, bias) = (Arc::clone(binary), *bias);
            let state = self.start(tgid, &binary, bias);
            if let Some(p) = self.processes.get_mut(&tgid) {
                p.state = state;
            }
        }
        let Some(process) = self.processes.get(&tgid) else {
            return;
        };
        match &process.state {
            State::Starting { .. } => {}
            State::Unread { eval, note } => {
                let note = UnwoundFrame {
                    addr: note.address(),
                    found_by: FoundBy::UnwindTables,
                };
                let mut out = Vec::with_capacity(frames.len() + 1);
                for f in frames.drain(..) {
                    if in_range(*eval, f) {
                        out.push(note);
                    }
                    out.push(f);
                }
                *frames = out;
            }
            State::Read(reader) => {
                let reader = Arc::clone(reader);
                let started = Instant::now();
                self.splice(sample, &reader, frames);
                let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }

    fn splice(
        &mut self,
        sample: &StackSample<'_>,
        reader: &Reader,
        frames: &mut Vec<UnwoundFrame>,
    ) {
        let s = &self.stats;
        s.samples.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(
            "pid {}: {:?}, {} Python frames",
            sample.tgid,
            sample.python.walk,
            sample.python.frames().len()
        );
        match sample.python.walk {
            PythonWalk::NoThreadState => s.no_thread_state.fetch_add(1, Ordering::Relaxed),
            PythonWalk::ReadFailed => s.read_failed.fetch_add(1, Ordering::Relaxed),
            PythonWalk::Cut => s.cut.fetch_add(1, Ordering::Relaxed),
            PythonWalk::Complete | PythonWalk::NotPython => 0,
        };
        let mut runs: Vec<Vec<UnwoundFrame>> = Vec::new();
        let mut run = Vec::new();
        for record in sample.python.frames() {
            let flags = record.code & FRAME_CODE_FLAGS;
            if flags & FRAME_SHIM != 0 {
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            let id = self.resolve(
                sample.tgid,
                reader,
                record.code & !FRAME_CODE_FLAGS,
                record.instr,
            );
            run.push(UnwoundFrame {
                addr: id.address(),
                found_by: FoundBy::UnwindTables,
            });
            if flags & FRAME_ENTRY != 0 {
                runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        if runs.is_empty() {
            return;
        }
        let added: usize = runs.iter().map(Vec::len).sum();
        self.stats.frames.fetch_add(added as u64, Ordering::Relaxed);
        let mut runs = runs.into_iter();
        let mut out = Vec::with_capacity(frames.len() + added);
        for f in frames.drain(..) {
            if in_range(reader.eval, f) {
                if let Some(run) = runs.next() {
                    out.extend(run);
                    continue;
                }
            }
            out.push(f);
        }
        // Stretches whose evaluation loop's native frame the unwinding did not reach.
        out.extend(runs.flatten());
        *frames = out;
    }

    /// The frame the code object at `code` ran at `instr` in process `tgid`.
    fn resolve(&mut self, tgid: u32, reader: &Reader, code: u64, instr: u64) -> PythonFrameId {
        if let Some(&id) = self.instructions.get(&(tgid, code, instr)) {
            return id;
        }
        let info = match self.codes.get(&(tgid, code)) {
            Some(known) => known.clone(),
            None => {
                self.stats.code_reads.fetch_add(1, Ordering::Relaxed);
                let read = code::read_code(tgid, &reader.layout, reader.code_type, code);
                let info = match read {
                    Ok(info) => Some(Arc::new(info)),
                    Err(e) => {
                        tracing::debug!("pid {tgid}: {e}");
                        self.stats.code_errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                self.codes.put((tgid, code), info.clone());
                info
            }
        };
        let frame = match &info {
            Some(info) => PythonFrame {
                function: Arc::clone(&info.function),
                file: Arc::clone(&info.file),
                line: line_at(info, instr),
            },
            None => PythonFrame {
                function: "[Python frame not read]".into(),
                file: "".into(),
                line: 0,
            },
        };
        let id = self.frames.intern(frame);
        if info.is_some() {
            self.instructions.put((tgid, code, instr), id);
        }
        id
    }
}

/// The line of the instruction at `instr` (the frame's last instruction started; the start of
/// the function before its first).
fn line_at(info: &CodeInfo, instr: u64) -> u32 {
    let first = u32::try_from(info.first_line).unwrap_or(0);
    let Some(offset) = instr.checked_sub(info.code_start) else {
        return first;
    };
    u32::try_from(offset / 2)
        .ok()
        .and_then(|index| linetable::line_of(&info.linetable, info.first_line, index))
        .unwrap_or(first)
}

/// Whether native frame `f` is in the function at `range`.
fn in_range(range: Option<(u64, u64)>, f: UnwoundFrame) -> bool {
    let Some((start, end)) = range else {
        return false;
    };
    // A return address is just after its call, which may be the function's last instruction.
    let at = if f.found_by == FoundBy::Registers {
        f.addr
    } else {
        f.addr.wrapping_sub(1)
    };
    (start..end).contains(&at)
}

/// Whether the runtime at `runtime` has a main interpreter with a thread (Ok(false): not yet),
/// checked against the layout: the thread's state must point back at its interpreter.
fn initialized(tgid: u32, layout: &Layout, runtime: u64) -> Result<bool, String> {
    let word = |addr: u64| {
        let mut buf = [0u8; 8];
        read_remote(tgid, addr, &mut buf)
            .map(|()| u64::from_le_bytes(buf))
            .map_err(|e| format!("reading the interpreter state: {e}"))
    };
    let interp = word(runtime.wrapping_add(layout.walk.interpreters_head))?;
    if interp == 0 {
        return Ok(false);
    }
    let tstate = word(interp.wrapping_add(u64::from(layout.walk.interp_threads_head)))?;
    if tstate == 0 {
        return Ok(false);
    }
    if word(tstate.wrapping_add(u64::from(layout.tstate_interp)))? != interp {
        return Err(
            "its memory does not match the known layout of its version: Python frames not read"
                .into(),
        );
    }
    Ok(true)
}
