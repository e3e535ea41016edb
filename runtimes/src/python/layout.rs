//! Where each CPython version keeps what the reader needs: the offsets, in bytes, of the fields
//! the kernel program follows from the runtime state to the current frame, and of those the
//! agent reads from code objects and strings.
//!
//! CPython's internal structs are not described by any debug information a stripped binary
//! keeps, and they change in every minor version. Before 3.13 the offsets come from this table,
//! computed from each version's headers for x86-64 (and checked against a running process's
//! memory before use: see `Interpreters`); from 3.13 on, the runtime publishes them itself in
//! `_Py_DebugOffsets` at the start of `_PyRuntime`, and they are read from there.

use memlens_common::python::{PythonProcess, NO_FIELD};

use super::binary::PyVersion;

/// The fields of one CPython version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u16,
    /// `PyThreadState.next`, `.interp`, `.native_thread_id`.
    pub tstate_next: u16,
    pub tstate_interp: u16,
    pub tstate_native_thread_id: u16,
    /// `PyThreadState.cframe` (3.11, 3.12) or `.current_frame` (3.13 on).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`; `NO_FIELD` from 3.13.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.f_code` / `.f_executable`, `.previous`, `.prev_instr` /
    /// `.instr_ptr`, `.is_entry` (3.11 only), `.owner`.
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    pub frame_is_entry: u16,
    pub frame_owner: u16,
    /// `FRAME_OWNED_BY_CSTACK`; `NO_FIELD` in 3.11 (which marks entry frames instead).
    pub owner_cstack: u16,
    pub code: CodeLayout,
    pub unicode: UnicodeLayout,
    /// `PyBytesObject.ob_size` (`PyVarObject`) and `.ob_sval`.
    pub bytes_size: u16,
    pub bytes_data: u16,
}

/// `PyCodeObject`'s fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u16,
    pub name: u16,
    pub qualname: u16,
    pub linetable: u16,
    /// An `int`.
    pub firstlineno: u16,
    /// The bytecode, inline in the object.
    pub code_adaptive: u16,
}

impl CodeLayout {
    /// Bytes of a code object to read to have every field above.
    #[must_use]
    pub fn span(&self) -> usize {
        [
            self.filename,
            self.name,
            self.qualname,
            self.linetable,
            self.firstlineno,
        ]
        .into_iter()
        .max()
        .map_or(0, |m| usize::from(m) + 8)
    }
}

/// `PyUnicodeObject`'s compact forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnicodeLayout {
    /// `PyASCIIObject.length`, `.state`.
    pub length: u16,
    pub state: u16,
    /// `sizeof(PyASCIIObject)`: an ASCII string's characters follow it.
    pub ascii_size: u16,
    /// `sizeof(PyCompactUnicodeObject)`: other compact strings' characters follow it.
    pub compact_size: u16,
    /// Bit positions in `state` of `kind` (3 bits), `compact` and `ascii`.
    pub kind_shift: u8,
    pub compact_bit: u8,
    pub ascii_bit: u8,
}

/// CPython 3.11 (`Include/internal/pycore_runtime.h`, `pycore_interp.h`, `cpython/pystate.h`,
/// `pycore_frame.h`, `cpython/code.h`, `cpython/unicodeobject.h` at v3.11.7; the same through
/// 3.11's later releases).
const V3_11: Layout = Layout {
    runtime_interpreters_head: 40,
    interp_threads_head: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_native_thread_id: 160,
    tstate_frame: 56,
    cframe_current_frame: 8,
    frame_code: 32,
    frame_previous: 48,
    frame_instr: 56,
    frame_is_entry: 68,
    frame_owner: 69,
    owner_cstack: NO_FIELD,
    code: CodeLayout {
        filename: 112,
        name: 120,
        qualname: 128,
        linetable: 136,
        firstlineno: 72,
        code_adaptive: 184,
    },
    unicode: UnicodeLayout {
        length: 16,
        state: 32,
        ascii_size: 48,
        compact_size: 72,
        kind_shift: 2,
        compact_bit: 5,
        ascii_bit: 6,
    },
    bytes_size: 16,
    bytes_data: 32,
};

/// Why a version's layout is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("CPython {0}: versions before 3.11 are not read")]
    TooOld(PyVersion),
    #[error("CPython {0}: a version this agent does not know")]
    Unknown(PyVersion),
}

impl Layout {
    /// The table's layout for `version`, for versions that do not publish their own.
    pub fn of_version(version: PyVersion) -> Result<Layout, LayoutError> {
        match (version.major, version.minor) {
            (3, 11) => Ok(V3_11),
            (3, minor) if minor < 11 => Err(LayoutError::TooOld(version)),
            (major, _) if major < 3 => Err(LayoutError::TooOld(version)),
            _ => Err(LayoutError::Unknown(version)),
        }
    }

    /// What the kernel program needs, for a process whose `_PyRuntime` is at `runtime`.
    #[must_use]
    pub fn kernel(&self, runtime: u64) -> PythonProcess {
        PythonProcess {
            interpreters_head: runtime.wrapping_add(self.runtime_interpreters_head),
            interp_threads_head: self.interp_threads_head,
            tstate_next: self.tstate_next,
            tstate_native_thread_id: self.tstate_native_thread_id,
            tstate_frame: self.tstate_frame,
            cframe_current_frame: self.cframe_current_frame,
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instr: self.frame_instr,
            frame_is_entry: self.frame_is_entry,
            frame_owner: self.frame_owner,
            owner_cstack: self.owner_cstack,
            reserved: [0; 5],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_3_11_and_unknown_ones_say_so() {
        let v = |minor| PyVersion {
            major: 3,
            minor,
            micro: None,
        };
        assert!(Layout::of_version(v(11)).is_ok());
        assert_eq!(
            Layout::of_version(v(9)).unwrap_err().to_string(),
            "CPython 3.9: versions before 3.11 are not read"
        );
        assert!(matches!(
            Layout::of_version(v(40)),
            Err(LayoutError::Unknown(_))
        ));
    }

    #[test]
    fn the_kernel_gets_absolute_runtime_addresses_and_relative_fields() {
        let k = V3_11.kernel(0x1000);
        assert_eq!(k.interpreters_head, 0x1028);
        assert_eq!(k.frame_is_entry, 68);
        assert_eq!(k.owner_cstack, NO_FIELD);
    }
}
