//! The unwind tables of the binaries a process maps, as framehop modules.
//!
//! A binary's tables are read once per (device, inode) and shared by every process that maps it
//! (a library mapped by a thousand processes is read once). Only the sections unwinding reads are
//! kept: `.eh_frame` and its index `.eh_frame_hdr`, else `.debug_frame`; not the code.

use std::{num::NonZeroUsize, ops::Range, sync::Arc};

use framehop::{ExplicitModuleSectionInfo, Module};
use lru::LruCache;
use memlens_procfs::Mapping;
use memlens_symbolize::gopclntab::GoPcln;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// Section bytes shared between the processes that map a binary.
pub type Bytes = Arc<[u8]>;

/// What unwinding needs of one binary file.
pub struct ModuleFile {
    /// Whether the file has unwind tables; a Go binary has none used here (its frames keep frame
    /// pointers, and `.gopclntab` serves its frameless leaves).
    pub unwind_tables: bool,
    /// A Go binary's frame-size table.
    pub go: Option<GoPcln>,
    sections: Sections,
    /// `(file offset, file size, virtual address)` of each executable loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// Bytes held, for the bound on the cache.
    pub bytes: usize,
}

#[derive(Debug, Default, Clone)]
struct Sections {
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Bytes)>,
    eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    debug_frame: Option<Bytes>,
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

    /// The framehop module for `mapping`, whose addresses are the file's moved by `bias`.
    pub fn module(&self, mapping: &Mapping, bias: u64) -> Module<Bytes> {
        let s = self.sections.clone();
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
        Module::new(mapping.path.clone(), mapping.start..mapping.end, bias, info)
    }
}

/// Most binaries whose tables are kept.
const MAX_FILES: NonZeroUsize = NonZeroUsize::new(512).expect("non-zero");
/// Most bytes of tables kept; beyond it the least recently used binaries go.
const MAX_FILE_BYTES: usize = 256 << 20;

/// Binaries' unwind tables by (device, inode), least recently used dropped first.
pub struct ModuleFiles {
    files: LruCache<(String, u64), Option<Arc<ModuleFile>>>,
    bytes: usize,
    /// Binaries read so far, and dropped for the bound.
    pub loaded: u64,
    pub evicted: u64,
}

impl Default for ModuleFiles {
    fn default() -> ModuleFiles {
        ModuleFiles {
            files: LruCache::new(MAX_FILES),
            bytes: 0,
            loaded: 0,
            evicted: 0,
        }
    }
}

impl ModuleFiles {
    /// The tables of the file `mapping` maps in process `pid` (read through `map_files`, which
    /// works across mount namespaces and for deleted files).
    pub fn get(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<ModuleFile>> {
        let key = (mapping.dev.clone(), mapping.inode);
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
        while self.bytes > MAX_FILE_BYTES {
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
