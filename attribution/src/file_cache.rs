//! File-cache attribution: which files' page cache each memory cgroup is charged for,
//! including its descendants' (like the kernel's own counters).

use std::collections::{HashMap, HashSet};

use memlens_cgroup::Discovery;
use memlens_model::page_cache::PageCacheCounts;
use memlens_types::{
    cgroups::CgroupRow,
    files::{CachedFile, FileId},
    Bytes, MemcgId, PageSize, Pages,
};

use crate::file_names::FileResolver;

/// Files per cgroup, largest first (at most `top` each), and totals.
#[derive(Clone, Debug, Default)]
pub struct FileView {
    pub by_memcg: HashMap<MemcgId, CgroupFiles>,
    /// (cgroup, file) pairs counted in the kernel.
    pub entries: usize,
    /// Pairs below zero (cache older than the agent, evicted since).
    pub below_zero: usize,
}

#[derive(Clone, Debug, Default)]
pub struct CgroupFiles {
    /// Page cache attributed to files, all files counted.
    pub attributed: Bytes,
    /// Distinct files with cache.
    pub files: usize,
    pub top: Vec<CachedFile>,
}

/// The largest files of a cgroup, with their pages.
type TopFiles = Vec<(FileId, u64)>;

/// Builds the view: hierarchical sums over `discovery`, names for the top files.
pub fn build(
    cache: &PageCacheCounts,
    discovery: &Discovery,
    resolver: &mut FileResolver,
    page_size: PageSize,
    top: usize,
) -> FileView {
    let mut sums: Vec<HashMap<FileId, u64>> = discovery
        .cgroups
        .iter()
        .map(|c| {
            cache
                .by_memcg
                .get(&c.id)
                .map(|files| files.iter().map(|(f, p)| (*f, p.0)).collect())
                .unwrap_or_default()
        })
        .collect();
    let parents = discovery.parents();
    for i in (0..discovery.cgroups.len()).rev() {
        if let Some(p) = parents[i] {
            let child = std::mem::take(&mut sums[i]);
            for (file, pages) in &child {
                *sums[p].entry(*file).or_default() += pages;
            }
            sums[i] = child;
        }
    }
    // (cgroup, pages attributed, distinct files, top files with their pages)
    let mut tops: Vec<(MemcgId, u64, usize, TopFiles)> = Vec::new();
    let mut wanted = HashSet::new();
    for (cgroup, files) in discovery.cgroups.iter().zip(&sums) {
        if files.is_empty() {
            continue;
        }
        let total: u64 = files.values().sum();
        let mut sorted: Vec<(FileId, u64)> = files.iter().map(|(f, p)| (*f, *p)).collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sorted.truncate(top);
        wanted.extend(sorted.iter().map(|(f, _)| *f));
        tops.push((cgroup.id, total, files.len(), sorted));
    }
    let names = resolver.names(&wanted, |unnamed| {
        discovery
            .cgroups
            .iter()
            .filter(|c| {
                cache
                    .by_memcg
                    .get(&c.id)
                    .is_some_and(|files| files.iter().any(|(f, _)| unnamed.contains(f)))
            })
            .map(|c| c.dir.clone())
            .collect()
    });
    let by_memcg = tops
        .into_iter()
        .map(|(id, total, count, files)| {
            let top = files
                .into_iter()
                .map(|(file, pages)| {
                    let name = names.get(&file);
                    CachedFile {
                        path: name.and_then(|n| n.path.clone()),
                        deleted: name.is_some_and(|n| n.deleted),
                        dev: format!("{}:{}", file.major(), file.minor()),
                        ino: file.ino,
                        mount: name.and_then(|n| n.mount.clone()),
                        bytes: Pages(pages).bytes(page_size).0,
                    }
                })
                .collect();
            (
                id,
                CgroupFiles {
                    attributed: Pages(total).bytes(page_size),
                    files: count,
                    top,
                },
            )
        })
        .collect();
    FileView {
        by_memcg,
        entries: cache.entries,
        below_zero: cache.below_zero,
    }
}

/// Puts each cgroup's attributed page cache and its top file on its row.
pub fn annotate(rows: &mut [CgroupRow], files: &FileView) {
    for row in rows {
        let cgroup = files.by_memcg.get(&row.id);
        row.file_attributed_bytes = Some(cgroup.map_or(0, |c| c.attributed.0));
        row.top_file = cgroup.and_then(|c| c.top.first().cloned());
    }
}
