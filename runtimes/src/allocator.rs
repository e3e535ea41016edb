//! Which allocator a native process uses, and where its functions are: the plan an allocator
//! trace attaches by.
//!
//! The dynamic linker resolves `malloc` to the first object in its search order that defines
//! it: the executable (a static binary, or one linking an allocator statically), then the
//! preloaded libraries and the executable's dependencies before libc (jemalloc, tcmalloc,
//! mimalloc), then libc. So the executable is looked at first, then every other library that
//! defines `malloc`, then libc; the first that defines it is the allocator, and every function
//! of the family it defines is probed (aliases at one address once). `operator new` and
//! `delete` are probed only where the allocator itself defines them: libstdc++'s call `malloc`
//! and `free`, which are probed already.

use std::{collections::HashSet, fs::File, io, os::unix::fs::FileExt as _};

use memlens_model::alloc_trace::{AllocatorFunction, AllocatorPlan, AllocatorRole};
use memlens_procfs::Mapping;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// The functions probed, by symbol, and what each does.
const FUNCTIONS: &[(&str, AllocatorRole)] = &[
    ("malloc", AllocatorRole::SizeFirst),
    ("calloc", AllocatorRole::Calloc),
    ("realloc", AllocatorRole::Realloc),
    ("free", AllocatorRole::Free),
    ("cfree", AllocatorRole::Free),
    ("posix_memalign", AllocatorRole::PosixMemalign),
    ("aligned_alloc", AllocatorRole::SizeSecond),
    ("memalign", AllocatorRole::SizeSecond),
    ("valloc", AllocatorRole::SizeFirst),
    ("pvalloc", AllocatorRole::SizeFirst),
    // jemalloc's non-standard API (redis frees through it).
    ("mallocx", AllocatorRole::SizeFirst),
    ("rallocx", AllocatorRole::Realloc),
    ("dallocx", AllocatorRole::Free),
    ("sdallocx", AllocatorRole::Free),
    // C++ operators, where the allocator defines its own.
    ("_Znwm", AllocatorRole::SizeFirst),
    ("_Znam", AllocatorRole::SizeFirst),
    ("_ZnwmRKSt9nothrow_t", AllocatorRole::SizeFirst),
    ("_ZnamRKSt9nothrow_t", AllocatorRole::SizeFirst),
    ("_ZnwmSt11align_val_t", AllocatorRole::SizeFirst),
    ("_ZnamSt11align_val_t", AllocatorRole::SizeFirst),
    ("_ZdlPv", AllocatorRole::Free),
    ("_ZdaPv", AllocatorRole::Free),
    ("_ZdlPvm", AllocatorRole::Free),
    ("_ZdaPvm", AllocatorRole::Free),
    ("_ZdlPvSt11align_val_t", AllocatorRole::Free),
    ("_ZdaPvSt11align_val_t", AllocatorRole::Free),
    ("_ZdlPvmSt11align_val_t", AllocatorRole::Free),
    ("_ZdaPvmSt11align_val_t", AllocatorRole::Free),
];

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("process {pid}: reading its mappings: {source}")]
    Maps { pid: u32, source: io::Error },
    #[error(
        "process {0} maps no object that defines malloc (a Go program without cgo allocates \
         through its runtime: its heap profile is read instead; a static binary without \
         symbols cannot be traced)"
    )]
    NoAllocator(u32),
}

/// The allocator functions an object defines, with their file offsets.
fn functions_in(path: &str) -> io::Result<Vec<AllocatorFunction>> {
    let data = object::ReadCache::new(File::open(path)?);
    let file = object::File::parse(&data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut found = Vec::new();
    let mut offsets = HashSet::new();
    // Dynamic symbols first: a shared library's exported functions; an executable's full
    // symbol table next (a static binary's).
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let Some(&(_, role)) = FUNCTIONS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let Some(section) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        let Some(file_offset) = symbol
            .address()
            .checked_sub(section.address())
            .map(|d| d + section_offset)
        else {
            continue;
        };
        if found.iter().any(|f: &AllocatorFunction| f.symbol == name)
            || !offsets.insert(file_offset)
        {
            continue;
        }
        found.push(AllocatorFunction {
            symbol: name.to_string(),
            file_offset,
            role,
            starts_with_push: false,
        });
    }
    let raw = File::open(path)?;
    for f in &mut found {
        let mut first = [0u8; 2];
        if raw.read_exact_at(&mut first, f.file_offset).is_ok() {
            f.starts_with_push = is_push(first);
        }
    }
    Ok(found)
}

/// Whether an instruction starting with these bytes is `push r64` (`50+r`, or `41 50+r` for
/// r8-r15).
fn is_push(first: [u8; 2]) -> bool {
    matches!(first, [0x50..=0x57, _] | [0x41, 0x50..=0x57])
}

