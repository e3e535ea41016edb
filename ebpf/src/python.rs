//! The Python frames of the current thread, for processes the agent named as CPython (see
//! `memlens_common::python`).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use memlens_common::python::{
    PythonFrame, PythonProcess, PythonWalk, FRAME_CODE_FLAGS, FRAME_ENTRY, FRAME_SHIM, NO_FIELD,
    PYTHON_FRAMES_MAX, PYTHON_THREADS_MAX,
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

/// What [`walk`] found: the walk's outcome and how many frames it wrote.
pub struct Walked {
    pub outcome: PythonWalk,
    pub frames: usize,
}

impl Walked {
    const NONE: Walked = Walked {
        outcome: PythonWalk::NotPython,
        frames: 0,
    };
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u8(addr: u64) -> Option<u8> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

#[inline(always)]
fn at(base: u64, offset: u16) -> u64 {
    base.wrapping_add(u64::from(offset))
}

/// Writes the current thread's Python frames, innermost first, into `out` (at most
/// `PYTHON_FRAMES_MAX` [`PythonFrame`]s) when process `tgid` is one the agent named.
#[inline(always)]
pub fn walk(tgid: u32, tid: u32, out: &mut [u8]) -> Walked {
    // SAFETY: the value is copied out before any map update.
    let Some(p) = (unsafe { PYTHON.get(&tgid) }).copied() else {
        return Walked::NONE;
    };
    let failed = Walked {
        outcome: PythonWalk::ReadFailed,
        frames: 0,
    };
    let tstate = match thread_state(&p, tid) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Walked {
                outcome: PythonWalk::NoThreadState,
                frames: 0,
            }
        }
        Err(()) => return failed,
    };
    let Some(mut frame) = read_u64(at(tstate, p.tstate_frame)) else {
        return failed;
    };
    if p.cframe_current_frame != NO_FIELD && frame != 0 {
        let Some(f) = read_u64(at(frame, p.cframe_current_frame)) else {
            return failed;
        };
        frame = f;
    }
    let mut n = 0;
    for _ in 0..PYTHON_FRAMES_MAX {
        if frame == 0 {
            return Walked {
                outcome: PythonWalk::Complete,
                frames: n,
            };
        }
        let (Some(code), Some(instr), Some(owner), Some(previous)) = (
            read_u64(at(frame, p.frame_code)),
            read_u64(at(frame, p.frame_instr)),
            read_u8(at(frame, p.frame_owner)),
            read_u64(at(frame, p.frame_previous)),
        ) else {
            return Walked {
                outcome: PythonWalk::ReadFailed,
                frames: n,
            };
        };
        let mut flags = 0;
        if p.frame_is_entry != NO_FIELD && read_u8(at(frame, p.frame_is_entry)).unwrap_or(0) != 0
        {
            flags |= FRAME_ENTRY;
        }
        if u16::from(owner) == p.owner_cstack {
            flags |= FRAME_SHIM;
        }
        let record = PythonFrame {
            code: (code & !FRAME_CODE_FLAGS) | flags,
            instr,
        };
        let offset = n * size_of::<PythonFrame>();
        let Some(dst) = out.get_mut(offset..offset + size_of::<PythonFrame>()) else {
            break;
        };
        // SAFETY: `dst` is `size_of::<PythonFrame>()` bytes of `out`; unaligned write.
        unsafe { core::ptr::write_unaligned(dst.as_mut_ptr().cast::<PythonFrame>(), record) };
        n += 1;
        frame = previous;
    }
    Walked {
        outcome: if frame == 0 {
            PythonWalk::Complete
        } else {
            PythonWalk::Cut
        },
        frames: n,
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
