//! How users name a memory cgroup: one type for every command and endpoint that takes one.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::units::MemcgId;

/// A memory cgroup as a user names it: its id (what `memlens top --json` shows), its path in the
/// hierarchy (`/kubepods/burstable/pod.../...`), the path the shell shows under a cgroup mount
/// (`/sys/fs/cgroup/memory/...` on v1, `/sys/fs/cgroup/...` on v2), or the end of its path
/// (`mltest`, `pod1234/ctr`). Sent as that text on the wire (`?cgroup=...`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CgroupSelector {
    /// Digits only: the id (inode number of the cgroup's directory). A cgroup whose name is all
    /// digits is named by a path instead (`/12345`).
    Id(MemcgId),
    /// Anything else: a path, or the end of one, without a trailing `/`.
    Path(String),
}

/// Where a memory hierarchy is mounted: the shell's `/sys/fs/cgroup/memory/a/b` is the
/// hierarchy's `/a/b` (below `root` when the mount shows only part of the hierarchy, as in a
/// cgroup namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPoint {
    /// The mount point, e.g. `/sys/fs/cgroup/memory`.
    pub dir: String,
    /// The hierarchy path the mount point shows, `/` unless in a cgroup namespace.
    pub root: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("a cgroup is named by its id, its path, or the end of its path; got an empty name")]
    Empty,
    #[error("a cgroup name cannot contain control characters")]
    Control,
    /// No cgroup is named `.` or `..`: a path with them would leave the hierarchy.
    #[error("a cgroup path cannot contain \".\" or \"..\" components")]
    DotComponent,
}

impl FromStr for CgroupSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<CgroupSelector, SelectorError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SelectorError::Empty);
        }
        if text.chars().any(char::is_control) {
            return Err(SelectorError::Control);
        }
        if text.split('/').any(|c| c == "." || c == "..") {
            return Err(SelectorError::DotComponent);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = text.parse() {
                return Ok(CgroupSelector::Id(MemcgId(id)));
            }
        }
        let trimmed = text.trim_end_matches('/');
        Ok(CgroupSelector::Path(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }))
    }
}

impl TryFrom<String> for CgroupSelector {
    type Error = SelectorError;

    fn try_from(text: String) -> Result<CgroupSelector, SelectorError> {
        text.parse()
    }
}

impl From<CgroupSelector> for String {
    fn from(selector: CgroupSelector) -> String {
        selector.to_string()
    }
}

impl fmt::Display for CgroupSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupSelector::Id(id) => id.fmt(f),
            CgroupSelector::Path(path) => f.write_str(path),
        }
    }
}

impl MountPoint {
    /// The hierarchy path of `path` if it lies under this mount point.
    fn hierarchy_path(&self, path: &str) -> Option<String> {
        let dir = self.dir.trim_end_matches('/');
        let rest = path.strip_prefix(dir)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let root = self.root.trim_end_matches('/');
        Some(match (root, rest) {
            ("", "") => "/".into(),
            (root, "") => root.into(),
            (root, rest) => format!("{root}{rest}"),
        })
    }
}

impl CgroupSelector {
    /// The hierarchy paths this names: for a path, itself and what it is below each mount
    /// point, most specific first.
    fn candidates(&self, mounts: &[MountPoint]) -> Vec<String> {
        match self {
            CgroupSelector::Id(_) => Vec::new(),
            CgroupSelector::Path(path) => mounts
                .iter()
                .filter_map(|m| m.hierarchy_path(path))
                .chain(std::iter::once(path.clone()))
                .collect(),
        }
    }

