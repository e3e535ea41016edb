//! Helpers for memlens' integration tests: the agent as a child process, child memory cgroups
//! under the test's own, and workloads whose memory we know.
//!
//! Safety rules (DEVELOPERS.md): cgroups are created only below this process's own memory cgroup
//! and removed on drop, also when a test fails; only processes started here are ended, by pid.
//! The kernel's truth is read here independently of the agent's code.

mod agent;
mod cgroup;
pub mod pprof;
mod workload;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub use agent::{Agent, BpfMount};
pub use cgroup::{OwnCgroup, TestCgroup};
use serde_json::Value;
pub use workload::{join_cgroup_before_exec, Workload};

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

/// The `memlens-workload` binary, built by cargo next to the test binaries (`target/<profile>/`,
/// the parent of the tests' `deps/`, or beside a binary of this crate).
#[must_use]
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("memlens-workload"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "memlens-workload missing beside {}: build with `cargo test -p memlens-tests`",
                exe.display()
            )
        })
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

/// `held.<field>` of a top row, in bytes.
#[must_use]
pub fn held(row: &Value, field: &str) -> u64 {
    row["held"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("row has no held.{field}: {row}"))
}

/// Asserts that the truth lies within the estimate's 99.9% interval, the stated 95% interval
/// (`error95`) widened by 3.29 / 1.96. A correct 95% interval misses one run in twenty by
/// definition, so a single run cannot test it without failing CI that often; its coverage over
/// many runs is what `cargo xtask bench estimator` measures (docs/benchmarks.md).
pub fn assert_in_interval(what: &str, estimate: u64, error95: u64, truth: u64) {
    let error999 = error95 as f64 * 3.29 / 1.96;
    assert!(
        estimate.abs_diff(truth) as f64 <= error999,
        "{what}: {estimate} ± {error95} (95%; ± {error999:.0} at 99.9%) does not hold the \
         kernel's {truth}"
    );
}

/// |a - b| / b.
#[must_use]
pub fn rel_diff(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).max(1.0)
}

pub const MIB: u64 = 1 << 20;

/// Prints `what`: `attributed` against `truth` in MiB, and asserts they are within `tolerance`
/// (a fraction of `truth`).
pub fn assert_near(what: &str, attributed: u64, truth: u64, tolerance: f64) {
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "{what}: {:.1} MiB attributed, {:.1} MiB true",
        mib(attributed),
        mib(truth)
    );
    assert!(
        (attributed as f64 - truth as f64).abs() <= tolerance * truth as f64,
        "{what}: attributed {attributed} vs {truth} (tolerance {:.0}%)",
        tolerance * 100.0
    );
}

/// The function names of a leak entry's user stack, innermost first (`[unknown]` where none).
#[must_use]
pub fn stack_names(entry: &Value) -> Vec<String> {
    entry["user_stack"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("[unknown]").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `entry`'s user stack holds `chain` in this order (innermost first), allowing other
/// frames between (inlined helpers, the allocator's own).
pub fn has_chain(entry: &Value, chain: &[&str]) -> bool {
    // C++ names carry their parameters (`record_event(long)`), Rust and C++ their paths.
    let names: Vec<String> = stack_names(entry)
        .into_iter()
        .map(|n| n.split('(').next().unwrap_or_default().to_string())
        .collect();
    let mut at = 0;
    chain.iter().all(|want| {
        match names[at..]
            .iter()
            .position(|n| n == want || n.ends_with(&format!("::{want}")))
        {
            Some(i) => {
                at += i + 1;
                true
            }
            None => false,
        }
    })
}

/// The Go workload `tests/workloads/<name>`, built once per test process with Debian's
/// golang-go and its default flags, and stripped (`-ldflags=-s -w`: no symbols, no DWARF) when
/// asked.
#[must_use]
pub fn go_bin(name: &str, stripped: bool) -> PathBuf {
    static BINS: std::sync::Mutex<Vec<(String, bool, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BINS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, _, path)) = built.iter().find(|b| b.0 == name && b.1 == stripped) {
        return path.clone();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name);
    let dir = std::env::temp_dir().join(format!("memlens-go.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the Go workloads");
    let out = dir.join(if stripped {
        format!("{name}-stripped")
    } else {
        name.to_string()
    });
    let mut go = Command::new("go");
    go.current_dir(&source).arg("build").arg("-o").arg(&out);
    if stripped {
        go.arg("-ldflags=-s -w");
    }
    let status = go
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", std::env::temp_dir().join("memlens-go-cache"))
        .status()
        .expect("run go build (golang-go)");
    assert!(status.success(), "go build failed in {}", source.display());
    built.push((name.to_string(), stripped, out.clone()));
    out
}

/// The address range of function `name` in a Go binary with symbols, from `go tool nm`.
#[must_use]
pub fn go_function(binary: &Path, name: &str) -> (u64, u64) {
    let out = Command::new("go")
        .args(["tool", "nm", "-size"])
        .arg(binary)
        .output()
        .expect("run go tool nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (addr, size, _, symbol) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            (symbol == name).then(|| {
                let start = u64::from_str_radix(addr, 16).ok()?;
                Some((start, start + size.parse::<u64>().ok()?))
            })?
        })
        .unwrap_or_else(|| panic!("{name} not in {}", binary.display()))
}

