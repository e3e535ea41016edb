//! Where the memory controller lives: cgroup v1, v2, or the hybrid layout (v1 memory controller
//! with a controller-less cgroup2 mount beside it), read from `/proc/self/mountinfo`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use memlens_types::selector::MountPoint;
use serde::Serialize;

use super::CgroupError;

/// Which cgroup version carries the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The host's cgroup layout, as far as memory is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupLayout {
    /// Version whose hierarchy has the memory controller.
    pub version: CgroupVersion,
    /// Mount point of that hierarchy (e.g. `/sys/fs/cgroup/memory` or `/sys/fs/cgroup`).
    pub memory_root: PathBuf,
    /// The mount's root inside the hierarchy (`/` unless in a cgroup namespace).
    pub mount_root: String,
    /// A cgroup2 mount without the memory controller exists too (the hybrid layout).
    pub hybrid: bool,
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.version, self.hybrid) {
            (CgroupVersion::V2, _) => "cgroup v2 (unified)",
            (CgroupVersion::V1, true) => {
                "hybrid (memory controller on cgroup v1, cgroup2 beside it)"
            }
            (CgroupVersion::V1, false) => "cgroup v1 (legacy)",
        };
        write!(
            f,
            "{kind}, memory hierarchy at {}",
            self.memory_root.display()
        )
    }
}

/// One line of mountinfo, the fields we need.
struct Mount<'a> {
    root: &'a str,
    mount_point: &'a str,
    fs_type: &'a str,
    super_options: &'a str,
}

fn parse_mount(line: &str) -> Option<Mount<'_>> {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let root = left.nth(3)?;
    let mount_point = left.next()?;
    let mut right = right.split(' ');
    let fs_type = right.next()?;
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("");
    Some(Mount {
        root,
        mount_point,
        fs_type,
        super_options,
    })
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CgroupLayout {
    /// Reads this host's layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<CgroupLayout, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::io("/proc/self/mountinfo", e))?;
        CgroupLayout::from_mountinfo(&mountinfo, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).ok()
        })
    }

    /// The layout described by `mountinfo`; `controllers` reads a cgroup2 mount's
    /// `cgroup.controllers` (injected for tests).
    pub fn from_mountinfo(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<CgroupLayout, CgroupError> {
        let mut v1_memory = None;
        let mut v2 = None;
        for mount in mountinfo.lines().filter_map(parse_mount) {
            match mount.fs_type {
                "cgroup" if mount.super_options.split(',').any(|o| o == "memory") => {
                    v1_memory.get_or_insert((unescape(mount.mount_point), unescape(mount.root)));
                }
                "cgroup2" => {
                    v2.get_or_insert((unescape(mount.mount_point), unescape(mount.root)));
                }
                _ => {}
            }
        }
        match (v1_memory, v2) {
            (Some((point, root)), v2) => Ok(CgroupLayout {
                version: CgroupVersion::V1,
                memory_root: PathBuf::from(point),
                mount_root: root,
                hybrid: v2.is_some(),
            }),
            (None, Some((point, root))) => {
                let point = PathBuf::from(point);
                let has_memory = controllers(&point)
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "memory"));
                if !has_memory {
                    return Err(CgroupError::NoMemoryController(format!(
                        "the cgroup2 mount at {} does not offer the memory controller",
                        point.display()
                    )));
                }
                Ok(CgroupLayout {
                    version: CgroupVersion::V2,
                    memory_root: point,
                    mount_root: root,
                    hybrid: false,
                })
            }
            (None, None) => Err(CgroupError::NoMemoryController(
                "no cgroup mount with the memory controller in /proc/self/mountinfo \
                 (mount cgroup2 at /sys/fs/cgroup, or give the container the host's)"
                    .into(),
            )),
        }
    }

    /// Where the shell sees the memory hierarchy, so that users may name a cgroup by the path
    /// they see (`/sys/fs/cgroup/memory/a/b` is the hierarchy's `/a/b`).
    #[must_use]
    pub fn mount_points(&self) -> Vec<MountPoint> {
        vec![MountPoint {
            dir: self.memory_root.display().to_string(),
            root: if self.mount_root.is_empty() {
                "/".into()
            } else {
                self.mount_root.clone()
            },
        }]
    }

    /// The hierarchy path of the memory cgroup of process `pid` (`self` for this process), from
    /// `/proc/<pid>/cgroup`.
    pub fn memory_cgroup_of(&self, pid: &str) -> Result<String, CgroupError> {
        let file = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&file).map_err(|e| CgroupError::io(&file, e))?;
        self.memory_cgroup_in(&text)
            .ok_or_else(|| CgroupError::Parse(file, "no memory cgroup line".into()))
    }

    /// The memory cgroup path in the text of a `/proc/<pid>/cgroup` file.
    #[must_use]
    pub fn memory_cgroup_in(&self, proc_cgroup: &str) -> Option<String> {
        proc_cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = match self.version {
                CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
                CgroupVersion::V2 => controllers.is_empty(),
            };
            wanted.then(|| path.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = include_str!("../fixtures/mountinfo-hybrid");

    #[test]
    fn hybrid_host_uses_the_v1_memory_hierarchy() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| Some(String::new())).unwrap();
        assert_eq!(layout.version, CgroupVersion::V1);
        assert_eq!(layout.memory_root, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(layout.hybrid);
        let own = layout
            .memory_cgroup_in(include_str!("../fixtures/proc-cgroup-hybrid"))
            .unwrap();
        assert_eq!(own, "/process_api/4e67e69224401c5281b8ed0bd26150c4");
    }

    #[test]
    fn real_v2_guest_layout() {
        let layout =
            CgroupLayout::from_mountinfo(include_str!("../fixtures/v2/mountinfo-v2"), |_| {
                Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
            })
            .unwrap();
        assert_eq!(layout.version, CgroupVersion::V2);
        assert_eq!(layout.memory_root, PathBuf::from("/sys/fs/cgroup"));
        let own = layout
            .memory_cgroup_in(include_str!("../fixtures/v2/proc-cgroup-v2"))
            .unwrap();
        assert_eq!(own, "/");
    }

    #[test]
    fn unified_host_needs_the_memory_controller() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let layout = CgroupLayout::from_mountinfo(mountinfo, |_| {
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
        })
        .unwrap();
        assert_eq!(layout.version, CgroupVersion::V2);
        assert_eq!(layout.memory_root, PathBuf::from("/sys/fs/cgroup"));
        assert!(!layout.hybrid);
        assert_eq!(
            layout
                .memory_cgroup_in("0::/system.slice/foo.service\n")
                .unwrap(),
            "/system.slice/foo.service"
        );

        let err = CgroupLayout::from_mountinfo(mountinfo, |_| Some("cpu io\n".into())).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not offer the memory controller"),
            "{err}"
        );
    }

    #[test]
    fn no_cgroup_mounts_is_a_clear_error() {
        let err = CgroupLayout::from_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n", |_| None)
            .unwrap_err();
        assert!(err.to_string().contains("no cgroup mount"), "{err}");
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
