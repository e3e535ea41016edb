//! Names of files: (device, inode) to a path, found among the files processes have open or
//! mapped, and remembered. Files no process has open show as `dev major:minor inode N` with the
//! mount their device belongs to.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use hashlink::LruCache;
use memlens_procfs::{
    open_files::{self, OpenFile},
    process, system,
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

/// A file nobody has named yet is first looked for among the processes of the cgroups charged
/// for its page cache (the process that reads or writes a file is, nearly always, the one its
/// cache is charged to). Such scans run at most once a second and never spend more than a
/// hundredth of the time.
const MIN_RESCAN: Duration = Duration::from_secs(1);
const MAX_SCAN_SHARE: u32 = 100;
/// Files those scans did not find (written and closed: most cached files; or open in another
/// cgroup) are looked for among all processes, at most this often: a scan of every process's
/// descriptors and mappings takes a while on a busy node (2,000 processes, about 0.5 s here),
/// and, run whenever new files appeared, it was a fifth of the agent's CPU on such a node.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(300);
/// Whether a named file still exists under its name is checked at most this often (a stat per
/// named file per refresh was a tenth of the agent's time on a node of 10,000 cached files).
const RECHECK: Duration = Duration::from_secs(5);
/// Most files remembered (the least recently used go first).
const MAX_KNOWN: usize = 200_000;

pub struct FileResolver {
    known: LruCache<FileId, OpenFile>,
    /// Files the scans did not find, and when a scan of all processes last missed them (None:
    /// only their cgroups' processes were looked at).
    unfound: LruCache<FileId, Option<Instant>>,
    /// Whether a named file was still there, and when that was checked.
    still_there: LruCache<FileId, (Instant, bool)>,
    /// When the next scan of either kind may start.
    next_scan: Option<Instant>,
    /// When the next scan of all processes may start.
    next_full_scan: Option<Instant>,
    mounts: HashMap<(u32, u32), String>,
    /// Scans of the processes of charged cgroups so far.
    pub charged_scans: u64,
    /// Scans of all processes so far.
    pub full_scans: u64,
}

impl Default for FileResolver {
    fn default() -> FileResolver {
        FileResolver {
            known: LruCache::new(MAX_KNOWN),
            unfound: LruCache::new(MAX_KNOWN),
            still_there: LruCache::new(MAX_KNOWN),
            next_scan: None,
            next_full_scan: None,
            mounts: HashMap::new(),
            charged_scans: 0,
            full_scans: 0,
        }
    }
}

impl FileResolver {
    /// Names for `wanted`, scanning processes first if some are unknown (and the last scan is
    /// old). `charged` gives the directories of the cgroups charged for the page cache of the
    /// files it is given: their processes are looked at first.
    pub fn names(
        &mut self,
        wanted: &HashSet<FileId>,
        charged: impl FnOnce(&HashSet<FileId>) -> Vec<PathBuf>,
    ) -> HashMap<FileId, FileName> {
        let now = Instant::now();
        let may_scan = self.next_scan.is_none_or(|t| now >= t);
        let new: HashSet<FileId> = wanted
            .iter()
            .filter(|id| !self.known.contains_key(id) && !self.unfound.contains_key(id))
            .copied()
            .collect();
        if may_scan && !new.is_empty() {
            self.charged_scans += 1;
            let mut pids: Vec<u32> = charged(&new)
                .iter()
                .flat_map(|dir| process::pids_directly_in(dir))
                .collect();
            pids.sort_unstable();
            pids.dedup();
            let found = open_files::scan_pids(&new, pids);
            self.learn(&new, found, None);
            self.next_scan = Some(Instant::now() + MIN_RESCAN.max(now.elapsed() * MAX_SCAN_SHARE));
        } else if may_scan && self.next_full_scan.is_none_or(|t| now >= t) {
            let missed: HashSet<FileId> = wanted
                .iter()
                .filter(|id| {
                    self.unfound.peek(id).is_some_and(|full| {
                        full.is_none_or(|t| now.duration_since(t) >= FULL_SCAN_EVERY)
                    })
                })
                .copied()
                .collect();
            if !missed.is_empty() {
                self.full_scans += 1;
                let found = open_files::scan(&missed);
                self.learn(&missed, found, Some(now));
                let took = now.elapsed();
                self.next_scan = Some(Instant::now() + MIN_RESCAN.max(took * MAX_SCAN_SHARE));
                self.next_full_scan =
                    Some(Instant::now() + FULL_SCAN_EVERY.max(took * MAX_SCAN_SHARE));
            }
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

    /// Remembers what a scan for `looked_for` found; `full` is when it was a scan of all
    /// processes.
    fn learn(
        &mut self,
        looked_for: &HashSet<FileId>,
        mut found: HashMap<FileId, OpenFile>,
        full: Option<Instant>,
    ) {
        self.mounts = system::mounts_by_device();
        for id in looked_for {
            match found.remove(id) {
                Some(file) => {
                    self.unfound.remove(id);
                    self.still_there.remove(id);
                    self.known.insert(*id, file);
                }
                None => {
                    self.unfound.insert(*id, full);
                }
            }
        }
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

    use memlens_cgroup::CgroupLayout;

    use super::*;

    fn id_of(path: &std::path::Path) -> FileId {
        let meta = std::fs::metadata(path).expect("meta");
        FileId {
            dev: open_files::kernel_dev(meta.dev()),
            ino: meta.ino(),
        }
    }

    /// The directory of this process's memory cgroup, as the agent's discovery gives it.
    fn my_cgroup_dir() -> PathBuf {
        let layout = CgroupLayout::detect().expect("cgroup layout");
        let path = layout.memory_cgroup_of("self").expect("my memory cgroup");
        let inside = path
            .strip_prefix(layout.mount_root.as_str())
            .unwrap_or(&path);
        layout.memory_root.join(inside.trim_start_matches('/'))
    }

    #[test]
    fn a_file_no_process_has_open_is_not_looked_for_at_every_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("closed.log");
        std::fs::write(&path, b"x").expect("write");
        let id = id_of(&path);
        let wanted = HashSet::from([id]);
        let mut resolver = FileResolver::default();
        // (charged scans, full scans) after each refresh that may scan.
        let expected = [
            ((1, 0), "first looked for among its cgroup's processes"),
            ((1, 1), "not in its cgroup: then among all processes"),
            ((1, 1), "not found a moment ago: no new scan"),
        ];
        for (scans, why) in expected {
            resolver.next_scan = None;
            let names = resolver.names(&wanted, |_| vec![my_cgroup_dir()]);
            assert_eq!(names[&id].path, None);
            assert_eq!(
                (resolver.charged_scans, resolver.full_scans),
                scans,
                "{why}"
            );
        }
    }

    #[test]
    fn an_open_file_is_named_from_its_cgroups_processes_and_its_deletion_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("named.log");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"x").expect("write");
        let id = id_of(&path);
        let wanted = HashSet::from([id]);
        let mut resolver = FileResolver::default();
        let names = resolver.names(&wanted, |files| {
            assert_eq!(files, &wanted, "asked where the unnamed files are charged");
            vec![my_cgroup_dir()]
        });
        assert_eq!(names[&id].path.as_deref(), path.to_str());
        assert!(!names[&id].deleted);
        assert!(names[&id].mount.is_some());
        assert_eq!((resolver.charged_scans, resolver.full_scans), (1, 0));
        std::fs::remove_file(&path).expect("unlink");
        resolver.still_there.clear();
        assert!(
            resolver.names(&wanted, |_| Vec::new())[&id].deleted,
            "an unlinked file shows as deleted (once checked again)"
        );
    }

    #[test]
    fn an_open_file_charged_elsewhere_is_named_by_the_scan_of_all_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("elsewhere.log");
        let _file = std::fs::File::create(&path).expect("create");
        let id = id_of(&path);
        let wanted = HashSet::from([id]);
        let mut resolver = FileResolver::default();
        // A cgroup directory without this process (gone: no processes at all).
        let gone = dir.path().join("no-such-cgroup");
        assert_eq!(
            resolver.names(&wanted, |_| vec![gone.clone()])[&id].path,
            None
        );
        resolver.next_scan = None;
        let names = resolver.names(&wanted, |_| vec![gone.clone()]);
        assert_eq!(names[&id].path.as_deref(), path.to_str());
        assert_eq!((resolver.charged_scans, resolver.full_scans), (1, 1));
    }
}
