//! Names of files: (device, inode) to a path, found among the files processes have open or
//! mapped, and remembered. Files no process has open show as `dev major:minor inode N` with the
//! mount their device belongs to.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use memlens_procfs::{
    open_files::{self, OpenFile},
    system,
};
use memlens_types::files::FileId;

/// How a file is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    /// Path as the process that had it open sees it (inside its container, if any).
    pub path: Option<String>,
    /// Unlinked while still cached.
    pub deleted: bool,
    /// Mount point of the file's device, when known.
    pub mount: Option<String>,
}

/// Scans only when some file is still unnamed, at most once a second, and never spending more
/// than a tenth of the time scanning (a scan of every process' descriptors can take a while on a
/// busy node).
const MIN_RESCAN: Duration = Duration::from_secs(1);
const MAX_SCAN_SHARE: u32 = 10;
/// Most files remembered (the least recently used go first).
const MAX_KNOWN: NonZeroUsize = NonZeroUsize::new(200_000).expect("non-zero");

pub struct FileResolver {
    known: LruCache<FileId, OpenFile>,
    /// When the next scan may start.
    next_scan: Option<Instant>,
    mounts: HashMap<(u32, u32), String>,
    /// Scans of /proc so far.
    pub scans: u64,
}

impl Default for FileResolver {
    fn default() -> FileResolver {
        FileResolver {
            known: LruCache::new(MAX_KNOWN),
            next_scan: None,
            mounts: HashMap::new(),
            scans: 0,
        }
    }
}

impl FileResolver {
    /// Names for `wanted`, scanning `/proc` first if some are unknown (and the last scan is old).
    pub fn names(&mut self, wanted: &HashSet<FileId>) -> HashMap<FileId, FileName> {
        let unknown = wanted.iter().any(|id| !self.known.contains(id));
        if unknown && self.next_scan.is_none_or(|t| Instant::now() >= t) {
            let started = Instant::now();
            self.scans += 1;
            self.mounts = system::mounts_by_device();
            for (id, file) in open_files::scan(wanted) {
                self.known.put(id, file);
            }
            let took = started.elapsed();
            self.next_scan = Some(Instant::now() + MIN_RESCAN.max(took * MAX_SCAN_SHARE));
        }
        wanted
            .iter()
            .map(|id| {
                let mount = self.mounts.get(&(id.major(), id.minor())).cloned();
                let name = match self.known.get(id) {
                    Some(file) => FileName {
                        path: Some(file.path.clone()),
                        deleted: file.deleted || !open_files::still_there(&file.path, *id),
                        mount,
                    },
                    None => FileName {
                        path: None,
                        deleted: false,
                        mount,
                    },
                };
                (*id, name)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::MetadataExt as _};

    use super::*;

    #[test]
    fn an_open_file_is_named_and_its_deletion_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("named.log");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"x").expect("write");
        let meta = file.metadata().expect("meta");
        let id = FileId {
            dev: open_files::kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        let wanted = HashSet::from([id]);
        let mut resolver = FileResolver::default();
        let names = resolver.names(&wanted);
        assert_eq!(names[&id].path.as_deref(), path.to_str());
        assert!(!names[&id].deleted);
        assert!(names[&id].mount.is_some());
        std::fs::remove_file(&path).expect("unlink");
        assert!(
            resolver.names(&wanted)[&id].deleted,
            "an unlinked file shows as deleted"
        );
    }
}
