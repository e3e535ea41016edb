//! The Python frames of the current thread, for processes the agent named as CPython (see
//! `memlens_common::python`).
//!
//! Written for the verifier as much as for the CPU: one read per frame (a window of the frame
//! struct, its fields taken at masked offsets), flags computed without branches, and the walk
//! run last in a program, so that the states it ends in (one per frame count) go through little
//! code after it.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use memlens_common::{
    python::{
        PythonFrame, PythonProcess, PythonWalk, FRAME_CODE_FLAGS, FRAME_ENTRY, FRAME_SHIM,
        PYTHON_FRAMES_MAX, PYTHON_FRAME_WINDOW, PYTHON_THREADS_MAX,
    },
    stack_copy::{STACK_COPY_DATA, STACK_COPY_MAX},
};

/// The CPython processes to walk, by tgid, with their interpreter's layout; written by the agent
/// (which sizes the map) as it finds them, removed when they end.
#[map]
static PYTHON: HashMap<u32, PythonProcess> = HashMap::with_max_entries(1, 0);

/// Each Python thread's thread state (`PyThreadState *`), by thread id, once found: checked
/// (its `native_thread_id` read again) at every use, searched for again when it no longer
/// matches.
#[map]
static PYTHON_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1, 0);

/// Room for one frame's window, with slack so that a field at any masked offset fits.
const WINDOW_ROOM: usize = 2 * PYTHON_FRAME_WINDOW;

/// Where a frame's window is read to (too large for comfort on the BPF stack).
#[map]
static PYTHON_WINDOW: PerCpuArray<[u8; WINDOW_ROOM]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one returns an error.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn at(base: u64, offset: u16) -> u64 {
    base.wrapping_add(u64::from(offset))
}

/// The little-endian value of `width` bytes at `offset` (masked into the window) of `window`.
#[inline(always)]
fn field(window: &[u8; WINDOW_ROOM], offset: u16, width: usize) -> u64 {
    let at = usize::from(offset) & (PYTHON_FRAME_WINDOW - 1);
    let mut value = 0u64;
    for i in 0..8 {
        if i < width {
            value |= u64::from(window[at + i]) << (8 * i);
        }
    }
    value
}

/// 1 when `x` is not zero, else 0, without a branch.
#[inline(always)]
fn non_zero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

/// Walks the current thread's Python frames into `data` after the `*len` bytes of stack there,
/// and writes how many and how the walk ended into `frames` and `outcome` (in a map value).
/// Returns the bytes of stack and frames, read back from there: the walk ends in one state per
/// frame count, and a value loaded from a map is one unknown instead. None when the stack
/// length read back is out of bounds.
#[inline(always)]
pub fn walk_after(
    tgid: u32,
    tid: u32,
    data: &mut [u8; STACK_COPY_DATA],
    len: &mut u32,
    frames: &mut u32,
    outcome: &mut u32,
) -> Option<usize> {
    // SAFETY: `len` is a valid, aligned u32; volatile so that the compiler does not forward the
    // value the caller stored (the verifier is to see one unknown, bounded below).
    let start = unsafe { core::ptr::read_volatile(len) } as usize;
    if start > STACK_COPY_MAX {
        return None;
    }
    let (walk, n) = walk(tgid, tid, data, start);
    *frames = n as u32;
    *outcome = walk as u32;
    // SAFETY: as above.
    let n = unsafe { core::ptr::read_volatile(frames) } as usize;
    if n > PYTHON_FRAMES_MAX {
        return None;
    }
    Some(start + n * size_of::<PythonFrame>())
}

