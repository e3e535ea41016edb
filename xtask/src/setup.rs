//! Idempotent installation of the kernel programs' toolchain (README, "Toolchain"), and of the
//! tools the tests use (promtool, kubernetes-validate).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{ebpf_build, util};

/// Debian packages: rustc 1.96 with a prebuilt `core` for bpfel-unknown-none, and LLVM 22 for
/// bpf-linker to link against (the same LLVM major as that rustc).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Debian packages the tests use: `prometheus` (the `prometheus` and `promtool` binaries), and
/// `python3-venv` (Debian's `python3 -m venv`, with the pip it bootstraps) for the validator below.
const TEST_PACKAGES: &[&str] = &["prometheus", "python3-venv"];
/// Debian's python3, the one `python3-venv` makes able to create virtualenvs.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

pub fn setup() -> Result<()> {
    install_packages(PACKAGES)?;
    // Without recommends: prometheus alone recommends node-exporter and more (minutes of
    // downloads on a fresh machine, none of it used).
    install(TEST_PACKAGES, false)?;
    install_bpf_linker()?;
    KUBERNETES_VALIDATE.install().map(drop)
}

/// Installs the Debian packages that are not installed yet.
pub fn install_packages(packages: &[&str]) -> Result<()> {
    install(packages, true)
}

/// Installs the Debian packages that are not installed yet, with or without their recommends.
fn install(packages: &[&str], recommends: bool) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root: run this command as root",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args((!recommends).then_some("--no-install-recommends"))
            .args(&missing),
    )
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"install ok installed"))
}

fn install_bpf_linker() -> Result<()> {
    if let Some(linker) = ebpf_build::find_bpf_linker() {
        let works = Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Ok(());
        }
    }
    if !Path::new(LLVM_BIN).is_dir() {
        bail!("{LLVM_BIN} is missing although llvm-22-dev is installed");
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    // Without LLVM 22 first on PATH, bpf-linker's build finds Debian's default llvm-config (14).
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    util::run(
        Command::new("cargo")
            .env("PATH", path)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("installing bpf-linker")
}

/// A Python tool from PyPI, pinned, in its own virtualenv under `target/tools/<name>/`.
pub struct PythonTool {
    pub package: &'static str,
    pub version: &'static str,
}

/// kubernetes-validate (PyPI), pinned: it bundles the Kubernetes JSON schemas, so
/// tests/tests/deploy.rs validates the manifests in deploy/ offline (it runs
/// `target/tools/kubernetes-validate/bin/kubernetes-validate`).
const KUBERNETES_VALIDATE: PythonTool = PythonTool {
    package: "kubernetes-validate",
    version: "1.37.0",
};

impl PythonTool {
    /// The tool's virtualenv: `target/tools/<package>/` in the workspace.
    pub fn venv(&self) -> Result<PathBuf> {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|root| root.join("target").join("tools").join(self.package))
            .context("xtask lives one level below the workspace root")
    }

    /// The version installed in `venv`, if any.
    fn installed(&self, venv: &Path) -> Option<String> {
        Command::new(venv.join("bin").join("python"))
            .args([
                "-c",
                &format!(
                    "import importlib.metadata as m; print(m.version('{}'))",
                    self.package
                ),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Installs the pinned version unless it is there already; returns the virtualenv.
    pub fn install(&self) -> Result<PathBuf> {
        let venv = self.venv()?;
        if self.installed(&venv).as_deref() == Some(self.version) {
            return Ok(venv);
        }
        eprintln!(
            "xtask: installing {} {} into {}",
            self.package,
            self.version,
            venv.display()
        );
        // --clear: a venv left by another version of Python or of the package starts afresh.
        util::run(
            Command::new(SYSTEM_PYTHON)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
        .with_context(|| format!("creating the virtualenv {}", venv.display()))?;
        let requirement = format!("{}=={}", self.package, self.version);
        util::run(
            Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(&requirement),
        )
        .with_context(|| format!("installing {requirement}"))?;
        match self.installed(&venv) {
            Some(v) if v == self.version => Ok(venv),
            other => bail!(
                "{requirement} was installed into {} but it reports {other:?}",
                venv.display()
            ),
        }
    }
}
