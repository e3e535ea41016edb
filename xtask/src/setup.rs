//! Idempotent installation of the kernel programs' toolchain (README, "Toolchain").

use std::{path::Path, process::Command};

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

pub fn setup() -> Result<()> {
    install_packages(PACKAGES)?;
    install_bpf_linker()
}

/// Installs the Debian packages that are not installed yet.
pub fn install_packages(packages: &[&str]) -> Result<()> {
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
