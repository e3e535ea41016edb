//! Page cache per (memory cgroup, file), read from the kernel programs' counts (see
//! [`memlens_model::page_cache`] for what the counts mean).

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};
use memlens_common::filemap::FileKey;

use memlens_model::page_cache::PageCacheCounts;
use memlens_types::{files::FileId, MemcgId, Pages};

/// Reads and prunes the kernel's page-cache map.
#[derive(Default)]
pub struct PageCacheCollector {
    /// Pairs at zero or below, with their value, in the previous read.
    empty_last_time: HashMap<FileKey, i64>,
    /// Pairs deleted from the kernel map so far.
    pub pruned: u64,
}

impl PageCacheCollector {
    /// Reads every pair; deletes those that stayed at zero (or below) and unchanged over two
    /// reads, so the bounded map keeps room for files that have cache.
    pub fn collect(&mut self, map: &mut BpfHashMap<MapData, FileKey, i64>) -> PageCacheCounts {
        let mut cache = PageCacheCounts::default();
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
