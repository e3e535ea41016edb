//! Symbolization: addresses to function names, source lines and inlined frames, with blazesym.
//!
//! User stacks are symbolized through `/proc/<pid>/map_files` while the process lives (which
//! works across mount namespaces and for deleted binaries), and after it exited through the
//! binary's path only if that file is still the very one that was mapped (same device and inode);
//! otherwise frames show as `[unknown] module+offset`, never as a wrong name. Kernel stacks come
//! from kallsyms, kept compactly (`kallsyms`). blazesym caches parsed binaries by device
//! and inode, so the same library mapped by a thousand processes is parsed once.

pub mod gopclntab;
mod kallsyms;
pub mod leaf;
pub mod tables;

use std::{os::unix::fs::MetadataExt as _, path::Path};

use blazesym::symbolize::{
    evict,
    source::{Elf, Process, Source},
    Input, Symbolized, Symbolizer as Blaze,
};
use hashlink::LruCache;
use kallsyms::KernelSymbols;
use memlens_procfs::{maps, Mapping};
pub use memlens_types::stack::Frame;

/// A frame with no name: `[unknown] module+offset` when the address is in a mapping.
#[must_use]
pub fn unknown_frame(addr: u64, mapping: Option<&Mapping>, recovered: bool) -> Frame {
    Frame {
        addr,
        function: None,
        module: mapping.map(Mapping::module_name),
        module_offset: mapping.map(|m| m.file_offset(addr)),
        file: None,
        line: None,
        inlined: false,
        recovered,
    }
}

/// One user-stack address to symbolize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackAddr {
    pub addr: u64,
    /// A return address (every frame but the innermost): looked up one byte earlier, in the call.
    pub return_address: bool,
    /// Recovered from the stack as a frameless leaf's caller.
    pub recovered: bool,
}

/// Most kernel addresses whose frames are remembered (the least recently used go first). The
/// table grows to what it holds (`lru`'s would take 2 MiB at once for this bound).
const MAX_KERNEL_ADDRS: usize = 100_000;

/// A blazesym symbolizer with the agent's caches.
pub struct Symbolizer {
    blaze: Blaze,
    /// blazesym may hold files it read since its caches were last dropped.
    files_read: bool,
    kernel: LruCache<u64, Vec<Frame>>,
    kernel_symbols: Option<KernelSymbols>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    #[must_use]
    pub fn new() -> Symbolizer {
        Symbolizer {
            blaze: Symbolizer::blaze(),
            files_read: false,
            kernel: LruCache::new(MAX_KERNEL_ADDRS),
            kernel_symbols: None,
        }
    }

    fn blaze() -> Blaze {
        Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build()
    }

    /// Symbolizes a user stack of process `pid`, whose mappings (read while it ran) are `maps`.
    /// `alive` says whether `pid` still is that process. One list per address: the functions
    /// inlined at it, innermost first, then the function it is in.
    pub fn user_stack(
        &mut self,
        pid: u32,
        alive: bool,
        maps: &[Mapping],
        stack: &[StackAddr],
    ) -> Vec<Vec<Frame>> {
        let lookups: Vec<u64> = stack
            .iter()
            .map(|a| {
                if a.return_address {
                    a.addr.saturating_sub(1)
                } else {
                    a.addr
                }
            })
            .collect();
        self.files_read |= !stack.is_empty();
        let symbolized = if alive {
            let source = Source::Process(Process::new(pid.into()));
            self.blaze.symbolize(&source, Input::AbsAddr(&lookups)).ok()
        } else {
            None
        };
        let mut frames = Vec::with_capacity(stack.len());
        for (i, entry) in stack.iter().enumerate() {
            let mapping = maps::find(maps, entry.addr);
            let found = match &symbolized {
                Some(results) => results
                    .get(i)
                    .and_then(|s| self.sym_frames(s, entry, mapping)),
                None => mapping.and_then(|m| self.exited_frames(m, lookups[i], entry)),
            };
            frames.push(
                found.unwrap_or_else(|| vec![unknown_frame(entry.addr, mapping, entry.recovered)]),
            );
        }
        frames
    }

    /// After the process exited: through the binary's path, if it is still the mapped file.
    fn exited_frames(
        &self,
        mapping: &Mapping,
        lookup: u64,
        entry: &StackAddr,
    ) -> Option<Vec<Frame>> {
        let path = match &mapping.open_path {
            // A descriptor of the mapped file itself, held by the agent.
            Some(open) => Path::new(open.as_str()),
            None => {
                let path = Path::new(mapping.path.as_str());
                let meta = std::fs::metadata(path).ok()?;
                if meta.ino() != mapping.inode || format_dev(meta.dev()) != mapping.dev {
                    return None; // gone or replaced: a name from another file would be wrong
                }
                path
            }
        };
        let source = Source::Elf(Elf::new(path));
        let offset = mapping.file_offset(lookup);
        let results = self
            .blaze
            .symbolize(&source, Input::FileOffset(&[offset]))
            .ok()?;
        self.sym_frames(results.first()?, entry, Some(mapping))
    }

