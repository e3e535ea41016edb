//! Child memory cgroups below the test's own, removed on drop.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::patience;

/// Which cgroup version has the memory controller, and where this process's memory cgroup is.
#[derive(Clone, Debug)]
pub struct OwnCgroup {
    pub v2: bool,
    pub dir: PathBuf,
    pub path: String,
}

impl OwnCgroup {
    /// Finds it from /proc/self/mountinfo and /proc/self/cgroup.
    #[must_use]
    pub fn find() -> OwnCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut v1 = None;
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point, fstype, opts) = (
                left[3],
                left[4],
                right[0],
                right.get(2).copied().unwrap_or(""),
            );
            if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
                v1 = Some((point.to_string(), root.to_string()));
            } else if fstype == "cgroup2" {
                v2 = Some((point.to_string(), root.to_string()));
            }
        }
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let (is_v2, (point, root)) = match (v1, v2) {
            (Some(m), _) => (false, m),
            (None, Some(m)) => (true, m),
            _ => panic!("no memory cgroup hierarchy mounted"),
        };
        let path = proc_cgroup
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                let wanted = if is_v2 {
                    ctrl.is_empty()
                } else {
                    ctrl.split(',').any(|c| c == "memory")
                };
                wanted.then(|| path.to_string())
            })
            .expect("memory line in /proc/self/cgroup");
        let relative = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(&path);
        OwnCgroup {
            v2: is_v2,
            dir: Path::new(&point).join(relative.trim_start_matches('/')),
            path,
        }
    }
}

impl OwnCgroup {
    /// On cgroup v2, children have the memory controller only when their parent enables it in
    /// `cgroup.subtree_control`. That succeeds in the root cgroup (a VM's tests run there) or in
    /// a cgroup with no processes of its own; anywhere else the error says what to do.
    fn delegate_memory(&self) {
        let control = self.dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        if enabled.split_whitespace().any(|c| c == "memory") {
            return;
        }
        if let Err(e) = std::fs::write(&control, "+memory") {
            panic!(
                "cannot enable the memory controller for children of {} ({e}): on cgroup v2 run \
                 the tests from the root cgroup, or from a cgroup that has +memory in \
                 cgroup.subtree_control",
                self.dir.display()
            );
        }
    }
}

static NEXT_CGROUP: AtomicUsize = AtomicUsize::new(0);

/// A child memory cgroup of this process's own, removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path inside the hierarchy, as the agent reports it.
    pub path: String,
    pub v2: bool,
}

impl TestCgroup {
    /// Creates `memlens-test-<pid>-<n>-<name>` under the test's own memory cgroup.
    #[must_use]
    pub fn new(name: &str) -> TestCgroup {
        let own = OwnCgroup::find();
        let leaf = format!(
            "memlens-test-{}-{}-{name}",
            std::process::id(),
            NEXT_CGROUP.fetch_add(1, Ordering::Relaxed)
        );
        if own.v2 {
            own.delegate_memory();
        }
        let dir = own.dir.join(&leaf);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = format!("{}/{leaf}", own.path.trim_end_matches('/'));
        TestCgroup {
            dir,
            path,
            v2: own.v2,
        }
    }

    /// Creates the child cgroup `name` (one level; removed on drop, so drop children first: a
    /// chain of locals does, in reverse order). For hierarchies shaped like the kubelet's.
    #[must_use]
    pub fn child(&self, name: &str) -> TestCgroup {
        if self.v2 {
            let control = self.dir.join("cgroup.subtree_control");
            std::fs::write(&control, "+memory")
                .unwrap_or_else(|e| panic!("enable memory in {}: {e}", control.display()));
        }
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup {
            dir,
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
            v2: self.v2,
        }
    }

    /// Sets the cgroup's memory limit (`memory.limit_in_bytes` on v1, `memory.max` on v2).
    pub fn set_limit(&self, bytes: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(self.dir.join(file), bytes.to_string())
            .unwrap_or_else(|e| panic!("set {file} of {}: {e}", self.dir.display()));
    }

    /// The cgroup's id as the kernel reports it: its directory's inode.
    #[must_use]
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }

    /// A value of memory.stat (hierarchical on v1: `total_<key>`).
    #[must_use]
    pub fn stat(&self, v1_key: &str, v2_key: &str) -> u64 {
        let text = std::fs::read_to_string(self.dir.join("memory.stat")).expect("memory.stat");
        let key = if self.v2 {
            v2_key.to_string()
        } else {
            format!("total_{v1_key}")
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} "))?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} missing from memory.stat"))
    }

    /// Anonymous memory charged to the cgroup, per the kernel.
    #[must_use]
    pub fn anon_bytes(&self) -> u64 {
        self.stat("rss", "anon")
    }

    /// The kernel's count of OOM kills in the cgroup (`memory.events` on v2,
    /// `memory.oom_control` on v1).
    #[must_use]
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The most memory the cgroup was ever charged (`memory.peak` on v2, 5.19+;
    /// `memory.max_usage_in_bytes` on v1), when the kernel keeps it.
    #[must_use]
    pub fn peak_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the cgroup now (also done on drop).
    pub fn remove(&self) {
        remove_dir_patiently(&self.dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.dir.exists() {
            remove_dir_patiently(&self.dir);
        }
    }
}

fn remove_dir_patiently(dir: &Path) {
    // Processes we started are killed before the cgroup drops; their exit may take a moment.
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}
