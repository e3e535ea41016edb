//! Python frames at sampled allocations.
//!
//! A CPython process's native stack shows the interpreter (`_PyEval_EvalFrameDefault`), not the
//! Python functions it runs: those are a chain of `_PyInterpreterFrame`s in the interpreter's own
//! memory, which only stays as it is while the thread runs there. So at each sampled allocation
//! of a process the agent named in `PYTHON` the kernel program also finds the thread's state
//! (`PyThreadState`, by its `native_thread_id`) and walks its frame chain, recording per frame the
//! code object and instruction pointer. The agent reads the code objects (names, file, line table)
//! from the process later, once per code object.
//!
//! The offsets differ between CPython versions (and its structs are not in any BTF), so the agent
//! works them out per process from the version its binary names and checks them against the
//! process's memory before it names the process.

/// Python frames recorded per sample at most (innermost first; a deeper chain is cut).
pub const PYTHON_FRAMES_MAX: usize = 64;

/// Thread states looked at when searching for the current thread's (a thread state found is
/// remembered per thread, so a process's threads are searched once each).
pub const PYTHON_THREADS_MAX: usize = 128;

/// Bytes of a frame read at once, from its start: every frame field the program takes must lie
/// in it (the agent checks a layout before naming a process). A power of two: field offsets are
/// masked with it.
pub const PYTHON_FRAME_WINDOW: usize = 128;

/// An offset the version does not have.
pub const NO_FIELD: u16 = u16::MAX;

/// Where one process's interpreter keeps its thread states and frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProcess {
    /// The address, in the process, of `_PyRuntime.interpreters.head`: the main interpreter
    /// (`PyInterpreterState *`) is read from there.
    pub interpreters_head: u64,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.native_thread_id`: the kernel's thread id.
    pub tstate_native_thread_id: u16,
    /// `PyThreadState.cframe` (3.11, 3.12), or `PyThreadState.current_frame` (3.13 on).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12); `NO_FIELD` when `tstate_frame` is the frame.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.f_code` (3.11, 3.12) or `f_executable` (3.13 on).
    pub frame_code: u16,
    /// `_PyInterpreterFrame.previous`: the calling frame.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.prev_instr` (3.11, 3.12) or `instr_ptr` (3.13 on).
    pub frame_instr: u16,
    /// `_PyInterpreterFrame.is_entry` (3.11 only; `NO_FIELD` after).
    pub frame_is_entry: u16,
    /// `_PyInterpreterFrame.owner` (one byte).
    pub frame_owner: u16,
    /// The lowest owner value of the shim frames that end one `_PyEval_EvalFrameDefault` call's
    /// frames (3.12 on: the C stack's entry frames, which run no Python code); `NO_FIELD`
    /// before 3.12.
    pub owner_shim: u16,
    pub reserved: [u16; 5],
}

/// Flag bits in the low bits of [`PythonFrame::code`] (code objects are 8-byte aligned, and
/// 3.14's tagged references use the lowest bit: the program clears the low 3 bits first).
pub const FRAME_CODE_FLAGS: u64 = 7;
/// The frame is the first of its `_PyEval_EvalFrameDefault` call (3.11's `is_entry`).
pub const FRAME_ENTRY: u64 = 1;
/// The frame is a C stack shim (3.12 on): no Python function; the frames inside it (recorded
/// before it) are one `_PyEval_EvalFrameDefault` call's.
pub const FRAME_SHIM: u64 = 2;

/// One Python frame as the program found it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonFrame {
    /// The code object's address, with [`FRAME_ENTRY`] or [`FRAME_SHIM`] in its low bits.
    pub code: u64,
    /// The frame's instruction pointer.
    pub instr: u64,
}

/// What the walk of a sample's Python frames found.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonWalk {
    /// Not a process the agent named as Python (or the walk is off).
    NotPython = 0,
    /// Every frame of the chain is recorded.
    Complete = 1,
    /// The chain is deeper than [`PYTHON_FRAMES_MAX`]: its outermost frames are missing.
    Cut = 2,
    /// The thread has no thread state among the first [`PYTHON_THREADS_MAX`]: a thread that
    /// never ran Python.
    NoThreadState = 3,
    /// A read of the interpreter's memory failed (a page not present, torn state).
    ReadFailed = 4,
}

impl PythonWalk {
    /// The variant numbered `n`, if any.
    #[must_use]
    pub fn from_u32(n: u32) -> Option<PythonWalk> {
        Some(match n {
            0 => PythonWalk::NotPython,
            1 => PythonWalk::Complete,
            2 => PythonWalk::Cut,
            3 => PythonWalk::NoThreadState,
            4 => PythonWalk::ReadFailed,
            _ => return None,
        })
    }
}

/// Bytes of Python frames a record may carry.
pub const PYTHON_FRAMES_BYTES: usize = PYTHON_FRAMES_MAX * size_of::<PythonFrame>();

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of integer fields, no padding.
    unsafe impl aya::Pod for super::PythonProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PythonFrame {}
}
