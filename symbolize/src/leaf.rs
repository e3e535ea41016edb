//! Recovering the caller of a frameless leaf function.
//!
//! A page is most often first touched inside a leaf that sets up no frame pointer: glibc's
//! `memset`/`memcpy`, Go's `runtime.memmove`. A frame-pointer walk then goes from the leaf
//! straight to its caller's caller, skipping the very function the user needs to see. The kernel
//! program copies the words on top of the user stack at the fault; here the leaf's own unwind
//! information (`.eh_frame`, else `.debug_frame`) says at which of those words its return address
//! is, at that very instruction. No unwind rule, no recovery: a caller is never guessed.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use memlens_common::page::LEAF_STACK_WORDS;
use memlens_procfs::Mapping;

use crate::tables::{ModuleFile, SharedModuleFiles};

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

/// Looks up leaf rules in binaries' unwind tables, read through the cache it shares with the
/// unwinder.
#[derive(Default)]
pub struct LeafResolver {
    tables: SharedModuleFiles,
}

impl LeafResolver {
    #[must_use]
    pub fn new(tables: SharedModuleFiles) -> LeafResolver {
        LeafResolver { tables }
    }

    /// The rule for the instruction at `ip` in process `pid`, whose mapping is `mapping`.
    pub fn rule(&mut self, pid: u32, mapping: &Mapping, ip: u64) -> LeafRule {
        if mapping.inode == 0 {
            return LeafRule::Unknown; // JIT code, vDSO: no file to read
        }
        let file = self
            .tables
            .lock()
            .ok()
            .and_then(|mut tables| tables.get(pid, mapping));
        let Some(file) = file else {
            return LeafRule::Unknown;
        };
        match file.vaddr_of(mapping.file_offset(ip)) {
            Some(vaddr) => rule_at(&file, vaddr),
            None => LeafRule::Unknown,
        }
    }
}

fn rule_at(file: &ModuleFile, vaddr: u64) -> LeafRule {
    let mut ctx = Box::new(UnwindContext::new());
    let text_addr = file.sections.text.as_ref().map_or(0, |t| t.start);
    if let Some((range, data)) = &file.sections.eh_frame {
        let section = EhFrame::new(&data[..], LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(range.start)
            .set_text(text_addr);
        if let Ok(row) =
            section.unwind_info_for_address(&bases, &mut ctx, vaddr, EhFrame::cie_from_offset)
        {
            return classify(
                row.cfa(),
                row.register(X86_64::RA).unwrap_or(RegisterRule::Undefined),
            );
        }
    }
    if let Some(data) = &file.sections.debug_frame {
        let mut section = DebugFrame::new(&data[..], LittleEndian);
        section.set_address_size(8);
        let bases = BaseAddresses::default().set_text(text_addr);
        if let Ok(row) =
            section.unwind_info_for_address(&bases, &mut ctx, vaddr, DebugFrame::cie_from_offset)
        {
            return classify(
                row.cfa(),
                row.register(X86_64::RA).unwrap_or(RegisterRule::Undefined),
            );
        }
    }
    match file.go.as_ref().and_then(|go| go.sp_delta(vaddr)) {
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
