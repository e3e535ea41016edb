//! Code objects and the strings they name, read from a running CPython process.
//!
//! The process is not stopped: what is read may be torn or freed meanwhile, so every read is
//! checked (the object's type, string kinds and lengths) and bounded, and a failure is an error,
//! never a wrong name.

use std::{io, sync::Arc};

use memlens_procfs::mem::read_remote;

use super::layout::{Layout, UnicodeLayout};

/// Longest name or file name read, in characters.
const MAX_STRING: u64 = 4096;
/// Largest line table read, in bytes (a function of thousands of lines has a few KiB).
const MAX_LINETABLE: u64 = 64 * 1024;

/// Why a code object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("reading {0:#x}: {1}")]
    Read(u64, io::Error),
    #[error("{0:#x} is not a code object")]
    NotCode(u64),
    #[error("the string at {0:#x} is not a compact string of a sane length")]
    BadString(u64),
    #[error("the line table at {0:#x} is not a bytes object of a sane length")]
    BadLinetable(u64),
}

/// What the frames of one code object share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// The qualified name (`Class.method`, `outer.<locals>.inner`).
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub first_line: i32,
    /// `co_linetable`'s bytes.
    pub linetable: Box<[u8]>,
    /// Where the bytecode starts in the process: an instruction pointer's index is its distance
    /// from here in 2-byte units.
    pub code_start: u64,
}

fn read(pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, CodeError> {
    let mut buf = vec![0u8; len];
    read_remote(pid, addr, &mut buf).map_err(|e| CodeError::Read(addr, e))?;
    Ok(buf)
}

fn u64_at(bytes: &[u8], offset: u16) -> Option<u64> {
    let at = usize::from(offset);
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: u16) -> Option<u32> {
    let at = usize::from(offset);
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the code object at `addr` in process `pid`; `code_type` is `PyCode_Type`'s address
/// there, when known, to check the object is one.
pub fn read_code(
    pid: u32,
    layout: &Layout,
    code_type: Option<u64>,
    addr: u64,
) -> Result<CodeInfo, CodeError> {
    let c = layout.code;
    let object = read(pid, addr, c.span())?;
    if let Some(expected) = code_type {
        if u64_at(&object, 8) != Some(expected) {
            return Err(CodeError::NotCode(addr));
        }
    }
    let field = |offset| u64_at(&object, offset).ok_or(CodeError::NotCode(addr));
    let (qualname, filename, linetable) =
        (field(c.qualname)?, field(c.filename)?, field(c.linetable)?);
    let first_line = u32_at(&object, c.firstlineno).ok_or(CodeError::NotCode(addr))?;
    Ok(CodeInfo {
        function: read_string(pid, &layout.unicode, qualname)?.into(),
        file: read_string(pid, &layout.unicode, filename)?.into(),
        first_line: i32::from_le_bytes(first_line.to_le_bytes()),
        linetable: read_bytes(pid, layout, linetable)?.into_boxed_slice(),
        code_start: addr.wrapping_add(u64::from(c.code_adaptive)),
    })
}

/// The compact string (`str`) at `addr`.
fn read_string(pid: u32, u: &UnicodeLayout, addr: u64) -> Result<String, CodeError> {
    let header = read(pid, addr, usize::from(u.compact_size))?;
    let bad = || CodeError::BadString(addr);
    let length = u64_at(&header, u.length).ok_or_else(bad)?;
    let state = u32_at(&header, u.state).ok_or_else(bad)?;
    let kind = (state >> u.kind_shift) & 7;
    let compact = state >> u.compact_bit & 1 == 1;
    let ascii = state >> u.ascii_bit & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) || length > MAX_STRING {
        return Err(bad());
    }
    let data = addr.wrapping_add(u64::from(if ascii { u.ascii_size } else { u.compact_size }));
    let width = kind as usize;
    let bytes = read(pid, data, length as usize * width)?;
    let chars: Option<String> = bytes
        .chunks_exact(width)
        .map(|c| {
            let mut unit = [0u8; 4];
            unit[..width].copy_from_slice(c);
            char::from_u32(u32::from_le_bytes(unit))
        })
        .collect();
    chars.ok_or_else(bad)
}

/// The contents of the `bytes` object at `linetable`.
fn read_bytes(pid: u32, layout: &Layout, addr: u64) -> Result<Vec<u8>, CodeError> {
    let header = read(pid, addr, usize::from(layout.bytes_data))?;
    let size = u64_at(&header, layout.bytes_size).ok_or(CodeError::BadLinetable(addr))?;
    if size > MAX_LINETABLE {
        return Err(CodeError::BadLinetable(addr));
    }
    read(
        pid,
        addr.wrapping_add(u64::from(layout.bytes_data)),
        size as usize,
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Command, Stdio},
    };

    use super::*;
    use crate::python::binary::PyVersion;

    /// Debian's python3.11 with a function `Cache.put` defined at line 3 of `<memlens test>`;
    /// prints its code object's address (CPython's `id`).
    const PROGRAM: &str = "\
import sys
class Cache:
    def put(self, key):
        return key * 2
print(id(Cache.put.__code__), flush=True)
sys.stdin.read()
";

    #[test]
    fn a_code_object_of_a_running_interpreter_reads_as_its_name_file_and_line() {
        let python = "/usr/bin/python3.11";
        if !std::path::Path::new(python).exists() {
            eprintln!("{python} not installed: skipped");
            return;
        }
        let mut child = Command::new(python)
            .args([
                "-c",
                &format!("exec(compile({PROGRAM:?}, '<memlens test>', 'exec'))"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3.11 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("its output");
        let addr: u64 = line.trim().parse().expect("an address");
        let v3_11 = PyVersion {
            major: 3,
            minor: 11,
            micro: None,
        };
        let layout = Layout::of_version(v3_11, &[]).expect("3.11");
        let read = read_code(child.id(), &layout, None, addr);
        let _ = child.kill();
        let _ = child.wait();
        let info = read.expect("readable");
        assert_eq!(&*info.function, "Cache.put");
        assert_eq!(&*info.file, "<memlens test>");
        assert_eq!(info.first_line, 3);
        assert!(!info.linetable.is_empty());
        assert_eq!(info.code_start, addr + 184);
    }
}
