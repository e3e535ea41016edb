//! What a CPython binary (a `python3.x` executable with the interpreter linked in, or a
//! `libpython3.x.so`) tells from its dynamic symbols: where the runtime state is, which version
//! it is, and where the evaluation loop's code is.

use std::{fs::File, io};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

/// A CPython version, as `PY_VERSION_HEX` orders it: major, minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PyVersion {
    pub major: u8,
    pub minor: u8,
    /// The micro release, when the binary says (`Py_Version`).
    pub micro: Option<u8>,
}

impl std::fmt::Display for PyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.micro {
            Some(micro) => write!(f, "{}.{}.{micro}", self.major, self.minor),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

impl PyVersion {
    /// From `PY_VERSION_HEX` (`0x030b07f0`: 3.11.7 final).
    #[must_use]
    pub fn from_hex(hex: u32) -> PyVersion {
        let [major, minor, micro, _] = hex.to_be_bytes();
        PyVersion {
            major,
            minor,
            micro: Some(micro),
        }
    }

    /// From a file name such as `python3.11`, `libpython3.12.so.1.0` or `python3.13d`.
    #[must_use]
    pub fn from_file_name(name: &str) -> Option<PyVersion> {
        let rest = name.strip_prefix("lib").unwrap_or(name);
        let rest = rest.strip_prefix("python")?;
        let (major, rest) = rest.split_once('.')?;
        let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(PyVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            micro: None,
        })
    }
}

/// The link-time addresses (before the load bias) of what the reader needs in one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonBinary {
    /// `_PyRuntime`: the runtime state (3.13 on, its first bytes are `_Py_DebugOffsets`).
    pub runtime: u64,
    /// `PyCode_Type`: code objects' type, to check that an address holds one.
    pub code_type: Option<u64>,
    /// `_PyEval_EvalFrameDefault`: the evaluation loop, whose native frames the Python frames
    /// take the place of.
    pub eval: Option<(u64, u64)>,
    /// From `Py_Version` (3.11 on), else from the file name; None when neither says.
    pub version: Option<PyVersion>,
    /// Virtual address of the loadable segment at file offset 0, to place addresses at a
    /// mapping's start.
    pub first_segment: u64,
}

impl PythonBinary {
    /// The load bias of this binary mapped at `start` from file offset 0.
    #[must_use]
    pub fn bias(&self, start: u64) -> u64 {
        start.wrapping_sub(self.first_segment & !0xfff)
    }
}

/// Reads `file`'s dynamic symbols (and its symbol table, if it kept one); None when it is not
/// a CPython binary (no `_PyRuntime`).
pub fn inspect(file: File, name: &str) -> io::Result<Option<PythonBinary>> {
    let data = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&data) else {
        return Ok(None);
    };
    let (mut runtime, mut code_type, mut eval, mut version_at) = (None, None, None, None);
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        match symbol.name() {
            Ok("_PyRuntime") => runtime = Some(symbol.address()),
            Ok("PyCode_Type") => code_type = Some(symbol.address()),
            Ok("_PyEval_EvalFrameDefault") if symbol.size() > 0 => {
                eval = Some((symbol.address(), symbol.address() + symbol.size()));
            }
            Ok("Py_Version") => version_at = Some((symbol.address(), symbol.section_index())),
            _ => {}
        }
    }
    let Some(runtime) = runtime else {
        return Ok(None);
    };
    let version = version_at
        .and_then(|(addr, section)| {
            let section = elf.section_by_index(section?).ok()?;
            let bytes = section.data_range(addr, 4).ok()??;
            Some(PyVersion::from_hex(u32::from_le_bytes(
                bytes.try_into().ok()?,
            )))
        })
        .or_else(|| PyVersion::from_file_name(name));
    let first_segment = elf
        .segments()
        .find(|s| s.file_range().0 == 0)
        .map_or(0, |s| s.address());
    Ok(Some(PythonBinary {
        runtime,
        code_type,
        eval,
        version,
        first_segment,
    }))
}

/// Whether a mapped file may be a CPython binary worth reading: `python3.x` (Debian's
/// `/usr/bin/python3.11`, a virtual environment's copy) or `libpython3.x.so`.
#[must_use]
pub fn may_be_python(file_name: &str) -> bool {
    file_name.starts_with("python") || file_name.starts_with("libpython")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_from_the_version_word_and_from_file_names() {
        assert_eq!(PyVersion::from_hex(0x030b_07f0).to_string(), "3.11.7");
        let v = |name| PyVersion::from_file_name(name).map(|v| v.to_string());
        assert_eq!(v("python3.11").as_deref(), Some("3.11"));
        assert_eq!(v("libpython3.12.so.1.0").as_deref(), Some("3.12"));
        assert_eq!(v("python3.13d").as_deref(), Some("3.13"));
        assert_eq!(v("python3"), None);
        assert_eq!(v("perl5.36"), None);
    }

    #[test]
    fn debians_python3_is_found_with_its_version_and_evaluation_loop() {
        let path = "/usr/bin/python3.11";
        let Ok(file) = File::open(path) else {
            eprintln!("{path} not installed: skipped");
            return;
        };
        let binary = inspect(file, "python3.11")
            .expect("readable")
            .expect("CPython");
        let version = binary.version.expect("Py_Version");
        assert_eq!((version.major, version.minor), (3, 11));
        assert!(binary.eval.is_some_and(|(start, end)| end > start + 1000));
        assert!(binary.code_type.is_some());
        let libc = File::open("/usr/lib/x86_64-linux-gnu/libc.so.6").expect("libc");
        assert_eq!(inspect(libc, "libc.so.6").expect("readable"), None);
    }
}
