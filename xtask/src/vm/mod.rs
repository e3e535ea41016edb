//! `cargo xtask vm-test [TARGET...]`: the accuracy subset of the integration tests on other
//! kernels and cgroup layouts, each in a guest booted with virtme-ng, and on this host.
//!
//! The test binaries are built once, here; guests run them from the host's root file system.
//! Results, logs and each machine's `memlens status` stay in `target/vm/runs/<target>/`.

mod guest;
mod kernels;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, util};
use guest::{Machine, Run};
use kernels::{Kernel, Layout, KERNELS};

/// One test of the subset: its integration test file (cargo target) and name.
#[derive(Clone, Copy, Debug)]
pub struct TestCase {
    pub target: &'static str,
    pub name: &'static str,
}

/// The subset: the accuracy tests of anonymous pages, page cache (also in cgroups made one
/// after another, where the kernel may reuse a removed cgroup's memory) and OOM kills, an allocator
/// trace (user probes, return probes without the 6.11 uretprobe syscall on older kernels), and
/// records kept across an agent restart (pinned maps and links), with their assertions as on the
/// host (only their waits stretch under emulation).
const SUBSET: &[TestCase] = &[
    TestCase {
        target: "page_tracking",
        name: "anon_memory_is_attributed_to_its_cgroup_and_released",
    },
    TestCase {
        target: "filecache",
        name: "a_log_files_page_cache_is_attributed_to_it_and_leaves_on_truncate",
    },
    TestCase {
        target: "filecache",
        name: "cgroups_made_one_after_another_each_get_their_own_page_cache",
    },
    TestCase {
        target: "events",
        name: "an_oom_kill_is_recorded_with_its_cgroup",
    },
    TestCase {
        target: "alloc_trace",
        name: "a_traced_process_that_exits_ends_the_trace_with_its_results_kept_across_a_restart",
    },
    TestCase {
        target: "restart",
        name: "stacks_of_pages_allocated_before_and_during_a_restart_are_kept",
    },
];

/// Debian packages a guest needs: QEMU, depmod for virtme-ng, a static busybox for its init,
/// mkfs.ext4 for the scratch image.
const PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "e2fsprogs"];
/// virtme-ng (PyPI), pinned: the `vng` command.
const VIRTME_NG: setup::PythonTool = setup::PythonTool {
    package: "virtme-ng",
    version: "1.42",
};

/// A machine of the matrix: a guest kernel in a layout, or this host as it is.
#[derive(Clone, Copy)]
enum Target {
    Guest(&'static Kernel, Layout),
    Host,
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::Guest(kernel, layout) => format!("{}-{}", kernel.name, layout.name()),
            Target::Host => "host".into(),
        }
    }

    /// Every guest of the matrix.
    fn guests() -> impl Iterator<Item = Target> {
        KERNELS
            .iter()
            .flat_map(|k| k.layouts.iter().map(move |&l| Target::Guest(k, l)))
    }

    fn all() -> Vec<Target> {
        Target::guests().chain([Target::Host]).collect()
    }

    /// Targets named on the command line: `6.1` (all its layouts), `6.1-hybrid`, `host`.
    fn parse(names: &[String]) -> Result<Vec<Target>> {
        if names.is_empty() {
            return Ok(Target::all());
        }
        let all = Target::all();
        let mut chosen = Vec::new();
        for name in names {
            let matching: Vec<Target> = all
                .iter()
                .copied()
                .filter(|t| {
                    t.name() == *name
                        || matches!(t, Target::Guest(k, _) if k.name == name || k.release == name)
                })
                .collect();
            if matching.is_empty() {
                let known: Vec<String> = all.iter().map(|t| t.name()).collect();
                bail!(
                    "unknown target {name:?}: the matrix has {} (or a kernel's name alone)",
                    known.join(", ")
                );
            }
            chosen.extend(matching);
        }
        Ok(chosen)
    }
}

/// Every guest of the matrix, by name (what `cargo xtask test` runs after the host's tests).
pub fn guest_names() -> Vec<String> {
    Target::guests().map(Target::name).collect()
}

/// Guests booted at once: each has one vCPU, so as many as this host has cores, at most two.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

pub fn run(root: &Path, names: &[String], jobs: usize) -> Result<()> {
    let targets = Target::parse(names)?;
    if !util::is_root() {
        bail!("vm-test loads kernel programs on this host too and runs guests as root: run it as root");
    }
    setup::install_packages(PACKAGES)?;
    // The tests build a C workload with gcc.
    setup::install_packages(&["gcc"])?;
    let vng = VIRTME_NG.install()?.join("bin").join("vng");
    let vm_dir = root.join("target").join("vm");
    let memlens = util::build_release(root)?;
    let binaries = build_tests(root)?;
    let tests: Vec<(TestCase, PathBuf)> = SUBSET
        .iter()
        .map(|case| {
            binaries
                .get(case.target)
                .map(|b| (*case, b.clone()))
                .with_context(|| format!("cargo built no test binary {}", case.target))
        })
        .collect::<Result<_>>()?;

    // Kernels are fetched before any guest starts: two layouts of one kernel share its files.
    let mut guests = Vec::new();
    for target in &targets {
        if let Target::Guest(kernel, layout) = *target {
            guests.push((*target, kernel.image(&vm_dir)?, layout));
        }
    }
    let run_one = |target: Target, machine: &Machine<'_>| -> Result<Outcome> {
        let dir = vm_dir.join("runs").join(target.name());
        let run = Run {
            dir: &dir,
            memlens: &memlens,
            tests: &tests,
        };
        eprintln!("xtask: vm-test {} ...", target.name());
        let started = std::time::Instant::now();
        run.execute(machine)?;
        let outcome = Outcome::read(target, &dir, &tests, started.elapsed().as_secs());
        eprint!("{}", outcome.report());
        Ok(outcome)
    };
    // Guests side by side (one vCPU each); this host's own run alone afterwards, so that no
    // emulator competes with what it measures.
    let next = AtomicUsize::new(0);
    let mut outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Outcome>> {
                    let mut done = Vec::new();
                    while let Some((target, image, layout)) =
                        guests.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let machine = Machine::Guest {
                            vng: &vng,
                            image,
                            layout: *layout,
                        };
                        done.push(run_one(*target, &machine)?);
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a guest runner panicked"))
            })
            .collect::<Result<Vec<Vec<Outcome>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    if targets.iter().any(|t| matches!(t, Target::Host)) {
        outcomes.push(run_one(Target::Host, &Machine::Host)?);
    }
    let summary = summary(&outcomes);
    print!("{summary}");
    std::fs::write(vm_dir.join("summary.txt"), &summary).context("writing the summary")?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.target.clone())
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm-test failed on {}: logs in {}",
            failed.join(", "),
            vm_dir.join("runs").display()
        );
    }
    Ok(())
}

