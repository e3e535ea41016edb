//! Recovering the caller of a frameless leaf function.
//!
//! A page is most often first touched inside a leaf that sets up no frame pointer: glibc's
//! `memset`/`memcpy`, Go's `runtime.memmove`. A frame-pointer walk then goes from the leaf
//! straight to its caller's caller, skipping the very function the user needs to see. The kernel
//! program copies the words on top of the user stack at the fault; here the leaf's own unwind
//! information (`.eh_frame`, else `.debug_frame`) says at which of those words its return address
//! is, at that very instruction. No unwind rule, no recovery: a caller is never guessed.

use std::{num::NonZeroUsize, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use memlens_common::page::LEAF_STACK_WORDS;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use lru::LruCache;
use memlens_procfs::Mapping;

use crate::gopclntab::GoPcln;

/// Where a leaf's return address is, at one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafRule {
    /// The function has a frame pointer here: the frame-pointer walk already found its caller.
    FramePointer,
    /// No frame pointer: the return address is word `n` above the stack pointer.
    StackWord(usize),
    /// No usable unwind information: the caller may be missing from the stack.
    Unknown,
}

/// Unwind tables of one binary.
struct ModuleCfi {
    eh_frame: Option<(Vec<u8>, u64)>,
    debug_frame: Option<Vec<u8>>,
    /// Go's frame-size table, for Go binaries (stripped ones have nothing else).
    go: Option<GoPcln>,
    text_addr: u64,
    /// `(file offset, file size, virtual address)` of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
}

/// Most binaries whose unwind tables are kept (the least recently used go first).
const MAX_MODULES: NonZeroUsize = NonZeroUsize::new(256).expect("non-zero");

/// Looks up leaf rules, caching each binary's unwind tables by (device, inode).
pub struct LeafResolver {
    modules: LruCache<(String, u64), Option<Arc<ModuleCfi>>>,
}

impl Default for LeafResolver {
    fn default() -> LeafResolver {
        LeafResolver {
            modules: LruCache::new(MAX_MODULES),
        }
    }
}

impl LeafResolver {
    /// The rule for the instruction at `ip` in process `pid`, whose mapping is `mapping`.
    pub fn rule(&mut self, pid: u32, mapping: &Mapping, ip: u64) -> LeafRule {
        if mapping.inode == 0 {
            return LeafRule::Unknown; // JIT code, vDSO: no file to read
        }
        let key = (mapping.dev.clone(), mapping.inode);
        let cfi = match self.modules.get(&key) {
            Some(cfi) => cfi.clone(),
            None => {
                // A file that cannot be opened (the process is gone) is not remembered.
                let Ok(data) = std::fs::read(mapping.map_file(pid)) else {
                    return LeafRule::Unknown;
                };
                let cfi = load_cfi(&data).map(Arc::new);
                self.modules.put(key, cfi.clone());
                cfi
            }
        };
        let Some(cfi) = cfi else {
            return LeafRule::Unknown;
        };
        let offset = mapping.file_offset(ip);
        let Some(vaddr) = cfi
            .segments
            .iter()
            .find(|(off, size, _)| *off <= offset && offset < off + size)
            .map(|(off, _, vaddr)| offset - off + vaddr)
        else {
            return LeafRule::Unknown;
        };
        rule_at(&cfi, vaddr)
    }
}

fn load_cfi(data: &[u8]) -> Option<ModuleCfi> {
    let file = object::File::parse(data).ok()?;
    // Go compresses its DWARF sections (SHF_COMPRESSED): read them uncompressed.
    let section = |name: &str| {
        file.section_by_name(name)
            .and_then(|s| Some((s.uncompressed_data().ok()?.into_owned(), s.address())))
    };
    let text_addr = file.section_by_name(".text").map_or(0, |s| s.address());
    let eh_frame = section(".eh_frame");
    let debug_frame = section(".debug_frame").map(|(d, _)| d);
    let go = section(".gopclntab").and_then(|(d, _)| GoPcln::parse(d, text_addr));
    if eh_frame.is_none() && debug_frame.is_none() && go.is_none() {
        return None;
    }
    Some(ModuleCfi {
        eh_frame,
        debug_frame,
        go,
        text_addr,
        segments: file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect(),
    })
}

