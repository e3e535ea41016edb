//! Builds the kernel programs (`ebpf/`) for `bpfel-unknown-none` with Debian's rustc.
//!
//! Shared, as source, by `cargo xtask build-ebpf` and the agent's build script (which includes
//! this file with `#[path]`), so both build the object the same way. Standard library only.
//!
//! Why not rustup: the BPF target is tier 3 with no prebuilt `core`, and `rust-src` cannot be
//! fetched here; Debian's `libstd-rust-web-dev-bpf` ships a prebuilt `core` for it, for its own
//! rustc 1.96 (see README, "Toolchain").

use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// Debian's rustc, the one with a prebuilt `core` for the BPF target.
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
/// Debian's cargo, matching that rustc.
pub const BPF_CARGO: &str = "/usr/bin/cargo";
/// Where Debian's `libstd-rust-web-dev-bpf` puts the target's `core`.
pub const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
/// The BPF target.
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Why the eBPF object could not be built, worded as the fix.
#[derive(Debug)]
pub enum EbpfBuildError {
    MissingToolchain(String),
    MissingLinker,
    Failed(String),
}

impl fmt::Display for EbpfBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EbpfBuildError::MissingToolchain(what) => write!(
                f,
                "{what} is missing: the kernel programs need Debian's rustc with a BPF core \
                 library; run `cargo xtask setup` (as root) once"
            ),
            EbpfBuildError::MissingLinker => write!(
                f,
                "bpf-linker is not installed: run `cargo xtask setup` (as root) once"
            ),
            EbpfBuildError::Failed(why) => write!(f, "building the kernel programs failed: {why}"),
        }
    }
}

impl std::error::Error for EbpfBuildError {}

/// The eBPF crate's directory inside the workspace.
#[must_use]
pub fn ebpf_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("ebpf")
}

/// The object the build produces.
#[must_use]
pub fn object_path(workspace_root: &Path) -> PathBuf {
    ebpf_dir(workspace_root)
        .join("target")
        .join(BPF_TARGET)
        .join("release")
        .join("memlens")
}

/// The bpf-linker binary cargo will find, if any.
#[must_use]
pub fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = cargo_home() {
        dirs.push(home.join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Paths whose change must rebuild the object (for build scripts' `rerun-if-changed`).
#[must_use]
#[allow(
    dead_code,
    reason = "used by kernel/build.rs, which includes this file"
)]
pub fn inputs(workspace_root: &Path) -> Vec<PathBuf> {
    let ebpf = ebpf_dir(workspace_root);
    let common = workspace_root.join("common");
    let mut inputs = vec![
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        ebpf.join(".cargo").join("config.toml"),
        common.join("src"),
        common.join("Cargo.toml"),
    ];
    inputs.extend(find_bpf_linker());
    inputs
}

/// Builds the object (cargo's own change tracking makes an up-to-date build take about a second)
/// and returns its path.
pub fn build(workspace_root: &Path) -> Result<PathBuf, EbpfBuildError> {
    if !Path::new(BPF_RUSTC).is_file() || !Path::new(BPF_CARGO).is_file() {
        return Err(EbpfBuildError::MissingToolchain(format!(
            "{BPF_RUSTC} or {BPF_CARGO}"
        )));
    }
    if !Path::new(BPF_CORE_DIR).is_dir() {
        return Err(EbpfBuildError::MissingToolchain(format!(
            "the BPF core library ({BPF_CORE_DIR})"
        )));
    }
    let linker = find_bpf_linker().ok_or(EbpfBuildError::MissingLinker)?;
    let linker_dir = linker.parent().map(Path::to_path_buf).unwrap_or_default();

    let mut path = vec![linker_dir];
    if let Some(p) = env::var_os("PATH") {
        path.extend(env::split_paths(&p));
    }
    let path = env::join_paths(path).map_err(|e| EbpfBuildError::Failed(e.to_string()))?;

    let mut cmd = Command::new(BPF_CARGO);
    cmd.current_dir(ebpf_dir(workspace_root))
        .args(["build", "--release", "--target", BPF_TARGET]);
    // A build script runs with the outer build's cargo/rustc settings in its environment; none of
    // them applies to this other toolchain and target.
    for (key, _) in env::vars_os() {
        if is_outer_build_var(&key) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PATH", path)
        .env("RUSTC", BPF_RUSTC)
        // aya-ebpf and the programs (crate `memlens`) use #![feature(asm_experimental_arch)];
        // Debian's rustc is a stable one.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,memlens")
        .env("CARGO_TARGET_DIR", ebpf_dir(workspace_root).join("target"));

    let output = cmd
        .output()
        .map_err(|e| EbpfBuildError::Failed(format!("cannot run {BPF_CARGO}: {e}")))?;
    if !output.status.success() {
        return Err(EbpfBuildError::Failed(format!(
            "{BPF_CARGO} build exited with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let object = object_path(workspace_root);
    if !object.is_file() {
        return Err(EbpfBuildError::Failed(format!(
            "the build succeeded but {} is missing",
            object.display()
        )));
    }
    Ok(object)
}

fn is_outer_build_var(key: &OsString) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    (key.starts_with("CARGO") && key != "CARGO_HOME")
        || key.starts_with("RUST")
        || matches!(
            key,
            "TARGET" | "HOST" | "OUT_DIR" | "OPT_LEVEL" | "PROFILE" | "DEBUG" | "NUM_JOBS"
        )
}
