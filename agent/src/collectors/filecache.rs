//! Page cache per (memory cgroup, file), read from the kernel programs' counts.
//!
//! The programs count pages added minus pages deleted since they were attached. Page cache that
//! was there before the agent started is not in these counts (its later eviction can even take a
//! pair below zero: shown as zero, and the cgroup's unattributed share says how much is missing).

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};
use memlens_common::filemap::FileKey;

use crate::units::{MemcgId, Pages};

/// A file, as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// The kernel's `dev_t`: `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    #[must_use]
    pub fn major(self) -> u32 {
        self.dev >> 20
    }

    #[must_use]
    pub fn minor(self) -> u32 {
        self.dev & 0xf_ffff
    }
}

/// One read of the counts.
#[derive(Clone, Debug, Default)]
pub struct FileCache {
    /// Pages per file, per memory cgroup (only positive counts).
    pub by_memcg: HashMap<MemcgId, Vec<(FileId, Pages)>>,
    /// (cgroup, file) pairs in the kernel map.
    pub entries: usize,
    /// Pairs below zero: cached before the agent started, evicted since.
    pub below_zero: usize,
}

/// Reads and prunes the kernel's page-cache map.
#[derive(Default)]
pub struct FileCacheCollector {
    /// Pairs at zero or below, with their value, in the previous read.
    empty_last_time: HashMap<FileKey, i64>,
    /// Pairs deleted from the kernel map so far.
    pub pruned: u64,
}

impl FileCacheCollector {
    /// Reads every pair; deletes those that stayed at zero (or below) and unchanged over two
    /// reads, so the bounded map keeps room for files that have cache.
    pub fn collect(&mut self, map: &mut BpfHashMap<MapData, FileKey, i64>) -> FileCache {
        let mut cache = FileCache::default();
        let mut empty = HashMap::new();
        for (key, pages) in map.iter().filter_map(Result::ok) {
            cache.entries += 1;
            if pages <= 0 {
                if pages < 0 {
                    cache.below_zero += 1;
                }
                empty.insert(key, pages);
                continue;
            }
            cache.by_memcg.entry(MemcgId(key.memcg)).or_default().push((
                FileId {
                    dev: key.dev,
                    ino: key.ino,
                },
                Pages(pages.unsigned_abs()),
            ));
        }
        let stale: HashSet<FileKey> = empty
            .iter()
            .filter(|(k, v)| self.empty_last_time.get(k) == Some(v))
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            // The programs may add to it between this read and the delete: a narrow window,
            // and only for a file that had no cache for two reads.
            if map.remove(key).is_ok() {
                self.pruned += 1;
                empty.remove(key);
            }
        }
        self.empty_last_time = empty;
        for files in cache.by_memcg.values_mut() {
            files.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_the_kernel() {
        let id = FileId {
            dev: (254 << 20) | 3,
            ino: 1,
        };
        assert_eq!((id.major(), id.minor()), (254, 3));
    }
}
