//! The agent under test, as a child process on a private socket.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{join_cgroup_before_exec, memlens_bin, patience, require_root, TestCgroup};

/// A running `memlens agent`, stopped (by pid) on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
    /// Its own BPF file system for the pins (unless the test passed `--pin-dir`): dropped after
    /// the agent stops, which detaches what it left attached.
    _pins: Option<BpfMount>,
    _dir: tempfile::TempDir,
}

/// A private BPF file system, for an agent's pins: whatever is pinned in it goes (programs
/// detached, maps freed) when it is unmounted on drop.
pub struct BpfMount {
    dir: tempfile::TempDir,
}

impl BpfMount {
    /// Mounts a fresh BPF file system in a temporary directory.
    #[must_use]
    pub fn new() -> BpfMount {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a BPF file system");
        BpfMount { dir }
    }

    /// The agent's `--pin-dir` in it.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("memlens")
    }
}

impl Default for BpfMount {
    fn default() -> BpfMount {
        BpfMount::new()
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

impl Agent {
    /// Starts the agent on a private socket with `extra` flags and waits until it answers.
    #[must_use]
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_in(None, extra)
    }

    /// Starts the agent as [`Agent::start`] does, in `cgroup` when given (a memory limit the
    /// agent must run within).
    pub fn start_in(cgroup: Option<&TestCgroup>, extra: &[&str]) -> Agent {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("memlens.sock");
        let log = dir.path().join("agent.log");
        let mut cmd = Command::new(memlens_bin());
        cmd.arg("agent").arg("--socket").arg(&socket);
        // Censuses on time (the tests wait for them), not stretched to a CPU budget, unless the
        // test sets its own.
        if !extra.contains(&"--refresh") {
            cmd.args(["--refresh", "500ms"]);
        }
        if !extra.contains(&"--cpu-budget") {
            cmd.args(["--cpu-budget", "0"]);
        }
        if !extra.contains(&"--db") {
            // Each test's history stays in its own directory.
            cmd.arg("--db").arg(dir.path().join("history.db"));
        }
        let pins = (!extra.contains(&"--pin-dir")).then(BpfMount::new);
        if let Some(pins) = &pins {
            cmd.arg("--pin-dir").arg(pins.pin_dir());
        }
        if let Some(cgroup) = cgroup {
            join_cgroup_before_exec(&mut cmd, cgroup.dir.join("cgroup.procs"));
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
            _pins: pins,
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

    /// The agent's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Starts `memlens --socket <ours> <args>` without waiting for it (output discarded).
    #[must_use]
    pub fn cli_child(&self, args: &[&str]) -> Child {
        Command::new(memlens_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
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

    /// `memlens leaks --json <args>`, parsed.
    #[must_use]
    pub fn leaks(&self, args: &[&str]) -> Value {
        let mut all = vec!["leaks", "--json"];
        all.extend_from_slice(args);
        self.json(&all)
    }

    /// `memlens leaks --json` of cgroup `path`: the last minute's growth, 50 stacks, `extra`
    /// flags after.
    #[must_use]
    pub fn cgroup_leaks(&self, path: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--cgroup", path, "--since", "60s", "--top", "50"];
        args.extend_from_slice(extra);
        self.leaks(&args)
    }

    /// `memlens <args>` (which asks for JSON), which must succeed, parsed.
    #[must_use]
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "memlens {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("memlens {} is not JSON: {e}", args.join(" ")))
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

impl Agent {
    /// Stops the agent as its service manager would (SIGTERM, then SIGKILL after 10 s); returns
    /// how long it took and its whole log.
    pub fn stop(mut self) -> (Duration, String) {
        let started = Instant::now();
        self.terminate();
        (started.elapsed(), self.log())
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
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

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}
