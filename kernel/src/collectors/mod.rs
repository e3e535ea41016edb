//! Collectors: turn kernel maps and the kernel's page state into plain data for the model.

use std::{os::fd::RawFd, time::Duration};

use memlens_model::user_stack::PythonRecords;

pub mod alloc_events;
pub mod census;
pub mod lifecycle;
pub mod page_cache;
pub mod stack_copies;
pub mod stack_gc;

/// Waits up to `timeout` for descriptor `fd` (a ring buffer's) to have data; true when it has.
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd for the duration of the call; a closed descriptor makes poll report
    // POLLNVAL, not undefined behaviour.
    unsafe { libc::poll(&mut fds, 1, ms) > 0 }
}

/// Splits what follows a stack copy record's header: up to `len` bytes of stack, then
/// `python_frames` Python frames walked as `python_walk` says (fewer when the record is short).
fn split_copy(
    rest: &[u8],
    len: u32,
    python_frames: u32,
    python_walk: u32,
) -> (&[u8], PythonRecords<'_>) {
    let (stack, python) = rest.split_at((len as usize).min(rest.len()));
    (
        stack,
        PythonRecords::new(python_walk, python_frames, python),
    )
}
