//! Names of files: (device, inode) to a path, found among the files processes have open or
//! mapped (`/proc/<pid>/fd`, `/proc/<pid>/maps`), and remembered. Files no process has open show
//! as `dev major:minor inode N` with the mount their device belongs to.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use super::filecache::FileId;

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
/// Most files remembered; past it the cache starts over.
const MAX_KNOWN: usize = 200_000;

#[derive(Default)]
pub struct FileResolver {
    known: HashMap<FileId, (String, bool)>,
    /// When the next scan may start.
    next_scan: Option<Instant>,
    mounts: HashMap<(u32, u32), String>,
    /// Scans of /proc so far.
    pub scans: u64,
}

impl FileResolver {
    /// Names for `wanted`, scanning `/proc` first if some are unknown (and the last scan is old).
    pub fn names(&mut self, wanted: &HashSet<FileId>) -> HashMap<FileId, FileName> {
        let unknown = wanted.iter().any(|id| !self.known.contains_key(id));
        if unknown && self.next_scan.is_none_or(|t| Instant::now() >= t) {
            let started = Instant::now();
            self.scan(wanted);
            let took = started.elapsed();
            self.next_scan = Some(Instant::now() + MIN_RESCAN.max(took * MAX_SCAN_SHARE));
        }
        wanted
            .iter()
            .map(|id| {
                let mount = self.mounts.get(&(id.major(), id.minor())).cloned();
                let name = match self.known.get(id) {
                    Some((path, deleted)) => FileName {
                        path: Some(path.clone()),
                        deleted: *deleted || !still_there(path, *id),
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

    fn scan(&mut self, wanted: &HashSet<FileId>) {
        self.scans += 1;
        self.mounts = read_mounts();
        if self.known.len() > MAX_KNOWN {
            self.known.clear();
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            self.scan_fds(pid, wanted);
            self.scan_maps(pid, wanted);
        }
    }

    fn scan_fds(&mut self, pid: u32, wanted: &HashSet<FileId>) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return; // gone, or a kernel thread
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let id = FileId {
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
            };
            if !wanted.contains(&id) {
                continue;
            }
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                let (path, deleted) = match target.strip_suffix(" (deleted)") {
                    Some(p) => (p.to_string(), true),
                    None => (target.into_owned(), false),
                };
                self.known.insert(id, (path, deleted));
            }
        }
    }

    fn scan_maps(&mut self, pid: u32, wanted: &HashSet<FileId>) {
        let Ok(maps) = crate::symbolize::procmaps::read_maps(pid) else {
            return;
        };
        for m in maps
            .iter()
            .filter(|m| m.inode != 0 && m.path.starts_with('/'))
        {
            let Some((major, minor)) = m.dev.split_once(':') else {
                continue;
            };
            let (Ok(major), Ok(minor)) = (
                u32::from_str_radix(major, 16),
                u32::from_str_radix(minor, 16),
            ) else {
                continue;
            };
            let id = FileId {
                dev: (major << 20) | minor,
                ino: m.inode,
            };
            if wanted.contains(&id) && !self.known.contains_key(&id) {
                let (path, deleted) = match m.path.strip_suffix(" (deleted)") {
                    Some(p) => (p.to_string(), true),
                    None => (m.path.clone(), false),
                };
                self.known.insert(id, (path, deleted));
            }
        }
    }
}

/// `st_dev` (glibc's encoding) as the kernel's `dev_t` (`major << 20 | minor`).
fn kernel_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (major << 20) | (minor & 0xf_ffff)
}

/// Whether `path` (as seen from the host) is still the file `id`. A path from inside a container
/// is usually not there on the host: then nothing is said (not "deleted").
fn still_there(path: &str, id: FileId) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) => meta.ino() == id.ino && kernel_dev(meta.dev()) == id.dev,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound || !path_is_on_host(path),
    }
}

/// Paths the host has a mount for the parent of (a cheap check that it is a host path).
fn path_is_on_host(path: &str) -> bool {
    std::path::Path::new(path)
        .parent()
        .is_some_and(std::path::Path::exists)
}

/// Mount points by device, from /proc/self/mountinfo (the first mount of each device).
fn read_mounts() -> HashMap<(u32, u32), String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return HashMap::new();
    };
    let mut mounts = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(_), Some(dev), Some(_), Some(point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
            mounts
                .entry((major, minor))
                .or_insert_with(|| point.to_string());
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn an_open_file_is_named_and_its_deletion_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("named.log");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"x").expect("write");
        let meta = file.metadata().expect("meta");
        let id = FileId {
            dev: kernel_dev(meta.dev()),
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
