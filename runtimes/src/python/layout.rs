//! Where each CPython version keeps what the reader needs: the offsets, in bytes, of the fields
//! the kernel program follows from the runtime state to the current frame, and of those the
//! agent reads from code objects and strings.
//!
//! CPython's internal structs are not described by any debug information a stripped binary
//! keeps, and they change in every minor version. Before 3.13 the offsets come from this table,
//! computed from each version's headers for x86-64 (and checked against a running process's
//! memory before use: see `Interpreters`); from 3.13 on, the runtime publishes them itself in
//! `_Py_DebugOffsets` at the start of `_PyRuntime`, and they are read from there.

use memlens_common::python::{PythonProcess, NO_FIELD, PYTHON_FRAME_WINDOW};

use super::binary::PyVersion;

/// The fields of one CPython version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// What the kernel program follows (see [`PythonProcess`]), with `interpreters_head` the
    /// offset of `_PyRuntimeState.interpreters.head` in `_PyRuntime` (the program gets its
    /// address). For 3.12 on, `owner_shim` is the lowest owner of frames that run no Python
    /// code (`FRAME_OWNED_BY_CSTACK` in 3.12 and 3.13, `FRAME_OWNED_BY_INTERPRETER` and above
    /// in 3.14); 3.11 marks entry frames with `is_entry` instead.
    pub walk: PythonProcess,
    /// `PyThreadState.interp`: checked to point back at the interpreter before a process is
    /// named.
    pub tstate_interp: u16,
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
    walk: PythonProcess {
        interpreters_head: 40,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_native_thread_id: 160,
        tstate_frame: 56,
        cframe_current_frame: 8,
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        frame_is_entry: 68,
        frame_owner: 69,
        owner_shim: NO_FIELD,
        reserved: [0; 5],
    },
    tstate_interp: 16,
    code: CodeLayout {
        filename: 112,
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

/// CPython 3.12 (the headers at v3.12.0, unchanged through 3.12.6 where these fields are
/// concerned; later releases are security fixes only). The C stack's entry frames carry a code
/// object of their own (`<interpreter trampoline>`): their owner tells them apart.
const V3_12: Layout = Layout {
    walk: PythonProcess {
        interpreters_head: 40,
        interp_threads_head: 72,
        tstate_next: 8,
        tstate_native_thread_id: 144,
        tstate_frame: 56,
        cframe_current_frame: 0,
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_is_entry: NO_FIELD,
        frame_owner: 70,
        owner_shim: 3,
        reserved: [0; 5],
    },
    tstate_interp: 16,
    code: CodeLayout {
        filename: 112,
        qualname: 128,
        linetable: 136,
        firstlineno: 68,
        code_adaptive: 192,
    },
    unicode: UNICODE_3_12,
    bytes_size: 16,
    bytes_data: 32,
};

/// Compact strings from 3.12 (`wstr` gone); the state bits have not moved since 3.11, and
/// `_Py_DebugOffsets` does not give them.
const UNICODE_3_12: UnicodeLayout = UnicodeLayout {
    length: 16,
    state: 32,
    ascii_size: 40,
    compact_size: 56,
    kind_shift: 2,
    compact_bit: 5,
    ascii_bit: 6,
};

/// Where, in `_Py_DebugOffsets` (at the start of `_PyRuntime` from 3.13 on), each field's offset
/// is published: byte positions in the struct, all of whose members are 8-byte integers. The
/// struct changes between minor versions (3.14 added members in the middle) and is stable
/// within one.
struct DebugFields {
    interpreters_head: usize,
    threads_head: usize,
    tstate_next: usize,
    tstate_interp: usize,
    tstate_current_frame: usize,
    tstate_native_thread_id: usize,
    frame_previous: usize,
    frame_executable: usize,
    frame_instr_ptr: usize,
    frame_owner: usize,
    code_filename: usize,
    code_qualname: usize,
    code_linetable: usize,
    code_firstlineno: usize,
    code_adaptive: usize,
    bytes_size: usize,
    bytes_data: usize,
    unicode_state: usize,
    unicode_length: usize,
    unicode_ascii_size: usize,
    /// Bytes of the struct to read.
    size: usize,
}

/// 3.13 (`Include/internal/pycore_runtime.h`, the same from 3.13.0 through 3.13.18).
const DEBUG_3_13: DebugFields = DebugFields {
    interpreters_head: 40,
    threads_head: 72,
    tstate_next: 168,
    tstate_interp: 176,
    tstate_current_frame: 184,
    tstate_native_thread_id: 200,
    frame_previous: 232,
    frame_executable: 240,
    frame_instr_ptr: 248,
    frame_owner: 264,
    code_filename: 280,
    code_qualname: 296,
    code_linetable: 304,
    code_firstlineno: 312,
    code_adaptive: 344,
    bytes_size: 520,
    bytes_data: 528,
    unicode_state: 544,
    unicode_length: 552,
    unicode_ascii_size: 560,
    size: 584,
};

/// 3.14 (`Include/internal/pycore_debug_offsets.h`, 3.14.0 through 3.14.10).
const DEBUG_3_14: DebugFields = DebugFields {
    interpreters_head: 40,
    threads_head: 72,
    tstate_next: 192,
    tstate_interp: 200,
    tstate_current_frame: 208,
    tstate_native_thread_id: 224,
    frame_previous: 256,
    frame_executable: 264,
    frame_instr_ptr: 272,
    frame_owner: 288,
    code_filename: 320,
    code_qualname: 336,
    code_linetable: 344,
    code_firstlineno: 352,
    code_adaptive: 384,
    bytes_size: 600,
    bytes_data: 608,
    unicode_state: 624,
    unicode_length: 632,
    unicode_ascii_size: 640,
    size: 760,
};

/// What `_Py_DebugOffsets` starts with.
const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Why a version's layout is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("CPython {0}: Python frames are read from 3.11 on")]
    TooOld(PyVersion),
    #[error("CPython {0}: a version this agent does not know, Python frames not read")]
    Unknown(PyVersion),
    #[error(
        "CPython {version}: Python frames not read, its published offsets (_Py_DebugOffsets) {why}"
    )]
    DebugOffsets { version: PyVersion, why: String },
}

