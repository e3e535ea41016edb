//! Every binary's unwind tables as one framehop module, shared by all the processes that map it.
//!
//! framehop finds a frame's rule by address, and caches rules by address and by the set of
//! modules they came from. With one framehop unwinder per process, 2,000 processes of the same
//! binary kept evicting each other's cache entries (99% of the misses on the busy-node bench)
//! and each held its own copy of every module. Here each binary is placed once in an address
//! space of its own, at a canonical base; a process's addresses are moved there frame by frame
//! ([`crate::process::Code::canonical`]), so one rule serves every process of the binary.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use framehop::{x86_64::UnwinderX86_64, ExplicitModuleSectionInfo, Module, Unwinder as _};
use memlens_symbolize::tables::{Bytes, ModuleFile};

/// Room for one binary: framehop addresses a module's code by a 32-bit offset from its base.
pub const SLOT: u64 = 1 << 32;
/// Where the canonical bases start: above any user-space address (57-bit at most), so an
/// address that is not moved (code without tables) never falls in a binary's slot.
const FIRST_BASE: u64 = 1 << 62;
/// How often binaries no process maps any more leave.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A binary placed in the canonical space.
struct Placed {
    /// Its tables, alive while a process or the table cache holds them.
    file: Weak<ModuleFile>,
    base: u64,
}

/// The shared framehop unwinder and where each binary sits in it.
pub struct SharedModules {
    unwinder: UnwinderX86_64<Bytes>,
    /// By the address of the binary's tables (kept from reuse by the `Weak`).
    placed: HashMap<usize, Placed>,
    /// Bases of binaries that left, for the next ones.
    free: Vec<u64>,
    next: u64,
    swept_at: Instant,
}

impl Default for SharedModules {
    fn default() -> SharedModules {
        SharedModules {
            unwinder: UnwinderX86_64::new(),
            placed: HashMap::new(),
            free: Vec::new(),
            next: FIRST_BASE,
            swept_at: Instant::now(),
        }
    }
}

impl SharedModules {
    /// The unwinder holding every placed binary.
    pub fn unwinder(&self) -> &UnwinderX86_64<Bytes> {
        &self.unwinder
    }

    /// Binaries placed now.
    pub fn len(&self) -> usize {
        self.placed.len()
    }

    /// The canonical base of `file`, placing it first if it is new; None when it has no unwind
    /// tables.
    pub fn base_of(&mut self, file: &Arc<ModuleFile>) -> Option<u64> {
        if !file.unwind_tables {
            return None;
        }
        let key = Arc::as_ptr(file) as usize;
        if let Some(placed) = self.placed.get(&key) {
            return Some(placed.base);
        }
        let base = self.free.pop().unwrap_or_else(|| {
            let base = self.next;
            self.next = self.next.saturating_add(SLOT);
            base
        });
        self.unwinder.add_module(module(file, base));
        self.placed.insert(
            key,
            Placed {
                file: Arc::downgrade(file),
                base,
            },
        );
        Some(base)
    }

    /// Removes the binaries whose tables nothing holds any more (no kept process maps them and
    /// the table cache let them go), at most every [`SWEEP_INTERVAL`].
    pub fn sweep(&mut self) {
        if self.swept_at.elapsed() < SWEEP_INTERVAL {
            return;
        }
        self.swept_at = Instant::now();
        let gone: Vec<usize> = self
            .placed
            .iter()
            .filter(|(_, p)| p.file.strong_count() == 0)
            .map(|(&key, _)| key)
            .collect();
        for key in gone {
            if let Some(placed) = self.placed.remove(&key) {
                self.unwinder.remove_module(placed.base);
                self.free.push(placed.base);
            }
        }
    }
}

/// The framehop module of `file` placed at `base`.
fn module(file: &ModuleFile, base: u64) -> Module<Bytes> {
    let s = file.sections.clone();
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: s.text,
        got_svma: s.got,
        eh_frame_svma: s.eh_frame.as_ref().map(|(r, _)| r.clone()),
        eh_frame: s.eh_frame.map(|(_, b)| b),
        eh_frame_hdr_svma: s.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
        eh_frame_hdr: s.eh_frame_hdr.map(|(_, b)| b),
        debug_frame: s.debug_frame,
        ..ExplicitModuleSectionInfo::default()
    };
    Module::new(String::new(), base..base + SLOT, base, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_tables() -> Arc<ModuleFile> {
        let exe = std::fs::read_link("/proc/self/exe").expect("own executable");
        let file = ModuleFile::load(exe.to_str().expect("utf-8 path"))
            .expect("readable")
            .expect("an ELF file");
        Arc::new(file)
    }

    #[test]
    fn a_binary_is_placed_once_and_leaves_when_nothing_holds_it() {
        let mut modules = SharedModules::default();
        let first = own_tables();
        let base = modules.base_of(&first).expect("tables");
        assert_eq!(modules.base_of(&Arc::clone(&first)), Some(base));
        // The same binary read again (after the table cache let it go) is placed apart.
        let again = own_tables();
        let other = modules.base_of(&again).expect("tables");
        assert!(other >= base + SLOT || other + SLOT <= base);
        assert_eq!(modules.len(), 2);

        drop(first);
        modules.swept_at = Instant::now() - SWEEP_INTERVAL;
        modules.sweep();
        assert_eq!(modules.len(), 1, "the dropped copy leaves");
        // Its place goes to the next binary.
        let third = own_tables();
        assert_eq!(modules.base_of(&third), Some(base));
    }
}
