//! One stack copy walked frame by frame through the shared modules.

use std::num::NonZeroU64;

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64},
    Error as FramehopError, FrameAddress, Unwinder as _,
};
use memlens_model::user_stack::{FoundBy, StackSample, StackStop, UnwoundFrame};

use crate::{modules::SharedModules, process::Process, MAX_FRAMES};

/// Walks `sample` up from the frame at `ip` (with the stack pointer at `sp`) into `frames`;
/// returns why it stopped early, if it did. With `process`, each address is looked up where its
/// binary sits in the shared modules, and a return address must be in the process's code (whose
/// tables, or their absence, say how the next frame is found). Without it, frame pointers, and
/// every address is taken as it is.
pub fn walk(
    modules: &SharedModules,
    cache: &mut CacheX86_64,
    sample: &StackSample<'_>,
    process: Option<&Process>,
    (ip, sp): (u64, u64),
    frames: &mut Vec<UnwoundFrame>,
) -> Option<StackStop> {
    let mut regs = UnwindRegsX86_64::new(ip, sp, sample.bp);
    let mut read = |addr: u64| sample.word(addr).ok_or(());
    let mut addr = ip;
    // After a Go leaf, the first frame walked is the leaf's recovered caller.
    let mut found_by = if frames.is_empty() {
        FoundBy::Registers
    } else {
        FoundBy::RecoveredLeaf
    };
    loop {
        if frames.len() >= MAX_FRAMES {
            return Some(StackStop::FrameLimit {
                frames: MAX_FRAMES as u32,
            });
        }
        // Whether the next frame is found by tables, and where this address is looked up.
        let (tables, lookup) = match process {
            Some(p) => match p.code_at(addr) {
                Some(code) => (code.unwind_tables(), code.canonical(addr).unwrap_or(addr)),
                None if found_by == FoundBy::Registers => (false, addr),
                None => {
                    tracing::debug!(
                        "pid {}: return address {addr:#x} outside its code mappings",
                        sample.tgid
                    );
                    return Some(StackStop::UnknownAddress);
                }
            },
            None => (false, addr),
        };
        frames.push(UnwoundFrame { addr, found_by });
        let frame = match found_by {
            FoundBy::Registers | FoundBy::RecoveredLeaf => FrameAddress::InstructionPointer(lookup),
            _ => match NonZeroU64::new(lookup) {
                Some(ra) => FrameAddress::ReturnAddress(ra),
                None => return None,
            },
        };
        addr = match modules
            .unwinder()
            .unwind_frame(frame, &mut regs, cache, &mut read)
        {
            Ok(Some(0) | None) => return None,
            Ok(Some(ra)) => ra,
            Err(FramehopError::CouldNotReadStack(_)) => {
                return Some(StackStop::CopyEnded {
                    bytes: u32::try_from(sample.stack.len()).unwrap_or(u32::MAX),
                })
            }
            Err(_) => return Some(StackStop::NoProgress),
        };
        found_by = if tables {
            FoundBy::UnwindTables
        } else {
            FoundBy::FramePointer
        };
    }
}