    fn sym_frames(
        &self,
        symbolized: &Symbolized<'_>,
        entry: &StackAddr,
        mapping: Option<&Mapping>,
    ) -> Option<Vec<Frame>> {
        let Symbolized::Sym(sym) = symbolized else {
            return None;
        };
        let module = mapping.map(Mapping::module_name);
        let module_offset = mapping.map(|m| m.file_offset(entry.addr));
        let frame =
            |name: &str, code: Option<&blazesym::symbolize::CodeInfo<'_>>, inlined: bool| Frame {
                addr: entry.addr,
                function: Some(name.to_string()),
                module: module.clone(),
                module_offset,
                file: code.map(|c| c.to_path().display().to_string()),
                line: code.and_then(|c| c.line),
                inlined,
                recovered: entry.recovered,
            };
        // blazesym lists inlined calls outermost first; frames go innermost first.
        let mut frames: Vec<Frame> = sym
            .inlined
            .iter()
            .rev()
            .map(|i| frame(&i.name, i.code_info.as_ref(), true))
            .collect();
        frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
        Some(frames)
    }

    /// Symbolizes a kernel stack (innermost first) from kallsyms.
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.kernel.contains_key(a))
            .collect();
        if !missing.is_empty() {
            // Read once, and again only for an address the table does not name (a module
            // loaded since) when it is a minute old: a new address alone is no reason to read
            // the file again (0.1 s of CPU and a few MiB each time, once a minute on a busy node).
            let stale = match &self.kernel_symbols {
                None => true,
                Some(k) => {
                    k.read_at.elapsed() >= kallsyms::MAX_AGE
                        && missing.iter().any(|&a| k.name(a).is_none())
                }
            };
            if stale {
                self.kernel_symbols = KernelSymbols::read()
                    .inspect_err(|e| tracing::debug!("kernel functions not named: {e}"))
                    .ok();
            }
            for addr in missing {
                let frame = match self.kernel_symbols.as_ref().and_then(|k| k.name(addr)) {
                    Some(name) => Frame {
                        addr,
                        function: Some(name.to_owned()),
                        module: Some("[kernel]".into()),
                        module_offset: None,
                        file: None,
                        line: None,
                        inlined: false,
                        recovered: false,
                    },
                    None => unknown_frame(addr, None, false),
                };
                self.kernel.insert(addr, vec![frame]);
            }
        }
        let frames: Vec<Frame> = addrs
            .iter()
            .flat_map(|a| self.kernel.get(a).cloned().unwrap_or_default())
            .collect();
        // The innermost frames are the tracing machinery that ran memlens' own program.
        let skip = frames.iter().take_while(|f| is_tracing_frame(f)).count();
        frames[skip..].to_vec()
    }

    /// Drops everything blazesym keeps of the files it read (symbol tables, parsed DWARF: tens
    /// of MiB for a large binary with debug information), keeping the kernel's names. Returns
    /// whether there was anything to drop.
    pub fn drop_file_caches(&mut self) -> bool {
        if !std::mem::take(&mut self.files_read) {
            return false;
        }
        self.blaze = Symbolizer::blaze();
        true
    }

    /// Drops what blazesym cached for a process that is gone.
    pub fn forget_process(&mut self, pid: u32) {
        let _ = self
            .blaze
            .evict(&evict::Evict::Process(evict::Process::new(pid.into())));
    }
}

/// Frames of the kernel's tracing path (the BPF program, the tracepoint's dispatch), which sit on
/// top of every kernel stack the program captures and say nothing about the allocation.
fn is_tracing_frame(frame: &Frame) -> bool {
    const PREFIXES: [&str; 6] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "perf_trace_",
        "trace_call_bpf",
    ];
    frame
        .function
        .as_deref()
        .is_some_and(|f| PREFIXES.iter().any(|p| f.starts_with(p)))
}

/// `st_dev` as `/proc/<pid>/maps` prints it: `major:minor` in hex, two digits at least.
fn format_dev(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> u64 {
        a_named_function as *const () as u64
    }

    #[test]
    fn own_function_symbolizes_by_name() {
        let pid = std::process::id();
        let maps = maps::read_maps(pid).expect("maps");
        let addr = a_named_function() + 1;
        let mut symbolizer = Symbolizer::new();
        let frames = symbolizer.user_stack(
            pid,
            true,
            &maps,
            &[StackAddr {
                addr,
                return_address: false,
                recovered: false,
            }],
        );
        let names: Vec<String> = frames.iter().flatten().map(Frame::display_name).collect();
        assert!(
            names.iter().any(|n| n.contains("a_named_function")),
            "{names:?}"
        );
        assert!(symbolizer.drop_file_caches(), "the binary was read");
        assert!(!symbolizer.drop_file_caches(), "nothing read since");
    }

    #[test]
    fn device_numbers_print_like_maps() {
        assert_eq!(format_dev(libc::makedev(254, 0)), "fe:00");
        assert_eq!(format_dev(libc::makedev(8, 17)), "08:11");
    }

    #[test]
    fn unknown_frames_never_invent_a_name() {
        let mapping = Mapping {
            start: 0x1000,
            end: 0x2000,
            executable: true,
            offset: 0x3000,
            dev: "fe:00".into(),
            inode: 1,
            path: "/gone/libfoo.so (deleted)".into(),
            open_path: None,
        };
        let frame = unknown_frame(0x1010, Some(&mapping), false);
        assert_eq!(frame.display_name(), "[unknown] libfoo.so+0x3010");
        assert_eq!(
            unknown_frame(0x42, None, false).display_name(),
            "[unknown] 0x42"
        );
    }
}
