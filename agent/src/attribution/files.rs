//! File-cache attribution: which files' page cache each memory cgroup is charged for,
//! including its descendants' (like the kernel's own counters).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup::Discovery,
    collectors::{
        filecache::{FileCache, FileId},
        files::FileResolver,
    },
    units::{Bytes, MemcgId, PageSize, Pages},
};

/// One file's page cache in one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    /// Path as the process that had it open saw it; None when no process has it open or mapped.
    pub path: Option<String>,
    /// Unlinked while still cached.
    pub deleted: bool,
    /// `major:minor` of the file's device.
    pub dev: String,
    pub ino: u64,
    /// Mount point of the device, when known.
    pub mount: Option<String>,
    pub bytes: u64,
}

impl CachedFile {
    /// `/var/log/app.log`, `/var/log/app.log (deleted)`, or `dev 254:0 inode 1234 (on /data)`.
    #[must_use]
    pub fn display(&self) -> String {
        match (&self.path, self.deleted) {
            (Some(p), false) => p.clone(),
            (Some(p), true) => format!("{p} (deleted)"),
            (None, _) => {
                let mount = self
                    .mount
                    .as_deref()
                    .map(|m| format!(" (on {m})"))
                    .unwrap_or_default();
                format!(
                    "dev {} inode {}{mount}{}",
                    self.dev,
                    self.ino,
                    if self.deleted { " (deleted)" } else { "" }
                )
            }
        }
    }
}

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
    cache: &FileCache,
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
    let names = resolver.names(&wanted);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_hide_what_is_unknown() {
        let mut file = CachedFile {
            path: Some("/var/log/app.log".into()),
            deleted: false,
            dev: "254:0".into(),
            ino: 7,
            mount: Some("/".into()),
            bytes: 1,
        };
        assert_eq!(file.display(), "/var/log/app.log");
        file.deleted = true;
        assert_eq!(file.display(), "/var/log/app.log (deleted)");
        file.path = None;
        file.deleted = false;
        assert_eq!(file.display(), "dev 254:0 inode 7 (on /)");
    }
}