fn rule_at(cfi: &ModuleCfi, vaddr: u64) -> LeafRule {
    let mut ctx = Box::new(UnwindContext::new());
    if let Some((data, addr)) = &cfi.eh_frame {
        let section = EhFrame::new(data, LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(*addr)
            .set_text(cfi.text_addr);
        if let Ok(row) =
            section.unwind_info_for_address(&bases, &mut ctx, vaddr, EhFrame::cie_from_offset)
        {
            return classify(
                row.cfa(),
                row.register(X86_64::RA).unwrap_or(RegisterRule::Undefined),
            );
        }
    }
    if let Some(data) = &cfi.debug_frame {
        let mut section = DebugFrame::new(data, LittleEndian);
        section.set_address_size(8);
        let bases = BaseAddresses::default().set_text(cfi.text_addr);
        if let Ok(row) =
            section.unwind_info_for_address(&bases, &mut ctx, vaddr, DebugFrame::cie_from_offset)
        {
            return classify(
                row.cfa(),
                row.register(X86_64::RA).unwrap_or(RegisterRule::Undefined),
            );
        }
    }
    match cfi.go.as_ref().and_then(|go| go.sp_delta(vaddr)) {
        // Nothing pushed yet, or a frameless leaf: the return address is on top of the stack.
        Some(0) => LeafRule::StackWord(0),
        // A Go function with a frame keeps the frame pointer chain (the compiler and the
        // assembler save BP in every frame): the walk is right.
        Some(_) => LeafRule::FramePointer,
        None => LeafRule::Unknown,
    }
}

fn classify<T: gimli::ReaderOffset>(cfa: &CfaRule<T>, ra: RegisterRule<T>) -> LeafRule {
    let CfaRule::RegisterAndOffset { register, offset } = cfa else {
        return LeafRule::Unknown;
    };
    if *register == X86_64::RBP {
        return LeafRule::FramePointer;
    }
    if *register != X86_64::RSP {
        return LeafRule::Unknown;
    }
    // The return address is saved at CFA + ra_offset (CFA - 8 on x86-64), CFA = rsp + offset.
    let RegisterRule::Offset(ra_offset) = ra else {
        return LeafRule::Unknown;
    };
    let at = offset + ra_offset;
    match usize::try_from(at) {
        Ok(at) if at % 8 == 0 && at / 8 < LEAF_STACK_WORDS => LeafRule::StackWord(at / 8),
        _ => LeafRule::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlens_procfs::maps as procmaps;

    /// glibc's memset is frameless: at its entry the return address is the word at rsp.
    #[test]
    fn libc_memset_entry_has_its_return_address_on_top_of_the_stack() {
        let pid = std::process::id();
        let maps = procmaps::read_maps(pid).expect("own maps");
        let memset = libc::memset as *const () as u64;
        let Some(mapping) = procmaps::find(&maps, memset) else {
            panic!("memset at {memset:#x} is not mapped");
        };
        let mut resolver = LeafResolver::default();
        // The symbol may be an IFUNC resolver stub or the chosen variant; either way, at the
        // first instruction of a function, CFA = rsp + 8 and the return address is at rsp.
        assert_eq!(resolver.rule(pid, mapping, memset), LeafRule::StackWord(0));
    }

    #[test]
    fn rules_from_cfa_forms() {
        let rsp = |off| CfaRule::RegisterAndOffset::<usize> {
            register: X86_64::RSP,
            offset: off,
        };
        assert_eq!(
            classify(&rsp(8), RegisterRule::Offset(-8)),
            LeafRule::StackWord(0)
        );
        assert_eq!(
            classify(&rsp(24), RegisterRule::Offset(-8)),
            LeafRule::StackWord(2)
        );
        assert_eq!(
            classify(&rsp(800), RegisterRule::Offset(-8)),
            LeafRule::Unknown
        );
        let rbp = CfaRule::RegisterAndOffset::<usize> {
            register: X86_64::RBP,
            offset: 16,
        };
        assert_eq!(
            classify(&rbp, RegisterRule::Offset(-8)),
            LeafRule::FramePointer
        );
    }
}
