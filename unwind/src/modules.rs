//! A binary's unwind tables (read and shared by `memlens_symbolize::tables`) as a framehop
//! module of one process.

use framehop::{ExplicitModuleSectionInfo, Module};
use memlens_procfs::Mapping;
use memlens_symbolize::tables::{Bytes, ModuleFile};

/// The framehop module for `mapping` of `file`, whose addresses are the file's moved by `bias`.
pub fn module(file: &ModuleFile, mapping: &Mapping, bias: u64) -> Module<Bytes> {
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
    Module::new(mapping.path.clone(), mapping.start..mapping.end, bias, info)
}
