//! Names of files from what processes have open (`/proc/<pid>/fd`) or mapped
//! (`/proc/<pid>/maps`): the kernel counts page cache by (device, inode), users read paths.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
};

use memlens_types::files::FileId;

use crate::maps;

/// A path a process has a file open or mapped under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// As that process sees it (inside its container, if any).
    pub path: String,
    /// The kernel says it was unlinked.
    pub deleted: bool,
}

/// Paths for those of `wanted` that some process has open or mapped, from one walk of `/proc`.
/// Processes that exit during the walk are skipped.
#[must_use]
pub fn scan(wanted: &HashSet<FileId>) -> HashMap<FileId, OpenFile> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    scan_pids(
        wanted,
        procs
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok()),
    )
}

/// Paths for those of `wanted` that one of `pids` has open or mapped. Processes that exit
/// during the walk are skipped.
#[must_use]
pub fn scan_pids(
    wanted: &HashSet<FileId>,
    pids: impl IntoIterator<Item = u32>,
) -> HashMap<FileId, OpenFile> {
    let mut found = HashMap::new();
    for pid in pids {
        scan_fds(pid, wanted, &mut found);
        scan_maps(pid, wanted, &mut found);
    }
    found
}

fn split_deleted(path: &str) -> OpenFile {
    match path.strip_suffix(" (deleted)") {
        Some(p) => OpenFile {
            path: p.to_string(),
            deleted: true,
        },
        None => OpenFile {
            path: path.to_string(),
            deleted: false,
        },
    }
}

fn scan_fds(pid: u32, wanted: &HashSet<FileId>, found: &mut HashMap<FileId, OpenFile>) {
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
            found.insert(id, split_deleted(&target.to_string_lossy()));
        }
    }
}

fn scan_maps(pid: u32, wanted: &HashSet<FileId>, found: &mut HashMap<FileId, OpenFile>) {
    let Ok(maps) = maps::read_maps(pid) else {
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
        if wanted.contains(&id) && !found.contains_key(&id) {
            found.insert(id, split_deleted(&m.path));
        }
    }
}

/// `st_dev` (glibc's encoding) as the kernel's `dev_t` (`major << 20 | minor`).
#[must_use]
pub fn kernel_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (major << 20) | (minor & 0xf_ffff)
}

/// Whether `path` (as seen from the host) is still the file `id`. A path from inside a container
/// is usually not there on the host: then nothing is said (not "deleted").
#[must_use]
pub fn still_there(path: &str, id: FileId) -> bool {
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn an_open_file_is_found_and_its_deletion_seen() {
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
        let found = scan(&wanted);
        assert_eq!(found[&id].path.as_str(), path.to_str().expect("utf-8"));
        assert!(!found[&id].deleted);
        assert!(still_there(&found[&id].path, id));
        std::fs::remove_file(&path).expect("unlink");
        assert!(
            scan(&wanted)[&id].deleted,
            "an unlinked file shows as deleted"
        );
    }
}
