//! Helpers for memlens' integration tests: the agent as a child process, child memory cgroups
//! under the test's own, and workloads whose memory we know.
//!
//! Safety rules (DEVELOPERS.md): cgroups are created only below this process's own memory cgroup
//! and removed on drop, also when a test fails; only processes started here are ended, by pid.
//! The kernel's truth is read here independently of the agent's code.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The `memlens` binary under test (`MEMLENS_BIN`, set by `cargo xtask test`).
#[must_use]
pub fn memlens_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MEMLENS_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    ["release", "debug"]
        .iter()
        .map(|p| root.join(p).join("memlens"))
        .find(|p| p.is_file())
        .expect("no memlens binary: run the tests with `cargo xtask test`")
}

/// The `memlens-workload` binary, built by cargo next to the test binaries (`target/<profile>/`).
#[must_use]
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("memlens-workload");
    assert!(
        bin.is_file(),
        "{} missing: build with `cargo test -p memlens-tests`",
        bin.display()
    );
    bin
}

/// How many times slower than this host the machine running the tests is
/// (`MEMLENS_TEST_SLOWDOWN`, default 1): `cargo xtask vm-test` sets it for guests under software
/// emulation.
#[must_use]
pub fn slowdown() -> u32 {
    std::env::var("MEMLENS_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&f: &u32| f >= 1)
        .unwrap_or(1)
}

/// `wait` stretched by [`slowdown`]: how long to wait for something that takes `wait` here.
/// Only waiting scales; what the tests assert about memory never does.
#[must_use]
pub fn patience(wait: Duration) -> Duration {
    wait * slowdown()
}

/// Panics unless running as root: these tests load kernel programs and create cgroups.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests must run as root (cargo xtask test)"
    );
}

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