    /// Which of `cgroups` (id and hierarchy path each) this names: the cgroup with this id; else
    /// the cgroups whose path is the one given (or the one the shell shows under a mount point);
    /// else those whose path ends with it (at a `/`). Empty when none matches.
    #[must_use]
    pub fn select<'a, I>(&self, cgroups: I, mounts: &[MountPoint]) -> Vec<(MemcgId, &'a str)>
    where
        I: IntoIterator<Item = (MemcgId, &'a str)>,
        I::IntoIter: Clone,
    {
        let cgroups = cgroups.into_iter();
        match self {
            CgroupSelector::Id(id) => cgroups.filter(|(c, _)| c == id).collect(),
            CgroupSelector::Path(path) => {
                let candidates = self.candidates(mounts);
                let exact: Vec<_> = cgroups
                    .clone()
                    .filter(|(_, p)| candidates.iter().any(|c| c == p))
                    .collect();
                if !exact.is_empty() {
                    return exact;
                }
                let tail = format!("/{}", path.trim_start_matches('/'));
                cgroups.filter(|(_, p)| p.ends_with(&tail)).collect()
            }
        }
    }

    /// The hierarchy path this names when no listed cgroup matches it (history and lifecycle
    /// records outlive their cgroups): the path under a mount point, or the path as given.
    #[must_use]
    pub fn hierarchy_path(&self, mounts: &[MountPoint]) -> Option<String> {
        self.candidates(mounts).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Vec<MountPoint> {
        vec![MountPoint {
            dir: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
        }]
    }

    fn v2() -> Vec<MountPoint> {
        vec![MountPoint {
            dir: "/sys/fs/cgroup".into(),
            root: "/".into(),
        }]
    }

    /// Paths as `/proc/<pid>/cgroup` shows them on a hybrid host running a test.
    const CGROUPS: [(u64, &str); 5] = [
        (1, "/"),
        (20, "/process_api"),
        (31, "/process_api/4e67e69224401c5281b8ed0bd26150c4/mltest"),
        (
            32,
            "/process_api/4e67e69224401c5281b8ed0bd26150c4/mltest/child",
        ),
        (40, "/system.slice/my_app.service"),
    ];

    fn select(text: &str, mounts: &[MountPoint]) -> Vec<u64> {
        let selector: CgroupSelector = text.parse().expect("selector");
        selector
            .select(CGROUPS.iter().map(|&(id, p)| (MemcgId(id), p)), mounts)
            .into_iter()
            .map(|(id, _)| id.0)
            .collect()
    }

    #[test]
    fn the_shells_path_names_the_same_cgroup_as_the_hierarchys() {
        let shell = "/sys/fs/cgroup/memory/process_api/4e67e69224401c5281b8ed0bd26150c4/mltest";
        assert_eq!(select(shell, &v1()), [31]);
        assert_eq!(select(&format!("{shell}/"), &v1()), [31]);
        assert_eq!(
            select(
                "/process_api/4e67e69224401c5281b8ed0bd26150c4/mltest",
                &v1()
            ),
            [31]
        );
        assert_eq!(select("/sys/fs/cgroup/memory", &v1()), [1]);
        assert_eq!(
            select("/sys/fs/cgroup/system.slice/my_app.service", &v2()),
            [40]
        );
    }

    #[test]
    fn ids_ends_of_paths_and_nothing() {
        assert_eq!(select("31", &v1()), [31]);
        assert_eq!(select("mltest", &v1()), [31]);
        assert_eq!(select("mltest/child", &v1()), [32]);
        // `_` is a character like any other, never a wildcard.
        assert_eq!(select("my_app.service", &v1()), [40]);
        assert!(select("my%app.service", &v1()).is_empty());
        assert!(select("MLTEST", &v1()).is_empty());
        // The end of a path matches whole names only.
        assert!(select("test", &v1()).is_empty());
        assert!(select("999", &v1()).is_empty());
    }

    #[test]
    fn bad_names_are_errors() {
        assert_eq!("".parse::<CgroupSelector>(), Err(SelectorError::Empty));
        assert_eq!(
            "a\nb".parse::<CgroupSelector>(),
            Err(SelectorError::Control)
        );
        for path in ["/sys/fs/cgroup/memory/../../etc", "..", "a/./b"] {
            assert_eq!(
                path.parse::<CgroupSelector>(),
                Err(SelectorError::DotComponent)
            );
        }
    }

    #[test]
    fn gone_cgroups_are_named_by_their_hierarchy_path() {
        let gone: CgroupSelector = "/sys/fs/cgroup/memory/a/b".parse().expect("selector");
        assert_eq!(gone.hierarchy_path(&v1()).as_deref(), Some("/a/b"));
        let ns = [MountPoint {
            dir: "/sys/fs/cgroup".into(),
            root: "/kubepods/pod1".into(),
        }];
        assert_eq!(
            gone.hierarchy_path(&ns).as_deref(),
            Some("/kubepods/pod1/memory/a/b")
        );
    }

    #[test]
    fn selectors_travel_as_text() {
        let json = serde_json::to_string(&CgroupSelector::Id(MemcgId(7))).expect("json");
        assert_eq!(json, "\"7\"");
        let back: CgroupSelector = serde_json::from_str("\"/a/b/\"").expect("parse");
        assert_eq!(back, CgroupSelector::Path("/a/b".into()));
    }
}
