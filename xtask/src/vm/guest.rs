//! One run of the subset: the shell script that prepares a machine (cgroup layout, a scratch
//! file system), takes `memlens status` from a short-lived agent and runs each test binary; and
//! how it is started, under virtme-ng for a guest kernel or directly on this host.
//!
//! Guests see the host's root file system read-only (9p), so the host-built binaries run
//! unchanged; everything a run writes goes to its run directory, shared read-write, and the
//! tests' temporary files to an ext4 image on it (page cache on a real file system, as on a
//! node, not on the guest's tmpfs).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{kernels::Layout, TestCase};
use crate::util;

/// Guest size: one vCPU as VM.md advises; 2 GiB so the page-cache test's 300 MiB log and a
/// 256 MiB workload fit beside the agent.
const GUEST_CPUS: &str = "1";
const GUEST_MEMORY: &str = "2G";
/// The scratch file system for the tests' files (an ext4 image in the run directory).
const SCRATCH_MIB: u64 = 1024;
/// Software emulation is 8-13x slower than this host: waits in the tests stretch by this much
/// (`MEMLENS_TEST_SLOWDOWN`); what they assert about memory does not change.
pub const GUEST_SLOWDOWN: u32 = 10;
/// A guest that has not finished by then is stopped and its run reported as failed.
const GUEST_TIMEOUT_SECS: u32 = 1800;

/// Where and how one run executes.
pub enum Machine<'a> {
    Host,
    Guest {
        vng: &'a Path,
        image: &'a Path,
        layout: Layout,
    },
}

/// Everything the script needs to know.
pub struct Run<'a> {
    pub dir: &'a Path,
    pub memlens: &'a Path,
    pub tests: &'a [(TestCase, PathBuf)],
}

