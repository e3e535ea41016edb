//! Symbolized stack frames, as the API serves them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One frame of a symbolized stack, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub addr: u64,
    /// Function name (demangled); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Binary or library file name (`[kernel]` for kernel frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Offset of the address in the module's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Inlined into the next frame (no call of its own).
    #[serde(default, skip_serializing_if = "is_false")]
    pub inlined: bool,
    /// The caller of a frameless leaf, recovered from the stack (the frame-pointer walk skips it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl Frame {
    /// `function`, else `[unknown] module+0xoffset`, else `[unknown] 0xaddr`.
    #[must_use]
    pub fn display_name(&self) -> String {
        match (&self.function, &self.module, self.module_offset) {
            (Some(f), _, _) => f.clone(),
            (None, Some(m), Some(o)) => format!("[unknown] {m}+{o:#x}"),
            _ => format!("[unknown] {:#x}", self.addr),
        }
    }
}

/// How the innermost caller of a user stack was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafCaller {
    /// The innermost function had a frame pointer: the walk is right.
    FramePointer,
    /// A frameless leaf's caller was read off the stack with its unwind rule and inserted.
    Recovered,
    /// No unwind rule (or no stack words): the leaf's caller may be missing.
    MaybeMissing,
}

/// How a frame of a user stack was found from the frame inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// The innermost frame: the instruction pointer itself.
    Registers,
    /// The inner frame's unwind rule, from its binary's `.eh_frame` or `.debug_frame`.
    UnwindTables,
    /// The frame-pointer chain (a binary without unwind tables, such as Go's, or the kernel's
    /// walk when the stack was not copied).
    FramePointer,
    /// A frameless leaf's caller read off the stack with the leaf's unwind rule (see
    /// [`LeafCaller::Recovered`]).
    RecoveredLeaf,
}

impl FoundBy {
    /// Two bits naming the variant.
    #[must_use]
    pub fn bits(self) -> u8 {
        match self {
            FoundBy::Registers => 0,
            FoundBy::UnwindTables => 1,
            FoundBy::FramePointer => 2,
            FoundBy::RecoveredLeaf => 3,
        }
    }

    /// The variant the low two bits of `bits` name.
    #[must_use]
    pub fn from_bits(bits: u8) -> FoundBy {
        match bits & 3 {
            0 => FoundBy::Registers,
            1 => FoundBy::UnwindTables,
            2 => FoundBy::FramePointer,
            _ => FoundBy::RecoveredLeaf,
        }
    }
}

/// One frame of an unwound stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnwoundFrame {
    /// The instruction pointer (first frame) or a return address.
    pub addr: u64,
    /// How this frame was found from the one inside it.
    pub found_by: FoundBy,
}

/// A user stack unwound in userspace from a copy the kernel program took, innermost first; the
/// agent keeps them across restarts.
///
/// Held for every sampled allocation on record (tens of thousands of distinct stacks on a busy
/// node), so stored packed: the addresses, then how each frame was found in two bits, 8.25
/// bytes a frame where a list of [`UnwoundFrame`] takes 16.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "StackFrames", into = "StackFrames")]
pub struct UnwoundStack {
    addrs: Box<[u64]>,
    /// `FoundBy` of frame `i` in bits `2 * (i % 4)` of byte `i / 4`.
    found_by: Box<[u8]>,
    /// Why the unwinding stopped before the end of the stack; `None` when it reached the end
    /// the unwind tables mark (the program's or the thread's entry).
    pub stop: Option<StackStop>,
}

impl UnwoundStack {
    #[must_use]
    pub fn new(frames: &[UnwoundFrame], stop: Option<StackStop>) -> UnwoundStack {
        let mut found_by = vec![0u8; frames.len().div_ceil(4)];
        for (i, f) in frames.iter().enumerate() {
            found_by[i / 4] |= f.found_by.bits() << (2 * (i % 4));
        }
        UnwoundStack {
            addrs: frames.iter().map(|f| f.addr).collect(),
            found_by: found_by.into_boxed_slice(),
            stop,
        }
    }

    /// The frames, innermost first.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = UnwoundFrame> + '_ {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| UnwoundFrame {
                addr,
                found_by: FoundBy::from_bits(self.found_by[i / 4] >> (2 * (i % 4))),
            })
    }

    /// Frame `i` (0 is the innermost).
    #[must_use]
    pub fn frame(&self, i: usize) -> Option<UnwoundFrame> {
        self.frames().nth(i)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// [`UnwoundStack`] as it is written out: its frames listed.
#[derive(Serialize, Deserialize)]
struct StackFrames {
    frames: Vec<UnwoundFrame>,
    stop: Option<StackStop>,
}

impl From<StackFrames> for UnwoundStack {
    fn from(s: StackFrames) -> UnwoundStack {
        UnwoundStack::new(&s.frames, s.stop)
    }
}

impl From<UnwoundStack> for StackFrames {
    fn from(s: UnwoundStack) -> StackFrames {
        StackFrames {
            frames: s.frames().collect(),
            stop: s.stop,
        }
    }
}

/// The key of an unwound stack saved in the agent's database, given when it is first saved:
/// identical stacks share one, and keys only grow, so a saved stack is appended, never put in the
/// middle of what is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SavedStackId(pub u64);

/// A superblock's sampled-page record as its unwound stack is saved: the allocation's thread
/// and time (the record's tag) and the key of its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedSlot {
    pub superblock: u64,
    pub pid: u32,
    pub ts_ns: u64,
    pub stack: SavedStackId,
}

