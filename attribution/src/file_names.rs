//! Names of files: (device, inode) to a path, found among the files processes have open or
//! mapped, and remembered. Files no process has open show as `dev major:minor inode N` with the
//! mount their device belongs to.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use hashlink::LruCache;
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
/// than a hundredth of the time scanning (a scan of every process' descriptors and mappings
/// takes a while on a busy node: 2,000 processes, about 0.5 s here).
const MIN_RESCAN: Duration = Duration::from_secs(1);
const MAX_SCAN_SHARE: u32 = 100;
/// A file a scan did not find (written and closed: most cached files) is looked for again only
/// this much later: without it, every refresh of a node with such files would scan.
const UNFOUND_RETRY: Duration = Duration::from_secs(300);
/// Whether a named file still exists under its name is checked at most this often (a stat per
/// named file per refresh was a tenth of the agent's time on a node of 10,000 cached files).
const RECHECK: Duration = Duration::from_secs(5);
/// Most files remembered (the least recently used go first).
const MAX_KNOWN: usize = 200_000;

pub struct FileResolver {
    known: LruCache<FileId, OpenFile>,
    /// Files the last scans did not find, and when.
    unfound: LruCache<FileId, Instant>,
    /// Whether a named file was still there, and when that was checked.
    still_there: LruCache<FileId, (Instant, bool)>,
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
            unfound: LruCache::new(MAX_KNOWN),
            still_there: LruCache::new(MAX_KNOWN),
            next_scan: None,
            mounts: HashMap::new(),
            scans: 0,
        }
    }
}

impl FileResolver {
    /// Names for `wanted`, scanning `/proc` first if some are unknown (and the last scan is old).
    pub fn names(&mut self, wanted: &HashSet<FileId>) -> HashMap<FileId, FileName> {
        let now = Instant::now();
        let unknown = wanted.iter().any(|id| {
            !self.known.contains_key(id)
                && self
                    .unfound
                    .peek(id)
                    .is_none_or(|t| now.duration_since(*t) >= UNFOUND_RETRY)
        });
        if unknown && self.next_scan.is_none_or(|t| now >= t) {
            self.scans += 1;
            self.mounts = system::mounts_by_device();
            let found = open_files::scan(wanted);
            for id in wanted.iter().filter(|id| !found.contains_key(id)) {
                if !self.known.contains_key(id) {
                    self.unfound.insert(*id, now);
                }
            }
            for (id, file) in found {
                self.unfound.remove(&id);
                self.still_there.remove(&id);
                self.known.insert(id, file);
            }
            let took = now.elapsed();
            self.next_scan = Some(Instant::now() + MIN_RESCAN.max(took * MAX_SCAN_SHARE));
        }
        wanted
            .iter()
            .map(|id| {
                let mount = self.mounts.get(&(id.major(), id.minor())).cloned();
                let name = match self.known.get(id).cloned() {
                    Some(file) => FileName {
                        deleted: file.deleted || !self.still_there(&file.path, *id, now),
                        path: Some(file.path),
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

    /// Whether `path` is still the file `id`, checked at most every `RECHECK`.
    fn still_there(&mut self, path: &str, id: FileId, now: Instant) -> bool {
        if let Some((at, there)) = self.still_there.get(&id) {
            if now.duration_since(*at) < RECHECK {
                return *there;
            }
        }
        let there = open_files::still_there(path, id);
        self.still_there.insert(id, (now, there));
        there
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::MetadataExt as _};

    use super::*;

    #[test]
    fn a_file_no_process_has_open_is_not_looked_for_at_every_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("closed.log");
        std::fs::write(&path, b"x").expect("write");
        let meta = std::fs::metadata(&path).expect("meta");
        let id = FileId {
            dev: open_files::kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        let wanted = HashSet::from([id]);
        let mut resolver = FileResolver::default();
        assert_eq!(resolver.names(&wanted)[&id].path, None);
        assert_eq!(resolver.scans, 1);
        resolver.next_scan = None;
        assert_eq!(resolver.names(&wanted)[&id].path, None);
        assert_eq!(resolver.scans, 1, "not found a moment ago: no new scan");
    }

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
        resolver.still_there.clear();
        assert!(
            resolver.names(&wanted)[&id].deleted,
            "an unlinked file shows as deleted (once checked again)"
        );
    }
}
