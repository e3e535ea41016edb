//! The unwind tables of binaries (`.eh_frame` and its index, else `.debug_frame`; Go's
//! `.gopclntab`), read once per file ([`FileKey`]) and shared: by the unwinder, which unwinds stack
//! copies with them, and by the leaf resolver, which finds a frameless leaf's return address.
//! A library mapped by a thousand processes is read once, and only these sections are read,
//! not the code nor the (often large) rest of the file.

use std::{
    num::NonZeroUsize,
    ops::Range,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use memlens_procfs::{FileKey, Mapping};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::gopclntab::GoPcln;

/// Section bytes shared between the processes that map a binary.
pub type Bytes = Arc<[u8]>;

/// What unwinding needs of one binary file.
pub struct ModuleFile {
    /// Whether the file has unwind tables; a Go binary has none used here (its frames keep frame
    /// pointers, and `.gopclntab` serves its frameless leaves).
    pub unwind_tables: bool,
    /// A Go binary's frame-size table.
    pub go: Option<GoPcln>,
    pub sections: Sections,
    /// `(file offset, file size, virtual address)` of each executable loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// Bytes held, for the bound on the cache.
    pub bytes: usize,
}

/// The sections' addresses in the file and, for the tables, their bytes.
#[derive(Debug, Default, Clone)]
pub struct Sections {
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
    pub eh_frame: Option<(Range<u64>, Bytes)>,
    pub eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    pub debug_frame: Option<Bytes>,
}

impl ModuleFile {
    /// Reads the unwind sections of the ELF file at `path`: `Err` when the file cannot be
    /// opened (the process is gone, or changed its mappings: worth trying again through another
    /// process), `Ok(None)` when it is not an ELF file.
    pub fn load(path: &str) -> std::io::Result<Option<ModuleFile>> {
        // Only the headers and the unwind sections are read, not the whole (often large) file.
        let data = object::ReadCache::new(std::fs::File::open(path)?);
        Ok(Self::parse(&data))
    }

    fn parse(data: &object::ReadCache<std::fs::File>) -> Option<ModuleFile> {
        let file = object::File::parse(data).ok()?;
        let range = |s: &object::Section<'_, '_, &object::ReadCache<std::fs::File>>| {
            s.address()..s.address() + s.size()
        };
        let section = |name: &str| {
            let s = file.section_by_name(name)?;
            // `.debug_frame` may be compressed (SHF_COMPRESSED): read it uncompressed.
            let bytes: Bytes = s.uncompressed_data().ok()?.into_owned().into();
            Some((range(&s), bytes))
        };
        let sections = Sections {
            text: file.section_by_name(".text").map(|s| range(&s)),
            got: file.section_by_name(".got").map(|s| range(&s)),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, b)| b),
        };
        let text_addr = sections.text.as_ref().map_or(0, |t| t.start);
        let go = file
            .section_by_name(".gopclntab")
            .and_then(|s| GoPcln::parse(s.uncompressed_data().ok()?.into_owned(), text_addr));
        let unwind_tables =
            go.is_none() && (sections.eh_frame.is_some() || sections.debug_frame.is_some());
        let bytes = go.as_ref().map_or(0, GoPcln::len)
            + [&sections.eh_frame, &sections.eh_frame_hdr]
                .iter()
                .filter_map(|s| s.as_ref().map(|(_, b)| b.len()))
                .sum::<usize>()
            + sections.debug_frame.as_ref().map_or(0, |b| b.len());
        Some(ModuleFile {
            unwind_tables,
            go,
            sections,
            segments: file
                .segments()
                .filter(|s| {
                    matches!(s.flags(), object::SegmentFlags::Elf { p_flags }
                        if p_flags & object::elf::PF_X != 0)
                })
                .map(|s| {
                    let (off, size) = s.file_range();
                    (off, size, s.address())
                })
                .collect(),
            bytes,
        })
    }

    /// Where the loader put this file's addresses in `mapping` (an executable mapping of it):
    /// process address minus the file's virtual address.
    pub fn bias(&self, mapping: &Mapping) -> Option<u64> {
        // The mapping starts at the segment's offset rounded down to a page.
        let (seg_offset, _, seg_vaddr) = self
            .segments
            .iter()
            .find(|(off, size, _)| off & !0xfff <= mapping.offset && mapping.offset < off + size)?;
        mapping
            .start
            .checked_sub(mapping.offset)?
            .checked_add(*seg_offset)?
            .checked_sub(*seg_vaddr)
    }

    /// The file's virtual address of `offset` in the file, if an executable segment holds it.
    #[must_use]
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(off, size, _)| *off <= offset && offset < off + size)
            .map(|(off, _, vaddr)| offset - off + vaddr)
    }
}

