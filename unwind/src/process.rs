//! A process's executable mappings, as the unwinder keeps them between copies.

use std::{sync::Arc, time::Instant};

use memlens_procfs::Image;
use memlens_symbolize::tables::ModuleFile;

use crate::modules::SLOT;

/// An executable mapping of a process.
pub struct Code {
    pub start: u64,
    pub end: u64,
    /// Its file's tables, and where the loader put the file's addresses; None for code in no
    /// file or a file that could not be read.
    pub file: Option<(Arc<ModuleFile>, u64)>,
    /// Where the file sits in the shared modules' space, when it has unwind tables.
    pub canonical: Option<u64>,
}

impl Code {
    /// Whether the next frame is found by the file's unwind tables.
    pub fn unwind_tables(&self) -> bool {
        self.canonical.is_some()
    }

    /// `addr` (in this mapping) moved into the shared modules' space, where its binary's tables
    /// are; None for code without tables (framehop then follows the frame pointer).
    pub fn canonical(&self, addr: u64) -> Option<u64> {
        let (_, bias) = self.file.as_ref()?;
        let offset = addr.checked_sub(*bias).filter(|&o| o < SLOT)?;
        Some(self.canonical? + offset)
    }
}

/// One process's address space, kept while it allocates.
pub struct Process {
    pub start_ns: u64,
    /// Where its executable image lay when the mappings were read (None if unreadable).
    pub image: Option<Image>,
    /// Executable mappings, sorted by start.
    pub code: Vec<Code>,
    pub mapped_at: Instant,
    pub checked_at: Instant,
    /// When the process with this pid ended, if it did.
    pub ended_ns: Option<u64>,
}

impl Process {
    /// The executable mapping holding `addr`.
    pub fn code_at(&self, addr: u64) -> Option<&Code> {
        let i = self.code.partition_point(|c| c.start <= addr);
        let code = self.code.get(i.checked_sub(1)?)?;
        (code.start <= addr && addr < code.end).then_some(code)
    }

    /// Where the return address of a frameless Go leaf at `ip` is: `Some(sp)` when `ip` is in a
    /// Go function that has pushed nothing there (a frameless leaf, or any function before its
    /// prologue).
    pub fn go_leaf_return(&self, ip: u64, sp: u64) -> Option<u64> {
        let (file, bias) = self.code_at(ip)?.file.as_ref()?;
        let delta = file.go.as_ref()?.sp_delta(ip.checked_sub(*bias)?)?;
        (delta == 0).then_some(sp)
    }
}
