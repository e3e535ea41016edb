//! What the kernel's cgroup files say: where the memory controller is mounted (v1, v2 or the
//! hybrid layout), which memory cgroups exist, and the kernel's own counters for each.
//! What a cgroup *is* (pod, container, unit) is read from its path by
//! [`memlens_types::Workload`].

pub mod layout;
pub mod stat;

use std::{
    fmt::Display,
    io,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

pub use layout::{CgroupLayout, CgroupVersion};
use memlens_types::MemcgId;
pub use stat::MemoryStats;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot parse {0}: {1}")]
    Parse(String, String),
    #[error("{0}")]
    NoMemoryController(String),
}

impl CgroupError {
    fn io(path: impl Display, source: io::Error) -> CgroupError {
        CgroupError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// The cgroup was removed while we read it (not a failure of ours).
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. }
            if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ENODEV))
    }
}

/// One memory cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    pub id: MemcgId,
    /// Path inside the hierarchy, as in `/proc/<pid>/cgroup` (`/` for the root).
    pub path: String,
    pub dir: PathBuf,
}

/// The memory cgroups found by one walk of the hierarchy.
#[derive(Debug, Default)]
pub struct Discovery {
    pub cgroups: Vec<CgroupDir>,
    /// Cgroups beyond the cap, not listed.
    pub skipped: usize,
}

impl Discovery {
    /// For each listed cgroup, the index of its parent in `cgroups` (None for the root, or when
    /// the parent is not listed). Parents come before their children, so folding children into
    /// parents from the end visits every child before its parent.
    #[must_use]
    pub fn parents(&self) -> Vec<Option<usize>> {
        let index: std::collections::HashMap<&str, usize> = self
            .cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| (c.path.as_str(), i))
            .collect();
        self.cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let parent = match c.path.rsplit_once('/') {
                    Some(("", _)) if c.path != "/" => "/",
                    Some((parent, _)) => parent,
                    None => return None,
                };
                index.get(parent).copied().filter(|&p| p != i)
            })
            .collect()
    }
}

/// Walks the memory hierarchy, parents before children, listing at most `max` cgroups.
/// Directories that vanish during the walk are skipped silently: cgroups come and go.
pub fn discover(layout: &CgroupLayout, max: usize) -> Result<Discovery, CgroupError> {
    let root = &layout.memory_root;
    let root_meta = std::fs::metadata(root).map_err(|e| CgroupError::io(root.display(), e))?;
    let root_path = if layout.mount_root.is_empty() {
        "/".to_string()
    } else {
        layout.mount_root.clone()
    };
    let mut found = Discovery::default();
    let mut stack = vec![CgroupDir {
        id: MemcgId(root_meta.ino()),
        path: root_path,
        dir: root.clone(),
    }];
    while let Some(cgroup) = stack.pop() {
        if found.cgroups.len() >= max {
            found.skipped += 1 + count_below(&cgroup.dir);
            continue;
        }
        let children = children_of(&cgroup);
        found.cgroups.push(cgroup);
        // Reverse so the walk visits children in directory order.
        stack.extend(children.into_iter().rev());
    }
    Ok(found)
}

fn children_of(parent: &CgroupDir) -> Vec<CgroupDir> {
    let Ok(entries) = std::fs::read_dir(&parent.dir) else {
        return Vec::new();
    };
    let mut children: Vec<CgroupDir> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            // The type and inode number from the directory listing itself: a stat of each of a
            // cgroup's few dozen files would cost a system call each, every refresh.
            if !entry.file_type().ok()?.is_dir() {
                return None;
            }
            let name = entry.file_name().into_string().ok()?;
            let path = if parent.path.ends_with('/') {
                format!("{}{name}", parent.path)
            } else {
                format!("{}/{name}", parent.path)
            };
            Some(CgroupDir {
                id: MemcgId(entry.ino()),
                path,
                dir: entry.path(),
            })
        })
        .collect();
    children.sort_by(|a, b| a.path.cmp(&b.path));
    children
}

fn count_below(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + count_below(&e.path()))
        .sum()
}

/// The memory controller's hierarchy id, as the kernel's cgroup tracepoints report it: its row of
/// `/proc/cgroups` on cgroup v1, 0 on cgroup v2.
#[must_use]
pub fn memory_hierarchy_id(version: CgroupVersion) -> i32 {
    if version == CgroupVersion::V2 {
        return 0;
    }
    std::fs::read_to_string("/proc/cgroups")
        .ok()
        .and_then(|text| memory_hierarchy_in(&text))
        .unwrap_or(0)
}

fn memory_hierarchy_in(proc_cgroups: &str) -> Option<i32> {
    proc_cgroups
        .lines()
        .find(|l| l.split_whitespace().next() == Some("memory"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_parents_first_and_respects_the_cap() {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["a/x", "a/y", "b"] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        std::fs::write(tmp.path().join("a/memory.stat"), "").unwrap();
        let layout = CgroupLayout {
            version: CgroupVersion::V2,
            memory_root: tmp.path().to_path_buf(),
            mount_root: "/".into(),
            hybrid: false,
        };
        let all = discover(&layout, 100).unwrap();
        let paths: Vec<&str> = all.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a/x", "/a/y", "/b"]);
        assert_eq!(all.skipped, 0);
        let ino = std::fs::metadata(tmp.path().join("a/x")).unwrap().ino();
        assert_eq!(
            all.cgroups[2].id,
            MemcgId(ino),
            "the id is the directory's inode"
        );

        let parents = all.parents();
        assert_eq!(parents, [None, Some(0), Some(1), Some(1), Some(0)]);

        let capped = discover(&layout, 2).unwrap();
        assert_eq!(capped.cgroups.len(), 2);
        assert_eq!(capped.skipped, 3);
    }

    #[test]
    fn the_memory_hierarchy_is_found_in_proc_cgroups() {
        let text =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t120\t1\n";
        assert_eq!(memory_hierarchy_in(text), Some(4));
        assert_eq!(memory_hierarchy_in("#subsys_name\n"), None);
    }
}
