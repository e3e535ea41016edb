//! The guest kernels, pinned in one place, and how they are fetched: Debian's packages through
//! apt, unpacked under `target/vm/kernels/` and never installed.
//!
//! To bump one, change its `version` (and `release` when the ABI name changes) to what
//! `apt-cache madison <package>` offers; Debian's security suite keeps only its newest build, so
//! a pin that apt no longer has fails with that command in the message.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// A cgroup layout a guest is booted into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 (the memory controller on the unified hierarchy), as most Kubernetes nodes.
    V2,
    /// The memory controller on cgroup v1 with a controller-less cgroup2 beside it, as the
    /// machine these tests were first written on.
    Hybrid,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::V2 => "v2",
            Layout::Hybrid => "hybrid",
        }
    }
}

/// A Debian kernel package and the layouts its guests are tested in.
pub struct Kernel {
    /// Short name used on the command line (`cargo xtask vm-test 6.1`).
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// `uname -r` of the kernel: names its `vmlinuz-*` and `lib/modules/*`.
    pub release: &'static str,
    pub layouts: &'static [Layout],
}

/// The matrix's kernels: bookworm's 6.1 (its security suite carries the current build) and
/// bookworm-security's 6.12. 6.12 has no cgroup v1 memory controller (`CONFIG_MEMCG_V1` off).
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.107+deb12-amd64-unsigned",
        version: "6.12.107-1~deb12u1",
        release: "6.12.107+deb12-amd64",
        layouts: &[Layout::V2],
    },
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-amd64",
        version: "6.1.192-2",
        release: "6.1.0-56-amd64",
        layouts: &[Layout::V2, Layout::Hybrid],
    },
];

impl Kernel {
    /// Where the package is unpacked: `<dir>/boot/vmlinuz-<release>`, `<dir>/lib/modules/...`.
    fn dir(&self, vm_dir: &Path) -> PathBuf {
        vm_dir.join("kernels").join(self.release)
    }

    /// The kernel image, fetched and unpacked first if it is not there yet.
    pub fn image(&self, vm_dir: &Path) -> Result<PathBuf> {
        let dir = self.dir(vm_dir);
        let image = dir.join("boot").join(format!("vmlinuz-{}", self.release));
        let modules = dir.join("lib").join("modules").join(self.release);
        if image.is_file() && modules.is_dir() {
            return Ok(image);
        }
        let deb = self.download(&vm_dir.join("debs"))?;
        // Unpacked beside its final place, then renamed: an interrupted unpack is never taken
        // for a kernel.
        let unpacking = vm_dir
            .join("kernels")
            .join(format!("{}.unpacking", self.release));
        if unpacking.exists() {
            std::fs::remove_dir_all(&unpacking)
                .with_context(|| format!("removing {}", unpacking.display()))?;
        }
        std::fs::create_dir_all(&unpacking)
            .with_context(|| format!("creating {}", unpacking.display()))?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))
            .with_context(|| format!("unpacking {}", deb.display()))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::rename(&unpacking, &dir)
            .with_context(|| format!("moving the unpacked kernel to {}", dir.display()))?;
        if !image.is_file() {
            bail!("{} has no {}", deb.display(), image.display());
        }
        Ok(image)
    }

    /// Downloads the pinned package into `debs/` (kept: a second run needs no network).
    fn download(&self, debs: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
        let pinned = format!("{}={}", self.package, self.version);
        let find = || -> Option<PathBuf> {
            let prefix = format!("{}_", self.package);
            std::fs::read_dir(debs)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                        && deb_version(p).as_deref() == Some(self.version)
                })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        eprintln!("xtask: downloading {pinned}");
        let download = |update: bool| -> Result<()> {
            if update {
                util::run(Command::new("apt-get").args(["update", "-qq"]))?;
            }
            util::run(
                Command::new("apt-get")
                    .current_dir(debs)
                    // apt's sandbox user cannot write into the workspace; root can.
                    .args(["download", "-qq", "-o", "APT::Sandbox::User=root", &pinned]),
            )
        };
        // A fresh machine's package lists may not know the security suite's newest build yet.
        if download(false).is_err() {
            download(true).with_context(|| {
                format!(
                    "apt has no {pinned}: bump the pin in xtask/src/vm/kernels.rs to a version \
                     `apt-cache madison {}` lists",
                    self.package
                )
            })?;
        }
        find().with_context(|| {
            format!(
                "apt-get download {pinned} left no .deb in {}",
                debs.display()
            )
        })
    }
}

/// The `Version` of a `.deb`, from its control file.
fn deb_version(deb: &Path) -> Option<String> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