/// A workload process started inside a cgroup, killed (by pid) on drop.
pub struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// Starts `memlens-workload <args>` directly inside `cgroup` (it joins before exec).
    #[must_use]
    pub fn start(cgroup: &TestCgroup, args: &[&str]) -> Workload {
        Workload::start_program(cgroup, &workload_bin(), args)
    }

    /// Starts `program <args>` directly inside `cgroup`, stdin and stdout piped.
    #[must_use]
    pub fn start_program(cgroup: &TestCgroup, program: &Path, args: &[&str]) -> Workload {
        let procs = cgroup.dir.join("cgroup.procs");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        join_cgroup_before_exec(&mut cmd, procs);
        let mut child = cmd.spawn().expect("start memlens-workload");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Workload {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the workload prints.
    pub fn read_line(&mut self) -> String {
        let mut got = String::new();
        self.stdout
            .read_line(&mut got)
            .expect("read workload output");
        got.trim().to_string()
    }

    /// Waits for the workload to exit; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for workload")
    }

    /// Waits for the workload to print `line`.
    pub fn expect_line(&mut self, line: &str) {
        let mut got = String::new();
        let n = self
            .stdout
            .read_line(&mut got)
            .expect("read workload output");
        assert!(
            n > 0 && got.trim() == line,
            "workload said {got:?}, expected {line:?}"
        );
    }

    /// Sends a command line to the workload.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to workload");
        self.stdin.flush().expect("flush");
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the workload and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the child write its own pid into `procs` before exec, so it runs in the cgroup from its
/// first instruction.
pub fn join_cgroup_before_exec(cmd: &mut Command, procs: PathBuf) {
    use std::os::unix::process::CommandExt as _;
    let path = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = b"0\n";
            let written = libc::write(fd, pid.as_ptr().cast(), pid.len());
            libc::close(fd);
            if written < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running `memlens agent`, stopped (by pid) on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on a private socket with `extra` flags and waits until it answers.
    #[must_use]
    pub fn start(extra: &[&str]) -> Agent {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("memlens.sock");
        let log = dir.path().join("agent.log");
        let mut cmd = Command::new(memlens_bin());
        cmd.arg("agent")
            .arg("--socket")
            .arg(&socket)
            .args(["--refresh", "500ms"]);
        if !extra.contains(&"--db") {
            // Each test's history stays in its own directory.
            cmd.arg("--db").arg(dir.path().join("history.db"));
        }
        let child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start memlens agent");
        let mut agent = Agent {
            child,
            socket,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + patience(Duration::from_secs(60));
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("memlens agent exited ({status}):\n{}", agent.log());
            }
            if agent.cli(&["status"]).status.success() {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer in {:?}:\n{}",
                patience(Duration::from_secs(60)),
                agent.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `memlens --socket <ours> <args>`.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(memlens_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run memlens")
    }

    /// `memlens top --json --limit 0`, parsed.
    #[must_use]
    pub fn top(&self) -> Value {
        let out = self.cli(&["top", "--json", "--limit", "0"]);
        assert!(
            out.status.success(),
            "memlens top failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("top --json is JSON")
    }

    /// The time of the census the agent serves now (`taken_at_unix_ms` of `top`).
    #[must_use]
    pub fn census_time(&self) -> u64 {
        let out = self.cli(&["top", "--json", "--limit", "1"]);
        assert!(out.status.success(), "memlens top failed:\n{}", self.log());
        let top: Value = serde_json::from_slice(&out.stdout).expect("top --json is JSON");
        top["taken_at_unix_ms"].as_u64().expect("taken_at_unix_ms")
    }

    /// Waits until the agent has published `n` censuses taken after this call: what they show
    /// was measured after everything the caller did before.
    pub fn wait_censuses(&self, n: usize) {
        let deadline = Instant::now() + patience(Duration::from_secs(30));
        let mut last = self.census_time();
        let mut seen = 0;
        while seen < n {
            assert!(
                Instant::now() < deadline,
                "the agent published {seen} of {n} censuses in {:?}:\n{}",
                patience(Duration::from_secs(30)),
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
            let now = self.census_time();
            if now != last {
                seen += 1;
                last = now;
            }
        }
    }

    /// The row of cgroup `path` in `memlens top --json`, if listed.
    #[must_use]
    pub fn row(&self, path: &str) -> Option<Value> {
        self.top()["cgroups"]
            .as_array()
            .expect("cgroups array")
            .iter()
            .find(|r| r["path"] == path)
            .cloned()
    }

    /// Polls `row(path)` until `done` holds for it or `timeout` (stretched by [`slowdown`])
    /// passes; returns the last row.
    pub fn wait_row(
        &self,
        path: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + patience(timeout);
        loop {
            let row = self.row(path);
            if row.as_ref().is_some_and(&done) || Instant::now() > deadline {
                return row;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Agent {
    /// Kills the agent with SIGKILL (no clean shutdown) and waits for it.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `held.<field>` of a top row, in bytes.
#[must_use]
pub fn held(row: &Value, field: &str) -> u64 {
    row["held"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("row has no held.{field}: {row}"))
}

/// |a - b| / b.
#[must_use]
pub fn rel_diff(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).max(1.0)
}

pub const MIB: u64 = 1 << 20;

/// The C leak workload (`tests/workloads/leak.c`), built once per test process with gcc and
/// frame pointers.
#[must_use]
pub fn leak_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .join("leak.c");
        let profile_dir = workload_bin().parent().expect("profile dir").to_path_buf();
        // In a VM guest the host's target directory is read-only: build beside the tests'
        // temporary files instead.
        let name = format!("memlens-leak.{}", std::process::id());
        let dir = if std::fs::File::create(profile_dir.join(&name)).is_ok() {
            profile_dir
        } else {
            std::env::temp_dir()
        };
        let out = dir.join("memlens-leak");
        let building = dir.join(name);
        let status = Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&building)
            .arg(&source)
            .status()
            .expect("run gcc");
        assert!(status.success(), "gcc failed on {}", source.display());
        std::fs::rename(&building, &out).expect("install the leak workload");
        out
    })
    .clone()
}

/// Writes a file of `mib` MiB and drops its page cache (written back first), so a later read
/// is cold and charges its cache to the reader's cgroup.
pub fn cold_file(path: &Path, mib: usize) {
    use std::os::fd::AsRawFd as _;
    let mut file = std::fs::File::create(path).expect("create file");
    let chunk = vec![0x37u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk).expect("write file");
    }
    file.sync_all().expect("fsync");
    // SAFETY: advisory call on a file descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED) failed");
}
