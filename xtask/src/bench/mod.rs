//! `cargo xtask bench`: overhead measured side by side, interleaved in one run. This machine kind
//! is noisy (its speed drifts by ±15% between runs), so only runs of the same round are compared:
//! the report gives the median of per-round ratios with quartiles, and the ratio of the fastest
//! runs (interference only ever slows a run down).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use crate::util;

mod alloctrace;
mod build;
mod exits;
mod filecache;
mod goprofile;
mod stacks;
mod storm;

#[derive(Subcommand)]
pub enum Bench {
    /// Page-fault storm (map, touch, unmap anonymous memory): untraced, with the agent (one
    /// configuration per --sample-shift and --stack-copy), and with a memleak-style bpftrace
    /// peer, interleaved.
    Storm {
        /// Interleaved rounds (each runs every configuration once).
        #[arg(long, default_value_t = 30)]
        rounds: usize,
        /// MiB mapped and touched per storm pass.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Storm passes per run.
        #[arg(long, default_value_t = 1)]
        passes: usize,
        /// Run the storm below this many nested calls of 256 bytes of stack each (deep stacks
        /// to copy and unwind).
        #[arg(long, default_value_t = 0)]
        depth: usize,
        /// Instead of the storm, Debian's python3 filling a dict of this many strings (and a
        /// list from it): a real workload's page allocation rate.
        #[arg(long)]
        python: Option<usize>,
        /// The agent's --sample-shift; repeat to compare several rates in the same run.
        #[arg(long, default_values_t = [7])]
        sample_shift: Vec<u32>,
        /// The agent's --stack-copy (bytes; 0: frame pointers only); repeat to compare.
        #[arg(long, default_values_t = [0, 16384])]
        stack_copy: Vec<u32>,
        /// Leave out the bpftrace peer.
        #[arg(long)]
        no_peer: bool,
        /// Further flags for `memlens agent` (e.g. `--agent-arg=--refresh=1h`).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Symbolization throughput on the memlens binary itself, cold and warm caches.
    Symbolize {
        #[arg(long, default_value_t = 10_000)]
        stacks: usize,
        #[arg(long, default_value_t = 16)]
        depth: usize,
    },
    /// Page cache: a cold sequential read of a file and a buffered write of one, untraced and
    /// with the agent, interleaved.
    Filecache {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// File size in MiB.
        #[arg(long, default_value_t = 2048)]
        mib: usize,
        /// Where the files are: `root` (the root file system; ext4 here, which caches regular
        /// files in large folios) or `ext4-journal` (a fresh ext4 image on a loop device with
        /// direct I/O, mounted `data=journal`, which caches in 4 KiB folios: a program run per
        /// page).
        #[arg(long, default_value = "root")]
        fs: filecache::Fs,
    },
    /// Processes exiting one after another (status 0 and 1), untraced and with the agent,
    /// interleaved; then the exit probe's own cost, an `events check` and a `/metrics` scrape.
    Exits {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Processes per run.
        #[arg(long, default_value_t = 2000)]
        processes: usize,
    },
    /// The held-page estimate's 95% interval against `memory.stat`: workloads of every kind and
    /// size at once, each round with an agent of its own (a random sampling seed); how often the
    /// interval holds the kernel's figure.
    Estimator {
        /// Rounds per sampling rate (each starts every workload once).
        #[arg(long, default_value_t = 60)]
        rounds: usize,
        /// The agent's --sample-shift; repeat to measure several rates.
        #[arg(long, default_values_t = [7])]
        sample_shift: Vec<u32>,
        /// Write every comparison here as CSV (rate, workload, kernel's bytes, estimate,
        /// half-width, sampled frames).
        #[arg(long)]
        runs: Option<PathBuf>,
    },
    /// Build times: a clean release build of the binary, and a one-line change in the event
    /// engine to green unit tests of its crate (and of the binary, for comparison).
    Build {
        /// Edits timed per crate (the median is reported).
        #[arg(long, default_value_t = 3)]
        edits: usize,
    },
    /// How long reading a Go process's heap profile takes, for profiles of 2^bits distinct
    /// stacks (every allocation sampled).
    GoProfile {
        /// Repeat to compare several sizes.
        #[arg(long, default_values_t = [0, 8, 12])]
        bits: Vec<u32>,
    },
    /// An allocator trace's cost to the traced process: a malloc/free loop and redis-server
    /// filled by redis-benchmark, untraced and traced, interleaved.
    AllocTrace {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The agent with one page held under each of 2^depth distinct stacks: its RSS, and how long
    /// a leaks query takes cold and warm.
    Stacks {
        #[arg(long, default_value_t = 17)]
        depth: u32,
    },
    /// A busy node simulated here (memory cgroups, long- and short-lived processes under 2^17
    /// distinct stacks, cached files, OOM kills, scrapes and queries): the agent's RSS, CPU, BPF
    /// maps, census, latencies, SQLite and drops over time, and against the targets.
    Node {
        #[arg(long, default_value_t = 20)]
        minutes: u64,
        #[arg(long, default_value_t = 1000)]
        cgroups: usize,
        /// Long-lived processes per cgroup.
        #[arg(long, default_value_t = 2)]
        services: usize,
        /// Short-lived processes over the run.
        #[arg(long, default_value_t = 3000)]
        short_lived: usize,
    },
}

pub fn run(root: &Path, which: Bench) -> Result<()> {
    if !matches!(which, Bench::Build { .. }) && !util::is_root() {
        bail!("benchmarks load kernel programs: run as root");
    }
    match which {
        Bench::Storm {
            rounds,
            mib,
            passes,
            depth,
            python,
            sample_shift,
            stack_copy,
            no_peer,
            agent_args,
        } => {
            let mut configs = vec![storm::Config::Untraced];
            for &shift in &sample_shift {
                configs.extend(
                    stack_copy
                        .iter()
                        .map(|&stack_copy| storm::Config::Agent { shift, stack_copy }),
                );
            }
            if !no_peer {
                configs.push(storm::Config::Peer);
            }
            storm::storm(
                root,
                rounds,
                &storm::Storm {
                    mib,
                    passes,
                    depth,
                    python,
                },
                &configs,
                &agent_args,
            )
        }
        Bench::Symbolize { stacks, depth } => {
            let memlens = util::build_release(root)?;
            util::run(Command::new(memlens).args([
                "debug",
                "bench-symbolize",
                "--stacks",
                &stacks.to_string(),
                "--depth",
                &depth.to_string(),
            ]))
        }
        Bench::Stacks { depth } => stacks::many_stacks(root, depth),
        Bench::GoProfile { bits } => goprofile::go_profile(root, &bits),
        Bench::Filecache { rounds, mib, fs } => filecache::file_cache(root, rounds, mib, fs),
        Bench::Exits { rounds, processes } => exits::exits(root, rounds, processes),
        Bench::Build { edits } => build::build(root, edits.max(1)),
        Bench::AllocTrace { rounds } => alloctrace::alloc_trace(root, rounds.max(1)),
        Bench::Estimator {
            rounds,
            sample_shift,
            runs,
        } => {
            let memlens = util::build_release(root)?;
            build_test_bins(root)?;
            let mut bench = Command::new(root.join("target/release/memlens-estimator-bench"));
            bench
                .env("MEMLENS_BIN", memlens)
                .args(["--rounds", &rounds.to_string()]);
            for shift in sample_shift {
                bench.args(["--sample-shift", &shift.to_string()]);
            }
            if let Some(runs) = runs {
                bench.arg("--runs").arg(runs);
            }
            util::run(&mut bench)
        }
        Bench::Node {
            minutes,
            cgroups,
            services,
            short_lived,
        } => {
            let memlens = util::build_shipped(root)?;
            build_test_bins(root)?;
            util::run(
                Command::new(root.join("target/release/memlens-node-bench"))
                    .env("MEMLENS_BIN", memlens)
                    .env("MEMLENS_BENCH_KEEP", root.join("target/bench/node"))
                    .args(["--minutes", &minutes.to_string()])
                    .args(["--cgroups", &cgroups.to_string()])
                    .args(["--services", &services.to_string()])
                    .args(["--short-lived", &short_lived.to_string()]),
            )
        }
    }
}

/// Builds the benches and workloads of the test crate (`target/release/memlens-*`).
fn build_test_bins(root: &Path) -> Result<()> {
    util::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "memlens-tests",
        "--bins",
    ]))
}

