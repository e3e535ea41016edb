//! Workloads whose memory we know, started inside a cgroup.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::{workload_bin, TestCgroup};

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