impl Run<'_> {
    /// Prepares the run directory and runs the script on `machine`; the results are left in the
    /// run directory (see `super::Outcome::read`).
    pub fn execute(&self, machine: &Machine<'_>) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        std::fs::create_dir_all(self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let script = self.dir.join("run.sh");
        match machine {
            Machine::Host => {
                std::fs::write(&script, self.script(None, 1))
                    .with_context(|| format!("writing {}", script.display()))?;
                // The script's own exit status is not the verdict: each test's is, in its file.
                let _ = Command::new("sh")
                    .arg(&script)
                    .stdin(Stdio::null())
                    .status()
                    .context("cannot run sh")?;
            }
            Machine::Guest { vng, image, layout } => {
                let scratch = self.dir.join("scratch.img");
                let file = std::fs::File::create(&scratch)
                    .with_context(|| format!("creating {}", scratch.display()))?;
                file.set_len(SCRATCH_MIB << 20)
                    .with_context(|| format!("sizing {}", scratch.display()))?;
                util::run(
                    Command::new("mkfs.ext4")
                        .args(["-q", "-F"])
                        .arg(&scratch)
                        .stdout(Stdio::null()),
                )?;
                std::fs::write(&script, self.script(Some(*layout), GUEST_SLOWDOWN))
                    .with_context(|| format!("writing {}", script.display()))?;
                self.boot(vng, image, &script)?;
            }
        }
        Ok(())
    }

    /// Boots `image` under QEMU's software emulation (KVM does not boot stock kernels on this
    /// machine kind, see shared/VM.md) with the host's root file system, running `script`.
    fn boot(&self, vng: &Path, image: &Path, script: &Path) -> Result<()> {
        let bin_dir = vng.parent().context("vng has no directory")?;
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(self.dir.join("vng.log")).context("creating vng.log")?;
        let err = log.try_clone().context("vng.log")?;
        // Without udev on the host vng gets no output back and exits 255: the run's outcome
        // is in its files, so vng's status is only logged.
        let status = Command::new("timeout")
            .args(["--kill-after=10", &GUEST_TIMEOUT_SECS.to_string()])
            .arg(vng)
            .env("PATH", path)
            .arg("--run")
            .arg(image)
            .args(["--disable-kvm", "--user", "root"])
            .args(["--cpus", GUEST_CPUS, "--memory", GUEST_MEMORY])
            .arg("--rwdir")
            .arg(self.dir)
            .arg("--exec")
            .arg(format!("sh {}", script.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .status()
            .context("cannot start vng")?;
        if status.code() == Some(124) {
            eprintln!("xtask: the guest did not finish within {GUEST_TIMEOUT_SECS} s: stopped");
        }
        Ok(())
    }

    /// The script: `layout` is None on the host (nothing to set up there).
    fn script(&self, layout: Option<Layout>, slowdown: u32) -> String {
        let run = self.dir.display();
        let mut s = format!(
            "#!/bin/sh\n# Written by `cargo xtask vm-test`.\nRUN={run}\nexec > \"$RUN/script.log\" 2>&1\nset -x\n"
        );
        match layout {
            None => {}
            Some(layout) => {
                s.push_str(
                    "modprobe ext4 && modprobe loop || { echo 'no ext4 or loop module' > \"$RUN/setup-failed\"; exit 1; }\n",
                );
                if layout == Layout::Hybrid {
                    // Before anything enables +memory on v2: the controller can only move to
                    // a v1 hierarchy while no v2 cgroup uses it.
                    s.push_str(
                        "umount /sys/fs/cgroup\n\
                         mount -t tmpfs cgroup /sys/fs/cgroup\n\
                         mkdir /sys/fs/cgroup/memory /sys/fs/cgroup/unified\n\
                         mount -t cgroup -o memory memory /sys/fs/cgroup/memory || { echo 'cannot mount the v1 memory controller' > \"$RUN/setup-failed\"; exit 1; }\n\
                         mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified\n",
                    );
                }
                s.push_str(
                    "mkdir -p /run/memlens-scratch\n\
                     mount -o loop \"$RUN/scratch.img\" /run/memlens-scratch || { echo 'cannot mount the scratch image' > \"$RUN/setup-failed\"; exit 1; }\n\
                     mkdir -p /run/memlens-scratch/tmp\n\
                     export TMPDIR=/run/memlens-scratch/tmp\n",
                );
            }
        }
        let _ = write!(
            s,
            "export MEMLENS_TEST_SLOWDOWN={slowdown} MEMLENS_BIN={memlens}\n\
             uname -r > \"$RUN/kernel\"\n\
             cat /proc/self/cgroup > \"$RUN/own-cgroup\"\n\
             STATUS_DIR=$(mktemp -d)\n\
             \"$MEMLENS_BIN\" agent --socket \"$STATUS_DIR/memlens.sock\" --db \"$STATUS_DIR/history.db\" > \"$RUN/status-agent.log\" 2>&1 &\n\
             AGENT=$!\n\
             tries=0\n\
             until \"$MEMLENS_BIN\" --socket \"$STATUS_DIR/memlens.sock\" status > \"$RUN/status.txt\" 2>&1; do\n\
             \x20 tries=$((tries + 1)); [ $tries -ge 300 ] && break\n\
             \x20 kill -0 $AGENT || break\n\
             \x20 sleep 1\n\
             done\n\
             kill $AGENT; wait $AGENT\n\
             rm -rf \"$STATUS_DIR\"\n",
            memlens = self.memlens.display()
        );
        for (case, binary) in self.tests {
            let _ = writeln!(
                s,
                "{binary} --exact {name} --test-threads 1 --nocapture > \"$RUN/{name}.log\" 2>&1\n\
                 echo $? > \"$RUN/{name}.rc\"",
                binary = binary.display(),
                name = case.name,
            );
        }
        if layout.is_some() {
            s.push_str("umount /run/memlens-scratch\n");
        }
        s.push_str("echo done > \"$RUN/done\"\n");
        s
    }
}