/// Writes the current thread's Python frames, innermost first, into `data` from `start` (at
/// most `PYTHON_FRAMES_MAX` [`PythonFrame`]s) when process `tgid` is one the agent named.
#[inline(always)]
fn walk(tgid: u32, tid: u32, data: &mut [u8; STACK_COPY_DATA], start: usize) -> (PythonWalk, usize) {
    // SAFETY: the value is copied out before any map update.
    let Some(p) = (unsafe { PYTHON.get(&tgid) }).copied() else {
        return (PythonWalk::NotPython, 0);
    };
    let Some(window) = PYTHON_WINDOW.get_ptr_mut(0) else {
        return (PythonWalk::ReadFailed, 0);
    };
    // SAFETY: per-CPU map value; the programs using it do not nest on one CPU.
    let window = unsafe { &mut *window };
    let tstate = match thread_state(&p, tid) {
        Ok(Some(t)) => t,
        Ok(None) => return (PythonWalk::NoThreadState, 0),
        Err(()) => return (PythonWalk::ReadFailed, 0),
    };
    let Some(mut frame) = read_u64(at(tstate, p.tstate_frame)) else {
        return (PythonWalk::ReadFailed, 0);
    };
    if p.cframe_current_frame != memlens_common::python::NO_FIELD && frame != 0 {
        let Some(f) = read_u64(at(frame, p.cframe_current_frame)) else {
            return (PythonWalk::ReadFailed, 0);
        };
        frame = f;
    }
    let entry_mask = non_zero(u64::from(p.frame_is_entry ^ memlens_common::python::NO_FIELD));
    let mut n = 0;
    for _ in 0..PYTHON_FRAMES_MAX {
        if frame == 0 {
            return (PythonWalk::Complete, n);
        }
        // SAFETY: the destination is the window's first PYTHON_FRAME_WINDOW bytes; the helper
        // checks the user address and fails on an unmapped page.
        let read = unsafe {
            bpf_probe_read_user(
                window.as_mut_ptr().cast(),
                PYTHON_FRAME_WINDOW as u32,
                frame as *const core::ffi::c_void,
            )
        };
        if read != 0 {
            return (PythonWalk::ReadFailed, n);
        }
        let code = field(window, p.frame_code, 8);
        let instr = field(window, p.frame_instr, 8);
        let previous = field(window, p.frame_previous, 8);
        let is_entry = non_zero(field(window, p.frame_is_entry, 1)) & entry_mask;
        let owner = field(window, p.frame_owner, 1);
        // owner >= owner_shim, both small: the difference's sign bit is clear.
        let shim = 1 - (owner.wrapping_sub(u64::from(p.owner_shim)) >> 63);
        let record = PythonFrame {
            code: (code & !FRAME_CODE_FLAGS) | (is_entry * FRAME_ENTRY) | (shim * FRAME_SHIM),
            instr,
        };
        let offset = start + n * size_of::<PythonFrame>();
        let Some(dst) = data.get_mut(offset..offset + size_of::<PythonFrame>()) else {
            return (PythonWalk::Cut, n);
        };
        // SAFETY: `dst` is `size_of::<PythonFrame>()` bytes of `data`; unaligned write.
        unsafe { core::ptr::write_unaligned(dst.as_mut_ptr().cast::<PythonFrame>(), record) };
        n += 1;
        frame = previous;
    }
    if frame == 0 {
        (PythonWalk::Complete, n)
    } else {
        (PythonWalk::Cut, n)
    }
}

/// The thread state of thread `tid` in the process's main interpreter: the one remembered if it
/// still names the thread, else found on the interpreter's list of thread states. `Ok(None)`
/// when the thread has none (it never ran Python).
#[inline(always)]
fn thread_state(p: &PythonProcess, tid: u32) -> Result<Option<u64>, ()> {
    // SAFETY: the value is copied out before any map update.
    if let Some(&known) = unsafe { PYTHON_THREADS.get(&tid) } {
        if read_u64(at(known, p.tstate_native_thread_id)) == Some(u64::from(tid)) {
            return Ok(Some(known));
        }
    }
    let interp = read_u64(p.interpreters_head).ok_or(())?;
    if interp == 0 {
        return Ok(None);
    }
    let mut tstate = read_u64(at(interp, p.interp_threads_head)).ok_or(())?;
    for _ in 0..PYTHON_THREADS_MAX {
        if tstate == 0 {
            return Ok(None);
        }
        if read_u64(at(tstate, p.tstate_native_thread_id)) == Some(u64::from(tid)) {
            let _ = PYTHON_THREADS.insert(&tid, &tstate, 0);
            return Ok(Some(tstate));
        }
        tstate = read_u64(at(tstate, p.tstate_next)).ok_or(())?;
    }
    Ok(None)
}
