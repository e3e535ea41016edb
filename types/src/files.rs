//! File-cache attribution as served: which files' page cache a cgroup holds (`/v1/cache`).

use serde::{Deserialize, Serialize};

use crate::{pod::PodMeta, selector::CgroupSelector, units::MemcgId};

/// A file, as the kernel names it: its device and inode.
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

/// Query of `GET /v1/cache`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheQuery {
    /// A memory cgroup (files of its descendants included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
    /// A pod, by UID (or its beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Files per cgroup (default 10, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

/// `GET /v1/cache`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheResponse {
    pub taken_at_unix_ms: u64,
    /// (cgroup, file) pairs the kernel counts.
    pub tracked_pairs: usize,
    /// Pairs below zero: page cache older than the agent, evicted since.
    pub pairs_below_zero: usize,
    pub cgroups: Vec<CacheCgroup>,
}

/// One cgroup's working set explained, with its top files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheCgroup {
    pub id: MemcgId,
    pub path: String,
    pub name: String,
    /// Kubernetes names of its pod and container, when the agent knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMeta>,
    /// One sentence: what the working set is made of, and the biggest file.
    pub diagnosis: String,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub kernel_bytes: u64,
    pub file_dirty_bytes: u64,
    pub file_writeback_bytes: u64,
    pub shmem_bytes: u64,
    pub slab_reclaimable_bytes: Option<u64>,
    pub slab_unreclaimable_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Page cache the probes attributed to files, and its share of `file_bytes`.
    pub attributed_bytes: u64,
    pub attributed_share: f64,
    /// Distinct files with cache here.
    pub cached_files: usize,
    pub files: Vec<CachedFileShare>,
}

/// A file's page cache and its share of the cgroup's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedFileShare {
    #[serde(flatten)]
    pub file: CachedFile,
    pub share_of_file_cache: f64,
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