/// Builds the integration tests (release, as `cargo xtask test`) and returns each test
/// target's executable.
fn build_tests(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--package",
            "memlens-tests",
            "--no-run",
        ])
        .args(["--message-format", "json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

/// What one test did on one machine.
struct TestResult {
    name: &'static str,
    passed: bool,
    /// libtest's "finished in" time.
    seconds: Option<f64>,
    /// What the test printed about its measurement (the rest of its `test <name> ...` line).
    measured: String,
}

/// One machine's run, read back from its run directory.
struct Outcome {
    target: String,
    kernel: String,
    /// `memlens status` lines naming the mechanism of each capability.
    mechanisms: Vec<String>,
    setup_failure: Option<String>,
    finished: bool,
    tests: Vec<TestResult>,
    seconds: u64,
    dir: PathBuf,
}

/// The `memlens status` capabilities whose mechanism differs between kernels.
const MECHANISM_LINES: &[&str] = &[
    "kernel",
    "page probe",
    "struct offsets",
    "vmemmap base",
    "cgroup layout",
    "page census",
    "page cache",
    "lifecycle",
];

impl Outcome {
    fn read(target: Target, dir: &Path, tests: &[(TestCase, PathBuf)], seconds: u64) -> Outcome {
        let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let status = file("status.txt").unwrap_or_default();
        let mechanisms = status
            .lines()
            .filter(|l| MECHANISM_LINES.iter().any(|m| l.starts_with(m)))
            .map(str::to_string)
            .collect();
        let tests = tests
            .iter()
            .map(|(case, _)| {
                let log = file(&format!("{}.log", case.name)).unwrap_or_default();
                let rc = file(&format!("{}.rc", case.name));
                let prefix = format!("test {} ... ", case.name);
                TestResult {
                    name: case.name,
                    passed: rc.as_deref().map(str::trim) == Some("0"),
                    seconds: log
                        .lines()
                        .find_map(|l| l.split("finished in ").nth(1)?.strip_suffix('s'))
                        .and_then(|s| s.parse().ok()),
                    measured: log
                        .lines()
                        .find_map(|l| l.strip_prefix(&prefix))
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                }
            })
            .collect();
        Outcome {
            target: target.name(),
            kernel: file("kernel").unwrap_or_default().trim().to_string(),
            mechanisms,
            setup_failure: file("setup-failed").map(|s| s.trim().to_string()),
            finished: dir.join("done").is_file(),
            tests,
            seconds,
            dir: dir.to_path_buf(),
        }
    }

    fn passed(&self) -> bool {
        self.finished && self.setup_failure.is_none() && self.tests.iter().all(|t| t.passed)
    }

    fn report(&self) -> String {
        let mut s = format!(
            "== {} (kernel {}, {} s){}\n",
            self.target,
            if self.kernel.is_empty() {
                "?"
            } else {
                &self.kernel
            },
            self.seconds,
            if self.passed() { "" } else { ": FAILED" }
        );
        if let Some(why) = &self.setup_failure {
            let _ = writeln!(s, "   set-up failed: {why}");
        }
        if !self.finished {
            let _ = writeln!(
                s,
                "   the run did not finish: see {}/script.log and vng.log",
                self.dir.display()
            );
        }
        for line in &self.mechanisms {
            let _ = writeln!(s, "   {line}");
        }
        for t in &self.tests {
            let _ = writeln!(
                s,
                "   {} {} ({}) {}",
                if t.passed { "ok    " } else { "FAILED" },
                t.name,
                t.seconds.map_or("-".into(), |x| format!("{x:.0} s")),
                t.measured
            );
            if !t.passed {
                let _ = writeln!(s, "          log: {}/{}.log", self.dir.display(), t.name);
            }
        }
        s
    }
}

/// The matrix: a line per machine and test.
fn summary(outcomes: &[Outcome]) -> String {
    let mut s = String::from("\nvm-test summary\n");
    for o in outcomes {
        for t in &o.tests {
            let _ = writeln!(
                s,
                "{:<12} {:<22} {:<6} {}",
                o.target,
                o.kernel,
                if t.passed { "ok" } else { "FAILED" },
                t.name
            );
        }
    }
    s
}
