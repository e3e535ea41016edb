//! Go's heap profile, read from a running Go process's memory.
//!
//! The Go runtime samples one allocation per `runtime.MemProfileRate` bytes (512 KiB by default)
//! and keeps, per allocating stack, a `bucket` on the list `runtime.mbuckets`:
//!
//! ```text
//! bucket { next, allnext *bucket; typ int; hash, size, nstk uintptr }   6 words (Go 1.18 to 1.2x)
//! stk    [nstk]uintptr                                                   return addresses
//! memRecord { active memRecordCycle; future [3]memRecordCycle }          16 words
//! memRecordCycle { allocs, frees, alloc_bytes, free_bytes uintptr }
//! ```
//!
//! `active` is the profile published at the last garbage collection; what `runtime.MemProfile`
//! (and `/debug/pprof/heap`) reports is `active` plus the cycle `runtime.mProfCycle` says is
//! complete, or every cycle while no collection has run yet. This reader does the same, from
//! outside: the addresses of those three variables come from the binary's symbol table, so a
//! stripped binary cannot be read (and says so). The process is not stopped: a list being
//! changed as it is read gives an error, never a wrong stack (each bucket's type and depth are
//! checked).

use std::{fs::File, io, num::NonZeroUsize, os::unix::fs::MetadataExt as _};

use lru::LruCache;
use memlens_model::allocations::{AllocationProfile, SampledStack};
use memlens_procfs::{maps, mem::ProcessMemory};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// Most buckets read from one process (a large service has a few thousand).
const MAX_BUCKETS: usize = 100_000;
/// Deepest stack accepted (Go records 32 frames, 128 since Go 1.23, more if configured).
const MAX_DEPTH: u64 = 1024;
/// `memProfile`, the bucket type of the heap profile.
const MEM_PROFILE: u64 = 1;
/// Words of a bucket's header and of its `memRecord`, and the stack depth read with them.
const HEADER_WORDS: usize = 6;
const USUAL_DEPTH: usize = 32;
const RECORD_WORDS: usize = 16;
/// Binaries whose symbols are remembered.
const MAX_BINARIES: NonZeroUsize = NonZeroUsize::new(256).expect("non-zero");

/// Why a process's heap profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GoHeapError {
    #[error("process {0} is not a Go program")]
    NotGo(u32),
    #[error(
        "process {0}: its Go binary has no symbol table (stripped), so the runtime's heap profile \
         cannot be found"
    )]
    Stripped(u32),
    #[error(
        "process {0} keeps no heap profile: runtime.MemProfileRate is 0 (the Go linker turns \
         profiling off in programs that never read it, such as those not importing runtime/pprof)"
    )]
    ProfilingOff(u32),
    #[error(
        "process {pid}: the runtime's heap profile does not look like Go 1.18 to 1.2x's: {why}"
    )]
    Layout { pid: u32, why: String },
    #[error("process {pid}: reading {what}: {source}")]
    Io {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
}

/// Link-time addresses of the runtime's profile variables in one binary.
#[derive(Clone, Copy, Debug)]
struct Symbols {
    mbuckets: u64,
    mem_profile_rate: u64,
    mprof_cycle: Option<u64>,
    /// A position-independent executable: its addresses move by the load bias.
    position_independent: bool,
    /// Virtual address of the loadable segment at file offset 0.
    first_segment: u64,
}

/// What a binary offers the reader.
#[derive(Clone, Copy, Debug)]
enum Binary {
    Go(Symbols),
    GoStripped,
    NotGo,
}

/// Reads Go heap profiles; remembers each binary's symbols by device and inode.
pub struct GoHeapReader {
    binaries: LruCache<(u64, u64), Binary>,
}

impl Default for GoHeapReader {
    fn default() -> Self {
        GoHeapReader {
            binaries: LruCache::new(MAX_BINARIES),
        }
    }
}

impl GoHeapReader {
    /// The heap profile of process `pid`.
    pub fn read(&mut self, pid: u32) -> Result<AllocationProfile, GoHeapError> {
        let io = |what| move |source| GoHeapError::Io { pid, what, source };
        let exe = File::open(format!("/proc/{pid}/exe")).map_err(io("its executable"))?;
        let meta = exe.metadata().map_err(io("its executable"))?;
        let key = (meta.dev(), meta.ino());
        let binary = match self.binaries.get(&key) {
            Some(b) => *b,
            None => {
                let b = inspect(exe).map_err(io("its executable's symbols"))?;
                self.binaries.put(key, b);
                b
            }
        };
        let symbols = match binary {
            Binary::Go(s) => s,
            Binary::GoStripped => return Err(GoHeapError::Stripped(pid)),
            Binary::NotGo => return Err(GoHeapError::NotGo(pid)),
        };
        let bias = if symbols.position_independent {
            let maps = maps::read_maps(pid).map_err(io("its mappings"))?;
            let start = maps
                .iter()
                .find(|m| m.inode == meta.ino() && m.offset == 0)
                .map(|m| m.start)
                .ok_or_else(|| GoHeapError::Layout {
                    pid,
                    why: "its executable is not mapped".into(),
                })?;
            start.wrapping_sub(symbols.first_segment & !0xfff)
        } else {
            0
        };
        let mem = ProcessMemory::open(pid).map_err(io("its memory"))?;
        let rate = mem
            .word(symbols.mem_profile_rate.wrapping_add(bias))
            .map_err(io("runtime.MemProfileRate"))? as i64;
        if rate <= 0 {
            return Err(GoHeapError::ProfilingOff(pid));
        }
        let cycle = match symbols.mprof_cycle {
            Some(addr) => {
                let word = mem
                    .word(addr.wrapping_add(bias))
                    .map_err(io("runtime.mProfCycle"))?;
                // A uint32: the cycle from bit 1 on, a flag in bit 0.
                Some(((word & 0xffff_ffff) >> 1) % 3)
            }
            None => None,
        };
        let head = mem
            .word(symbols.mbuckets.wrapping_add(bias))
            .map_err(io("runtime.mbuckets"))?;
        read_buckets(pid, &mem, head, cycle, rate.unsigned_abs())
    }
}