pub(super) fn build_workload(root: &Path) -> Result<PathBuf> {
    util::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "memlens-tests",
        "--bin",
        "memlens-workload",
    ]))?;
    Ok(root.join("target/release/memlens-workload"))
}

/// Starts the agent and waits until it answers.
pub(super) fn start_agent(memlens: &Path, socket: &Path, args: &[String]) -> Result<Child> {
    let mut agent = Command::new(memlens)
        .arg("--socket")
        .arg(socket)
        .arg("agent")
        // Nothing of a measured agent may stay attached into the next round.
        .args(["--pin-dir", "none"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = Command::new(memlens)
            .arg("--socket")
            .arg(socket)
            .arg("status")
            .output()?;
        if up.status.success() {
            return Ok(agent);
        }
        if Instant::now() > deadline || agent.try_wait()?.is_some() {
            stop(&mut agent);
            bail!("the agent did not start");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `RssAnon:`), in KiB.
pub(super) fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

pub(super) fn pct(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

pub(super) fn quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// SIGINT, then SIGKILL after 10 s, of a child we started.
pub(super) fn stop(child: &mut Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Turns on `kernel.bpf_stats_enabled` for the benchmark and restores it after.
pub(super) struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS).context(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1").context(BPF_STATS)?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

/// Prints the table of added time per workload: `runs[0]` untraced, `runs[1]` with the agent,
/// one entry per round.
pub(super) fn ratio_table(rows: &[(&str, &[Vec<f64>; 2])]) {
    println!("| workload | untraced (median) | added time, median of per-round ratios (quartiles) | added time, fastest runs |");
    println!("|---|---|---|---|");
    for (name, runs) in rows {
        let mut ratios: Vec<f64> = runs[1].iter().zip(&runs[0]).map(|(a, u)| a / u).collect();
        let (q1, med, q3) = quartiles(&mut ratios);
        let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (_, base, _) = quartiles(&mut runs[0].clone());
        println!(
            "| {name} | {base:.3} s | {:+.1}% ({:+.1}% .. {:+.1}%) | {:+.1}% |",
            pct(med),
            pct(q1),
            pct(q3),
            pct(fastest(&runs[1]) / fastest(&runs[0]))
        );
    }
}