impl Layout {
    /// The layout of `version`: from the table before 3.13, from `_Py_DebugOffsets` after,
    /// whose first `published.len()` bytes (read from the process) are `published`.
    pub fn of_version(version: PyVersion, published: &[u8]) -> Result<Layout, LayoutError> {
        match (version.major, version.minor) {
            (3, 11) => Ok(V3_11),
            (3, 12) => Ok(V3_12),
            (3, 13) => Layout::published(version, &DEBUG_3_13, published),
            (3, 14) => Layout::published(version, &DEBUG_3_14, published),
            (3, minor) if minor < 11 => Err(LayoutError::TooOld(version)),
            (major, _) if major < 3 => Err(LayoutError::TooOld(version)),
            _ => Err(LayoutError::Unknown(version)),
        }
    }

    /// Bytes of `_PyRuntime` to read for `version`'s layout (0 when it publishes none).
    #[must_use]
    pub fn published_len(version: PyVersion) -> usize {
        match (version.major, version.minor) {
            (3, 13) => DEBUG_3_13.size,
            (3, 14) => DEBUG_3_14.size,
            _ => 0,
        }
    }

    /// The layout `published` (`_Py_DebugOffsets`) gives, read at `fields`' positions.
    fn published(
        version: PyVersion,
        fields: &DebugFields,
        published: &[u8],
    ) -> Result<Layout, LayoutError> {
        let fail = |why: &str| LayoutError::DebugOffsets {
            version,
            why: why.to_string(),
        };
        if published.get(..8) != Some(DEBUG_COOKIE.as_slice()) {
            return Err(fail("are missing (no \"xdebugpy\" cookie)"));
        }
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                published.get(at..at + 8)?.try_into().ok()?,
            ))
        };
        let hex = word(8).ok_or_else(|| fail("are cut short"))?;
        if hex >> 16 != (u64::from(version.major) << 8 | u64::from(version.minor)) {
            return Err(fail(&format!("name another version ({hex:#x})")));
        }
        if word(16) != Some(0) {
            return Err(fail("say it is free-threaded, which is not read"));
        }
        // Offsets within structs: small; anything else is not what this layout expects.
        let small = |at: usize| -> Result<u16, LayoutError> {
            word(at)
                .and_then(|v| u16::try_from(v).ok())
                .filter(|&v| v < NO_FIELD)
                .ok_or_else(|| fail(&format!("hold an unexpected value at byte {at}")))
        };
        Ok(Layout {
            walk: PythonProcess {
                interpreters_head: u64::from(small(fields.interpreters_head)?),
                interp_threads_head: small(fields.threads_head)?,
                tstate_next: small(fields.tstate_next)?,
                tstate_native_thread_id: small(fields.tstate_native_thread_id)?,
                tstate_frame: small(fields.tstate_current_frame)?,
                cframe_current_frame: NO_FIELD,
                frame_code: small(fields.frame_executable)?,
                frame_previous: small(fields.frame_previous)?,
                frame_instr: small(fields.frame_instr_ptr)?,
                frame_is_entry: NO_FIELD,
                frame_owner: small(fields.frame_owner)?,
                owner_shim: 3,
                reserved: [0; 5],
            },
            tstate_interp: small(fields.tstate_interp)?,
            code: CodeLayout {
                filename: small(fields.code_filename)?,
                qualname: small(fields.code_qualname)?,
                linetable: small(fields.code_linetable)?,
                firstlineno: small(fields.code_firstlineno)?,
                code_adaptive: small(fields.code_adaptive)?,
            },
            unicode: UnicodeLayout {
                length: small(fields.unicode_length)?,
                state: small(fields.unicode_state)?,
                ascii_size: small(fields.unicode_ascii_size)?,
                compact_size: small(fields.unicode_ascii_size)? + 16,
                ..UNICODE_3_12
            },
            bytes_size: small(fields.bytes_size)?,
            bytes_data: small(fields.bytes_data)?,
        })
    }

    /// Whether every frame field the kernel program reads lies in the window it reads.
    #[must_use]
    pub fn fits_window(&self) -> bool {
        let w = &self.walk;
        let end = |offset: u16, width: usize| usize::from(offset) + width <= PYTHON_FRAME_WINDOW;
        end(w.frame_code, 8)
            && end(w.frame_previous, 8)
            && end(w.frame_instr, 8)
            && end(w.frame_owner, 1)
            && (w.frame_is_entry == NO_FIELD || end(w.frame_is_entry, 1))
    }

    /// What the kernel program needs, for a process whose `_PyRuntime` is at `runtime`.
    #[must_use]
    pub fn kernel(&self, runtime: u64) -> PythonProcess {
        PythonProcess {
            interpreters_head: runtime.wrapping_add(self.walk.interpreters_head),
            ..self.walk
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
        assert!(Layout::of_version(v(11), &[]).is_ok());
        assert!(Layout::of_version(v(12), &[]).is_ok_and(|l| l.fits_window()));
        assert_eq!(
            Layout::of_version(v(9), &[]).unwrap_err().to_string(),
            "CPython 3.9: Python frames are read from 3.11 on"
        );
        assert!(matches!(
            Layout::of_version(v(40), &[]),
            Err(LayoutError::Unknown(_))
        ));
        assert!(matches!(
            Layout::of_version(v(13), &[0; 584]),
            Err(LayoutError::DebugOffsets { .. })
        ));
    }

    #[test]
    fn the_kernel_gets_absolute_runtime_addresses_and_relative_fields() {
        let k = V3_11.kernel(0x1000);
        assert_eq!(k.interpreters_head, 0x1028);
        assert_eq!(k.frame_is_entry, 68);
        assert_eq!(k.owner_shim, NO_FIELD);
    }
}