/// A name for the allocator in the object at `path`.
fn allocator_name(path: &str, functions: &[AllocatorFunction]) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    for (needle, name) in [
        ("jemalloc", "jemalloc"),
        ("tcmalloc", "tcmalloc"),
        ("mimalloc", "mimalloc"),
        ("libc.so", "glibc"),
        ("libc-", "glibc"),
        ("musl", "musl"),
    ] {
        if file.contains(needle) {
            return name.to_string();
        }
    }
    if functions.iter().any(|f| f.symbol == "mallocx") {
        return "jemalloc".to_string();
    }
    file.to_string()
}

/// The plan for process `pid`: its allocator object and the functions to probe.
pub fn plan(pid: u32) -> Result<AllocatorPlan, AllocatorError> {
    let maps = memlens_procfs::read_maps(pid).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            AllocatorError::Gone(pid)
        } else {
            AllocatorError::Maps { pid, source }
        }
    })?;
    plan_from(pid, &maps)
}

/// The plan from a process's mappings.
pub fn plan_from(pid: u32, maps: &[Mapping]) -> Result<AllocatorPlan, AllocatorError> {
    // One mapping per object (the first, which the map_files link opens), in address order.
    let mut objects: Vec<&Mapping> = Vec::new();
    for m in maps
        .iter()
        .filter(|m| m.inode != 0 && m.path.starts_with('/'))
    {
        if !objects.iter().any(|o| o.dev == m.dev && o.inode == m.inode) {
            objects.push(m);
        }
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let is_libc = |m: &Mapping| {
        let name = m.module_name();
        name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-")
    };
    let is_exe = |m: &Mapping| exe.as_deref() == Some(m.path.as_str());
    let mut order: Vec<&Mapping> = objects.iter().copied().filter(|m| is_exe(m)).collect();
    order.extend(objects.iter().filter(|m| !is_exe(m) && !is_libc(m)));
    order.extend(objects.iter().filter(|m| !is_exe(m) && is_libc(m)));
    for m in order {
        // The process's own file through its map_files link (any mount namespace, even
        // deleted); through its root where that link cannot be opened (no CAP_SYS_ADMIN).
        let mut open_path = m.map_file(pid);
        if File::open(&open_path).is_err() {
            open_path = format!("/proc/{pid}/root{}", m.path);
        }
        let functions = match functions_in(&open_path) {
            Ok(f) => f,
            Err(e) => {
                // Objects that cannot be read (vanished, not ELF) are not the allocator.
                tracing::debug!("process {pid}: {}: {e}", m.path);
                continue;
            }
        };
        if !functions.iter().any(|f| f.symbol == "malloc") {
            continue;
        }
        return Ok(AllocatorPlan {
            pid,
            allocator: allocator_name(&m.path, &functions),
            open_path,
            path: m.path.clone(),
            functions,
        });
    }
    Err(AllocatorError::NoAllocator(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_process_allocates_through_glibc() {
        let plan = plan(std::process::id()).expect("a plan");
        assert_eq!(plan.allocator, "glibc", "{plan:?}");
        let roles: Vec<(&str, AllocatorRole)> = plan
            .functions
            .iter()
            .map(|f| (f.symbol.as_str(), f.role))
            .collect();
        for wanted in [
            ("malloc", AllocatorRole::SizeFirst),
            ("free", AllocatorRole::Free),
            ("calloc", AllocatorRole::Calloc),
            ("realloc", AllocatorRole::Realloc),
            ("posix_memalign", AllocatorRole::PosixMemalign),
        ] {
            assert!(roles.contains(&wanted), "{wanted:?} in {roles:?}");
        }
        // Aliases at one address are probed once.
        let mut offsets: Vec<u64> = plan.functions.iter().map(|f| f.file_offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), plan.functions.len());
        // glibc's malloc saves registers first; its free tests its argument first.
        let push = |name: &str| {
            plan.functions
                .iter()
                .find(|f| f.symbol == name)
                .map(|f| f.starts_with_push)
        };
        eprintln!(
            "malloc starts with push: {:?}, free: {:?}",
            push("malloc"),
            push("free")
        );
        assert!(is_push([0x41, 0x54]) && is_push([0x55, 0x48]) && !is_push([0x48, 0x85]));
        // libc defines no operator new.
        assert!(!roles.iter().any(|(s, _)| s.starts_with("_Zn")));
    }

    #[test]
    fn a_process_that_is_gone_says_so() {
        let err = plan(u32::MAX).expect_err("no such process");
        assert!(matches!(err, AllocatorError::Gone(_)), "{err}");
    }
}
