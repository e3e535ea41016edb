//! Descriptors of the files traced processes map, held for the trace's length: a process that
//! exits mid-window is still named through them (its path may be gone, replaced, or, on overlay
//! file systems, not checkable against the device numbers its mappings show).

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _};

use memlens_procfs::Mapping;

/// Descriptors of the files traced processes map, by process and (device, inode).
#[derive(Default)]
pub(super) struct HeldFiles(HashMap<u32, HashMap<(String, u64), File>>);

/// Files held per process (a process mapping more is named through its paths after exit).
const MAX_HELD_FILES: usize = 512;

impl HeldFiles {
    /// Opens the files of `maps` not held yet, through the process's own `map_files` links.
    pub(super) fn hold(&mut self, pid: u32, maps: &[Mapping]) {
        let held = self.0.entry(pid).or_default();
        for m in maps
            .iter()
            .filter(|m| m.inode != 0 && m.path.starts_with('/'))
        {
            let key = (m.dev.clone(), m.inode);
            if held.len() >= MAX_HELD_FILES || held.contains_key(&key) {
                continue;
            }
            if let Ok(file) = File::open(m.map_file(pid)) {
                held.insert(key, file);
            }
        }
    }

    /// `maps` with each held file's descriptor as its `open_path`.
    pub(super) fn annotate(&self, pid: u32, maps: &[Mapping]) -> Vec<Mapping> {
        let held = self.0.get(&pid);
        maps.iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(file) = held.and_then(|h| h.get(&(m.dev.clone(), m.inode))) {
                    m.open_path = Some(format!("/proc/self/fd/{}", file.as_raw_fd()));
                }
                m
            })
            .collect()
    }
}