/// Walks the bucket list from `head`.
fn read_buckets(
    pid: u32,
    mem: &ProcessMemory,
    head: u64,
    cycle: Option<u64>,
    rate: u64,
) -> Result<AllocationProfile, GoHeapError> {
    let layout = |why: String| GoHeapError::Layout { pid, why };
    // Per bucket: what MemProfile reports after a collection, and every cycle (before one).
    let mut published: Vec<SampledStack> = Vec::new();
    let mut everything: Vec<[u64; 4]> = Vec::new();
    let mut dropped_stacks = 0;
    let mut bucket = head;
    while bucket != 0 {
        if published.len() == MAX_BUCKETS {
            dropped_stacks += 1;
            bucket = mem.word(bucket + 8).unwrap_or(0);
            if dropped_stacks > MAX_BUCKETS as u64 {
                break;
            }
            continue;
        }
        // One read for the common case (a stack of up to 32 frames, Go's default before 1.23);
        // a bucket that ends near the end of its mapping, or a deeper stack, takes a second.
        let io = |what| move |source| GoHeapError::Io { pid, what, source };
        let first = mem
            .words(bucket, HEADER_WORDS + USUAL_DEPTH + RECORD_WORDS)
            .or_else(|_| mem.words(bucket, HEADER_WORDS))
            .map_err(io("a profile bucket"))?;
        let (allnext, typ, nstk) = (first[1], first[2], first[5]);
        if typ != MEM_PROFILE {
            return Err(layout(format!(
                "bucket at {bucket:#x} has type {typ}, not the heap profile's"
            )));
        }
        if nstk == 0 || nstk > MAX_DEPTH {
            return Err(layout(format!(
                "bucket at {bucket:#x} has a stack of {nstk} frames"
            )));
        }
        let depth = nstk as usize;
        let rest = match first.get(HEADER_WORDS..HEADER_WORDS + depth + RECORD_WORDS) {
            Some(rest) => rest.to_vec(),
            None => mem
                .words(bucket + 8 * HEADER_WORDS as u64, depth + RECORD_WORDS)
                .map_err(io("a profile bucket's stack"))?,
        };
        let (pcs, record) = rest.split_at(depth);
        let cycle_at = |i: usize| -> [u64; 4] {
            let at = 4 + 4 * i;
            [record[at], record[at + 1], record[at + 2], record[at + 3]]
        };
        let mut counts = [record[0], record[1], record[2], record[3]];
        let mut all = counts;
        for i in 0..3 {
            add(&mut all, cycle_at(i));
        }
        if let Some(c) = cycle {
            add(&mut counts, cycle_at(c as usize));
        }
        published.push(SampledStack {
            pcs: pcs.to_vec(),
            allocs: counts[0],
            frees: counts[1],
            alloc_bytes: counts[2],
            free_bytes: counts[3],
        });
        everything.push(all);
        bucket = allnext;
    }
    // No collection has published anything yet: every cycle counts (as MemProfile does).
    if published.iter().all(|s| s.allocs == 0 && s.frees == 0) {
        for (stack, all) in published.iter_mut().zip(everything) {
            [
                stack.allocs,
                stack.frees,
                stack.alloc_bytes,
                stack.free_bytes,
            ] = all;
        }
    }
    Ok(AllocationProfile {
        pid,
        sample_rate_bytes: rate,
        stacks: published,
        dropped_stacks,
        leaf_is_ip: false,
    })
}

fn add(into: &mut [u64; 4], other: [u64; 4]) {
    for (a, b) in into.iter_mut().zip(other) {
        *a = a.wrapping_add(b);
    }
}

/// Whether `exe` is a Go binary, and where its profile variables are.
fn inspect(exe: File) -> io::Result<Binary> {
    let data = object::ReadCache::new(exe);
    let Ok(file) = object::File::parse(&data) else {
        return Ok(Binary::NotGo);
    };
    if file.section_by_name(".gopclntab").is_none()
        && file.section_by_name(".go.buildinfo").is_none()
    {
        return Ok(Binary::NotGo);
    }
    let (mut mbuckets, mut rate, mut cycle) = (None, None, None);
    for symbol in file.symbols() {
        match symbol.name() {
            Ok("runtime.mbuckets") => mbuckets = Some(symbol.address()),
            Ok("runtime.MemProfileRate") => rate = Some(symbol.address()),
            Ok("runtime.mProfCycle") => cycle = Some(symbol.address()),
            _ => {}
        }
    }
    let (Some(mbuckets), Some(mem_profile_rate)) = (mbuckets, rate) else {
        return Ok(Binary::GoStripped);
    };
    let first_segment = file
        .segments()
        .find(|s| s.file_range().0 == 0)
        .map_or(0, |s| s.address());
    Ok(Binary::Go(Symbols {
        mbuckets,
        mem_profile_rate,
        mprof_cycle: cycle,
        position_independent: file.kind() == object::ObjectKind::Dynamic,
        first_segment,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_not_go_says_so() {
        let mut reader = GoHeapReader::default();
        let err = reader.read(std::process::id()).expect_err("not Go");
        assert!(matches!(err, GoHeapError::NotGo(_)), "{err}");
        let err = reader.read(u32::MAX).expect_err("no such process");
        assert!(err.to_string().contains("its executable"), "{err}");
    }
}