/// What changed in the agent's unwound stacks since they were last saved.
#[derive(Debug, Default)]
pub struct UnwoundChanges {
    /// Superblocks written, by superblock.
    pub slots: Vec<SavedSlot>,
    /// Stacks not saved before, by key.
    pub stacks: Vec<(SavedStackId, Arc<UnwoundStack>)>,
    /// Keys of saved stacks no superblock holds any more.
    pub forgotten: Vec<SavedStackId>,
}

impl UnwoundChanges {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.stacks.is_empty() && self.forgotten.is_empty()
    }
}

/// Bit 63 marks an unwound stack's address as a Python frame's id (see [`PythonFrameId`]): no
/// user-space address has it set.
const PYTHON_FRAME_BIT: u64 = 1 << 63;

/// A Python frame (function, file, line) in the agent's table of them: Python frames take the
/// place of the interpreter's native frames in an unwound stack, as addresses with bit 63 set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PythonFrameId(pub u32);

impl PythonFrameId {
    /// The address standing for this frame in an unwound stack.
    #[must_use]
    pub fn address(self) -> u64 {
        PYTHON_FRAME_BIT | u64::from(self.0)
    }

    /// The frame an unwound stack's address stands for, if it is a Python frame's.
    #[must_use]
    pub fn of_address(addr: u64) -> Option<PythonFrameId> {
        if addr & PYTHON_FRAME_BIT == 0 {
            return None;
        }
        u32::try_from(addr & !PYTHON_FRAME_BIT)
            .ok()
            .map(PythonFrameId)
    }
}

/// A Python frame: the function a code object is (its qualified name), its file, and the line of
/// the instruction it ran. Also what stands in for the Python frames of an interpreter memlens
/// cannot read (`line` 0, `function` saying why).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PythonFrame {
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub line: u32,
}

/// How a user stack was unwound, taken over its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnwindMethod {
    /// The kernel's frame-pointer walk (with a frameless leaf's caller recovered where its unwind
    /// rule says where it is).
    FramePointers,
    /// Every frame from the binaries' unwind tables, in userspace, from a copy of the stack.
    UnwindTables,
    /// From a copy of the stack, partly by unwind tables and partly by frame pointers.
    Mixed,
}

/// Why a user stack ends before the program's or the thread's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StackStop {
    /// The kernel's frame-pointer walk ended: a frame without a frame pointer broke the chain.
    FramePointerChain,
    /// The next frame is beyond the copy of the stack (`bytes` from the stack pointer).
    CopyEnded { bytes: u32 },
    /// A return address outside the process's executable mappings (after re-reading them).
    UnknownAddress,
    /// The unwind rules led nowhere: the stack pointer did not advance, or moved backwards.
    NoProgress,
    /// The stack is deeper than the frames kept per stack.
    FrameLimit { frames: u32 },
}

impl std::fmt::Display for StackStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackStop::FramePointerChain => {
                f.write_str("the frame-pointer walk ended at code without frame pointers")
            }
            StackStop::CopyEnded { bytes } => write!(
                f,
                "deeper than the {} KiB of stack copied (--stack-copy)",
                bytes / 1024
            ),
            StackStop::UnknownAddress => {
                f.write_str("a return address outside the process's code mappings")
            }
            StackStop::NoProgress => f.write_str("the unwind rules did not advance"),
            StackStop::FrameLimit { frames } => write!(f, "more than {frames} frames"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_stack_gives_its_frames_back_and_is_written_as_a_list() {
        let kinds = [
            FoundBy::Registers,
            FoundBy::RecoveredLeaf,
            FoundBy::UnwindTables,
            FoundBy::FramePointer,
            FoundBy::UnwindTables,
        ];
        let frames: Vec<UnwoundFrame> = kinds
            .iter()
            .enumerate()
            .map(|(i, &found_by)| UnwoundFrame {
                addr: u64::MAX - i as u64,
                found_by,
            })
            .collect();
        let stack = UnwoundStack::new(&frames, Some(StackStop::NoProgress));
        assert_eq!(stack.frames().collect::<Vec<_>>(), frames);
        assert_eq!(stack.frame(4), Some(frames[4]));
        assert_eq!(stack.len(), 5);
        let json = serde_json::to_value(&stack).unwrap();
        assert_eq!(json["frames"][1]["found_by"], "recovered_leaf");
        let back: UnwoundStack = serde_json::from_value(json).unwrap();
        assert_eq!(back, stack);
    }
}