/// The C leak workload (`tests/workloads/leak.c`), built once per test process with gcc and
/// frame pointers.
#[must_use]
pub fn leak_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        native_bin(
            "leak.c",
            "gcc",
            &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
        )
    })
    .clone()
}

/// The C leak three calls below `main` (`tests/workloads/deepleak.c`), built as users build:
/// `gcc -O2 -g`, no frame pointers.
#[must_use]
pub fn deep_leak_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| native_bin("deepleak.c", "gcc", &["-O2", "-g"]))
        .clone()
}

/// The C++ vector that only grows (`tests/workloads/vecleak.cpp`), built `g++ -O2`.
#[must_use]
pub fn vector_leak_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| native_bin("vecleak.cpp", "g++", &["-O2"]))
        .clone()
}

/// A leak beside a churn in one thread and one heap (`tests/workloads/heapreuse.c`), built as
/// users build: `gcc -O2 -g`, no frame pointers.
#[must_use]
pub fn heap_reuse_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| native_bin("heapreuse.c", "gcc", &["-O2", "-g"]))
        .clone()
}

/// One process of a busy node (`tests/workloads/nodeload.c`): 2^17 distinct call paths, built
/// `gcc -O2 -g` (no frame pointers).
#[must_use]
pub fn node_load_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        native_bin(
            "nodeload.c",
            "gcc",
            &["-O2", "-g", "-fno-optimize-sibling-calls"],
        )
    })
    .clone()
}

/// The same, linked statically and stripped (`gcc -O2 -static -s`): its allocator is in the
/// executable, with no symbol to find it by.
#[must_use]
pub fn static_stripped_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        native_bin_named(
            "heapreuse.c",
            "heapreuse-static",
            "gcc",
            &["-O2", "-static", "-s"],
        )
    })
    .clone()
}

/// A host that dlopens a plugin when told to (`tests/workloads/pluginhost.c`) and the plugin
/// (`plugin.c`, a shared library), both `gcc -O2 -g`.
#[must_use]
pub fn plugin_bins() -> (PathBuf, PathBuf) {
    static BINS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        (
            native_bin("pluginhost.c", "gcc", &["-O2", "-g"]),
            native_bin("plugin.c", "gcc", &["-O2", "-g", "-shared", "-fPIC"]),
        )
    })
    .clone()
}

/// Builds `tests/workloads/<source>` with `compiler` and `flags`, beside the test binaries (or
/// in the temporary directory when that is read-only, as in a VM guest).
fn native_bin(source: &str, compiler: &str, flags: &[&str]) -> PathBuf {
    native_bin_named(
        source,
        source.split('.').next().unwrap_or(source),
        compiler,
        flags,
    )
}

/// [`native_bin`] installed as `memlens-<stem>`.
fn native_bin_named(source: &str, stem: &str, compiler: &str, flags: &[&str]) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(source);
    let profile_dir = workload_bin().parent().expect("profile dir").to_path_buf();
    let name = format!("memlens-{stem}.{}", std::process::id());
    let dir = if std::fs::File::create(profile_dir.join(&name)).is_ok() {
        profile_dir
    } else {
        std::env::temp_dir()
    };
    let out = dir.join(format!("memlens-{stem}"));
    let building = dir.join(name);
    let status = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&building)
        .arg(&path)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed on {}", path.display());
    std::fs::rename(&building, &out).expect("install the workload");
    out
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
