//! Symbolized stack frames, as the API serves them.

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
