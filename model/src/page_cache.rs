//! Page cache per (memory cgroup, file), as the kernel programs counted it.
//!
//! The programs count pages added minus pages deleted since they were attached. Page cache that
//! was there before the agent started is not in these counts (its later eviction can even take a
//! pair below zero: shown as zero, and the cgroup's unattributed share says how much is missing).

use std::collections::HashMap;

use memlens_types::{files::FileId, MemcgId, Pages};

/// One read of the counts.
#[derive(Clone, Debug, Default)]
pub struct PageCacheCounts {
    /// Pages per file, per memory cgroup (only positive counts), largest first.
    pub by_memcg: HashMap<MemcgId, Vec<(FileId, Pages)>>,
    /// (cgroup, file) pairs in the kernel map.
    pub entries: usize,
    /// Pairs below zero: cached before the agent started, evicted since.
    pub below_zero: usize,
}