/// Most binaries whose tables are kept.
const MAX_FILES: NonZeroUsize = NonZeroUsize::new(512).expect("non-zero");
/// Most bytes of tables kept; beyond it the least recently used binaries go (a large binary's
/// `.eh_frame` is tens of MiB). Processes the unwinder keeps hold their binaries' tables beyond.
const MAX_FILE_BYTES: usize = 64 << 20;

/// Binaries' unwind tables by [`FileKey`], least recently used dropped first.
pub struct ModuleFiles {
    files: LruCache<FileKey, Option<Arc<ModuleFile>>>,
    bytes: usize,
    max_bytes: usize,
    /// Binaries read so far, and dropped for the bound.
    pub loaded: u64,
    pub evicted: u64,
}

impl Default for ModuleFiles {
    fn default() -> ModuleFiles {
        ModuleFiles::with_budget(MAX_FILE_BYTES)
    }
}

impl ModuleFiles {
    /// A cache that keeps at most `max_bytes` of tables (and always the last binary read).
    #[must_use]
    pub fn with_budget(max_bytes: usize) -> ModuleFiles {
        ModuleFiles {
            files: LruCache::new(MAX_FILES),
            bytes: 0,
            max_bytes,
            loaded: 0,
            evicted: 0,
        }
    }

    /// The tables of the file `mapping` maps in process `pid` (read through `map_files`, which
    /// works across mount namespaces and for deleted files).
    pub fn get(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<ModuleFile>> {
        let key = mapping.file_key(pid).ok()?;
        if let Some(file) = self.files.get(&key) {
            return file.clone();
        }
        // A file that cannot be opened is not remembered: the next process mapping it may do.
        let file = ModuleFile::load(&mapping.map_file(pid)).ok()?.map(Arc::new);
        self.loaded += 1;
        self.bytes += file.as_ref().map_or(0, |f| f.bytes);
        if let Some((_, Some(old))) = self.files.push(key, file.clone()) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
            self.evicted += 1;
        }
        while self.bytes > self.max_bytes && self.files.len() > 1 {
            match self.files.pop_lru() {
                Some((_, old)) => {
                    self.bytes = self.bytes.saturating_sub(old.map_or(0, |f| f.bytes));
                    self.evicted += 1;
                }
                None => break,
            }
        }
        file
    }

    /// Bytes of tables held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The cache both the unwinder thread and the refresh thread (leaf rules) read.
pub type SharedModuleFiles = Arc<Mutex<ModuleFiles>>;

#[cfg(test)]
mod tests {
    use memlens_procfs::maps;

    use super::*;

    /// Only the unwind sections are kept, and no more binaries than the byte budget allows.
    #[test]
    fn tables_kept_are_the_unwind_sections_within_the_budget() {
        let pid = std::process::id();
        let maps = maps::read_maps(pid).expect("own maps");
        let own = tables_kept_are_the_unwind_sections_within_the_budget as *const () as u64;
        let memset = libc::memset as *const () as u64;
        let (Some(own_map), Some(libc_map)) = (maps::find(&maps, own), maps::find(&maps, memset))
        else {
            panic!("own code or memset not mapped");
        };
        let mut files = ModuleFiles::with_budget(1);
        let own_file = files.get(pid, own_map).expect("own tables");
        let file_bytes = std::fs::metadata(&own_map.path).expect("own binary").len();
        assert!(
            own_file.unwind_tables && own_file.bytes > 0,
            "no tables read"
        );
        assert!(
            (own_file.bytes as u64) * 4 < file_bytes,
            "{} bytes kept of a {file_bytes}-byte binary",
            own_file.bytes
        );
        let bias = own_file.bias(own_map).expect("bias");
        assert_eq!(
            own_file.vaddr_of(own_map.file_offset(own)),
            Some(own - bias),
            "the file's address of our own code"
        );
        let libc_file = files.get(pid, libc_map).expect("libc tables");
        assert_eq!(files.bytes(), libc_file.bytes, "over the budget");
        assert_eq!((files.loaded, files.evicted), (2, 1));
    }
}
