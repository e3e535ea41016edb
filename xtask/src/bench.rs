//! `cargo xtask bench`: overhead measured side by side, interleaved in one run. This machine kind
//! is noisy (its speed drifts by ±15% between runs), so only runs of the same round are compared:
//! the report gives the median of per-round ratios with quartiles, and the ratio of the fastest
//! runs (interference only ever slows a run down).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use crate::{setup, util};

#[derive(Subcommand)]
pub enum Bench {
    /// Page-fault storm (map, touch, unmap anonymous memory): untraced, with the agent (one
    /// configuration per --sample-shift), and with a memleak-style bpftrace peer, interleaved.
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
        /// The agent's --sample-shift; repeat to compare several rates in the same run.
        #[arg(long, default_values_t = [6, 7])]
        sample_shift: Vec<u32>,
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
    },
    /// The agent with one page held under each of 2^depth distinct stacks: its RSS, and how long
    /// a leaks query takes cold and warm.
    Stacks {
        #[arg(long, default_value_t = 17)]
        depth: u32,
    },
}

/// The bpftrace peer from the issue: bcc memleak's idea on the page allocator.
const PEER: &str = "tracepoint:kmem:mm_page_alloc { @live[args->pfn] = kstack; } \
                    tracepoint:kmem:mm_page_free { delete(@live[args->pfn]); } \
                    END { clear(@live); }";

pub fn run(root: &Path, which: Bench) -> Result<()> {
    if !util::is_root() {
        bail!("benchmarks load kernel programs: run as root");
    }
    match which {
        Bench::Storm {
            rounds,
            mib,
            passes,
            sample_shift,
            no_peer,
            agent_args,
        } => {
            let mut configs = vec![Config::Untraced];
            configs.extend(sample_shift.iter().map(|&s| Config::Agent(s)));
            if !no_peer {
                configs.push(Config::Peer);
            }
            storm(root, rounds, &Storm { mib, passes }, &configs, &agent_args)
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
        Bench::Stacks { depth } => many_stacks(root, depth),
        Bench::Filecache { rounds, mib } => file_cache(root, rounds, mib),
    }
}

/// `cargo xtask bench filecache`.
fn file_cache(root: &Path, rounds: usize, mib: usize) -> Result<()> {
    let memlens = util::build_release(root)?;
    let workload = build_workload(root)?;
    // On the root filesystem (a disk), not a tmpfs.
    let dir = Path::new("/var/tmp").join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("memlens.sock");
    let data = dir.join("read.bin");
    let written = dir.join("write.bin");
    let result = (|| -> Result<()> {
        let timed = |args: &[&std::ffi::OsStr]| -> Result<f64> {
            let started = Instant::now();
            let status = Command::new(&workload)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("memlens-workload {args:?} failed");
            }
            Ok(started.elapsed().as_secs_f64())
        };
        let size = mib.to_string();
        timed(&["writefile".as_ref(), data.as_os_str(), size.as_ref()])?;
        let mut read = [Vec::new(), Vec::new()];
        let mut write = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in [round % 2, 1 - round % 2] {
                // Cold: written back and dropped from the page cache; no leftover write file, and
                // no writeback of an earlier round still running.
                let _ = std::fs::remove_file(&written);
                drop_file_cache(&data)?;
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
                let agent = if i == 1 {
                    Some(start_agent(&memlens, &socket, &[])?)
                } else {
                    None
                };
                read[i].push(timed(&["readfile".as_ref(), data.as_os_str()])?);
                write[i].push(timed(&[
                    "writefile".as_ref(),
                    written.as_os_str(),
                    size.as_ref(),
                ])?);
                if let Some(mut agent) = agent {
                    stop(&mut agent);
                }
            }
            eprintln!(
                "round {}/{rounds}: read x{:.3}, write x{:.3}",
                round + 1,
                read[1][round] / read[0][round],
                write[1][round] / write[0][round]
            );
        }
        // The programs' own cost, from the kernel's statistics, in a separate round.
        let stats = BpfStats::enable()?;
        let _ = std::fs::remove_file(&written);
        drop_file_cache(&data)?;
        let mut agent = start_agent(&memlens, &socket, &[])?;
        let read_s = timed(&["readfile".as_ref(), data.as_os_str()])?;
        let write_s = timed(&["writefile".as_ref(), written.as_os_str(), size.as_ref()])?;
        let status = Command::new(&memlens)
            .arg("--socket")
            .arg(&socket)
            .args(["status", "--json"])
            .output()?;
        stop(&mut agent);
        drop(stats);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        println!("## page cache: {mib} MiB cold sequential read and buffered write, {rounds} interleaved rounds");
        println!();
        for program in status["programs"].as_array().into_iter().flatten() {
            let name = program["name"].as_str().unwrap_or("?");
            let runs = program["run_count"].as_u64().unwrap_or(0);
            if name.starts_with("filemap") && runs > 0 {
                let ns = program["run_time_ns"].as_u64().unwrap_or(0);
                println!(
                    "- {name}: {runs} runs in one read + write round ({read_s:.2} s + {write_s:.2} s), {:.0} ns per run including the statistics' own cost, {:.2}% of the round's time",
                    ns as f64 / runs as f64,
                    100.0 * ns as f64 / 1e9 / (read_s + write_s)
                );
            }
        }
        println!();
        println!();
        println!("| workload | untraced (median) | added time, median of per-round ratios (quartiles) | added time, fastest runs |");
        println!("|---|---|---|---|");
        for (name, runs) in [("cold sequential read", &read), ("buffered write", &write)] {
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
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Builds the benchmarks' workload binary; returns its path.
fn build_workload(root: &Path) -> Result<std::path::PathBuf> {
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

/// Writes back and drops `path`'s page cache, so the next read comes from the disk.
fn drop_file_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    // SAFETY: advisory call on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise: error {rc}");
    }
    Ok(())
}

/// Starts the agent and waits until it answers.
fn start_agent(memlens: &Path, socket: &Path, args: &[String]) -> Result<Child> {
    let mut agent = Command::new(memlens)
        .arg("--socket")
        .arg(socket)
        .arg("agent")
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

/// `cargo xtask bench stacks`.
fn many_stacks(root: &Path, depth: u32) -> Result<()> {
    let memlens = util::build_release(root)?;
    let dir = std::env::temp_dir().join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let workload = dir.join("manystacks");
    util::run(
        Command::new("gcc")
            .args([
                "-O2",
                "-fno-optimize-sibling-calls",
                "-fno-omit-frame-pointer",
                "-o",
            ])
            .arg(&workload)
            .arg(root.join("tests/workloads/manystacks.c")),
    )?;
    let socket = dir.join("memlens.sock");
    let stacks = 1u64 << depth;
    // Every frame sampled, so every one of the workload's pages (and stacks) is tracked.
    let mut agent = Command::new(&memlens)
        .arg("--socket")
        .arg(&socket)
        .args([
            "agent",
            "--sample-shift",
            "0",
            "--max-sample-entries",
            "16777216",
        ])
        .args(["--stack-entries", &(stacks * 4).max(65_536).to_string()])
        .args(["--max-stacks", &(stacks * 2).to_string(), "--refresh", "5s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let result = (|| -> Result<()> {
        let cli = |args: &[&str]| {
            Command::new(&memlens)
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .output()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cli(&["status"])?.status.success() {
            if Instant::now() > deadline {
                bail!("the agent did not start");
            }
            thread::sleep(Duration::from_millis(200));
        }
        let rss_before = rss_kib(agent.id(), "VmRSS:")?;
        let anon_before = rss_kib(agent.id(), "RssAnon:")?;
        let mut held = Command::new(&workload)
            .arg(depth.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting manystacks")?;
        let pid = held.id().to_string();
        let mut line = String::new();
        BufReader::new(held.stdout.take().context("stdout")?).read_line(&mut line)?;
        let tracked = loop {
            let out = cli(&["leaks", "--pid", &pid, "--top", "1", "--json"])?;
            let n = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["matching_stacks"].as_u64())
                .unwrap_or(0);
            if n * 10 >= stacks * 9 || Instant::now() > deadline + Duration::from_secs(120) {
                break n;
            }
            thread::sleep(Duration::from_secs(2));
        };
        let rss = rss_kib(agent.id(), "VmRSS:")?;
        let anon = rss_kib(agent.id(), "RssAnon:")?;
        let timed = |args: &[&str]| -> Result<f64> {
            let started = Instant::now();
            let out = cli(args)?;
            if !out.status.success() {
                bail!("{}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(started.elapsed().as_secs_f64())
        };
        let query = ["leaks", "--pid", pid.as_str(), "--top", "1000", "--json"];
        let cold = timed(&query)?;
        let warm = timed(&query)?;
        let status = cli(&["status"])?;
        let counters = cli(&["status", "--json"])?;
        let counters: serde_json::Value =
            serde_json::from_slice(&counters.stdout).unwrap_or_default();
        stop(&mut held);
        println!(
            "## agent with {tracked} distinct stacks tracked ({line})",
            line = line.trim()
        );
        println!();
        println!(
            "- agent RSS: {} MiB before the workload, {} MiB with it; of which anonymous (the agent's \
             own heap, not the mapped kernel sample array): {} MiB and {} MiB",
            rss_before / 1024,
            rss / 1024,
            anon_before / 1024,
            anon / 1024
        );
        println!("- `memlens leaks --top 1000` (symbolizes up to 8,000 stacks): {cold:.2} s cold, {warm:.2} s warm");
        println!("- kernel counters: {}", counters["counters"]);
        for l in String::from_utf8_lossy(&status.stdout).lines().filter(|l| {
            l.starts_with("leak") || l.starts_with("page census") || l.starts_with("sampling")
        }) {
            println!("- status: {l}");
        }
        Ok(())
    })();
    stop(&mut agent);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `RssAnon:`), in KiB.
fn rss_kib(pid: u32, field: &str) -> Result<u64> {
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Untraced,
    /// The agent at this sample shift.
    Agent(u32),
    Peer,
}

impl Config {
    fn name(self) -> String {
        match self {
            Config::Untraced => "untraced".into(),
            Config::Agent(shift) => format!("memlens agent, 1 page in {}", 1u64 << shift),
            Config::Peer => "bpftrace memleak-style peer".into(),
        }
    }
}

struct Storm {
    mib: usize,
    passes: usize,
}

/// A storm run with the agent, and what the agent's counters said about it.
struct AgentRun {
    seconds: f64,
    pages: u64,
    runs: u64,
    run_ns: u64,
    sampled_frames: u64,
    reused_kernel_stacks: u64,
}

fn storm(
    root: &Path,
    rounds: usize,
    storm: &Storm,
    configs: &[Config],
    agent_args: &[String],
) -> Result<()> {
    if configs.contains(&Config::Peer) {
        setup::install_packages(&["bpftrace"])?;
    }
    let memlens = util::build_release(root)?;
    let workload = build_workload(root)?;
    let dir = std::env::temp_dir().join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("memlens.sock");
    let agent = |shift: u32| -> Vec<String> {
        let mut args = vec!["--sample-shift".to_string(), shift.to_string()];
        args.extend(agent_args.iter().cloned());
        args
    };
    let run_one = |config: Config| -> Result<f64> {
        Ok(match config {
            Config::Untraced => run_storm(&workload, storm)?.0,
            Config::Agent(shift) => {
                with_agent(&memlens, &socket, &agent(shift), || {
                    run_storm(&workload, storm)
                })?
                .seconds
            }
            Config::Peer => with_peer(|| run_storm(&workload, storm))?.0,
        })
    };

    // seconds[config][round]
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        // Rotate the order so no configuration always runs first or last.
        let mut order: Vec<usize> = (0..configs.len()).collect();
        order.rotate_left(round % configs.len());
        for i in order {
            seconds[i].push(run_one(configs[i])?);
        }
        let ratios: Vec<String> = (1..configs.len())
            .map(|i| format!("x{:.3}", seconds[i][round] / seconds[0][round]))
            .collect();
        eprintln!(
            "round {}/{rounds}: untraced {:.3} s, {}",
            round + 1,
            seconds[0][round],
            ratios.join(", ")
        );
    }

    // Program cost from the kernel's statistics, in separate runs: measuring costs two clock
    // reads per program run, which must not inflate the ratios above.
    let stats = BpfStats::enable()?;
    let mut costs = Vec::new();
    for &config in configs {
        if let Config::Agent(shift) = config {
            let runs: Vec<AgentRun> = (0..3)
                .map(|_| {
                    with_agent(&memlens, &socket, &agent(shift), || {
                        run_storm(&workload, storm)
                    })
                })
                .collect::<Result<_>>()?;
            costs.push((shift, runs));
        }
    }
    drop(stats);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "## storm: {} MiB x {} passes per run, {rounds} interleaved rounds",
        storm.mib, storm.passes
    );
    println!();
    println!("| configuration | fastest run | added time, fastest runs | added time, median of per-round ratios (quartiles) |");
    println!("|---|---|---|---|");
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let base = fastest(&seconds[0]);
    println!("| untraced | {base:.3} s | | |");
    for (i, config) in configs.iter().enumerate().skip(1) {
        let mut ratios: Vec<f64> = seconds[i]
            .iter()
            .zip(&seconds[0])
            .map(|(s, u)| s / u)
            .collect();
        let (q1, med, q3) = quartiles(&mut ratios);
        println!(
            "| {} | {:.3} s | {:+.1}% | {:+.1}% ({:+.1}% .. {:+.1}%) |",
            config.name(),
            fastest(&seconds[i]),
            pct(fastest(&seconds[i]) / base),
            pct(med),
            pct(q1),
            pct(q3)
        );
    }
    println!();
    for (shift, runs) in costs {
        let pages: u64 = runs.iter().map(|r| r.pages).sum();
        let secs: f64 = runs.iter().map(|r| r.seconds).sum();
        let count: u64 = runs.iter().map(|r| r.runs).sum();
        let run_ns: u64 = runs.iter().map(|r| r.run_ns).sum();
        let sampled: u64 = runs.iter().map(|r| r.sampled_frames).sum();
        let reused: u64 = runs.iter().map(|r| r.reused_kernel_stacks).sum();
        println!(
            "- 1 page in {}: {:.0} page allocations/s through the kernel program ({count} runs for \
             {pages} storm pages), {:.1} ns per run including the statistics' own cost, {:.0} sampled \
             allocations/s, {:.0}% of their kernel stacks reused",
            1u64 << shift,
            count as f64 / secs,
            if count > 0 { run_ns as f64 / count as f64 } else { 0.0 },
            sampled as f64 / secs,
            if sampled > 0 { 100.0 * reused as f64 / sampled as f64 } else { 0.0 }
        );
    }
    Ok(())
}

fn pct(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

fn quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// Runs the storm; returns (seconds, pages).
fn run_storm(workload: &Path, storm: &Storm) -> Result<(f64, u64)> {
    let out = Command::new(workload)
        .args(["storm", &storm.mib.to_string(), &storm.passes.to_string()])
        .output()
        .context("running the storm")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["seconds", s, "pages", p] => Ok((s.parse()?, p.parse()?)),
        _ => bail!("unexpected storm output: {text}"),
    }
}

fn with_agent(
    memlens: &Path,
    socket: &Path,
    agent_args: &[String],
    storm: impl FnOnce() -> Result<(f64, u64)>,
) -> Result<AgentRun> {
    let mut agent = Command::new(memlens)
        .arg("--socket")
        .arg(socket)
        .arg("agent")
        .args(agent_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let status = |memlens: &Path| -> Option<Status> {
        let out = Command::new(memlens)
            .arg("--socket")
            .arg(socket)
            .args(["status", "--json"])
            .output()
            .ok()?;
        Status::parse(&String::from_utf8_lossy(&out.stdout))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Some(s) = status(memlens) {
            break s;
        }
        if Instant::now() > deadline || agent.try_wait()?.is_some() {
            stop(&mut agent);
            bail!("the agent did not start");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let result = storm();
    let after = status(memlens);
    stop(&mut agent);
    let (seconds, pages) = result?;
    let after = after.context("the agent stopped answering")?;
    Ok(AgentRun {
        seconds,
        pages,
        runs: after.runs.saturating_sub(before.runs),
        run_ns: after.run_ns.saturating_sub(before.run_ns),
        sampled_frames: after.sampled_frames.saturating_sub(before.sampled_frames),
        reused_kernel_stacks: after.reused.saturating_sub(before.reused),
    })
}

fn with_peer(storm: impl FnOnce() -> Result<(f64, u64)>) -> Result<(f64, u64)> {
    let mut peer = Command::new("bpftrace")
        // Room for every page of the storm, so the peer does the work it exists for.
        .env("BPFTRACE_MAP_KEYS_MAX", "4194304")
        .args(["-e", PEER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let stdout = peer.stdout.take().context("bpftrace stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("Attaching") => break,
            Some(Ok(_)) => {}
            _ => {
                stop(&mut peer);
                bail!("bpftrace did not attach");
            }
        }
    }
    // Give bpftrace a moment after printing, as it attaches the probes right after.
    thread::sleep(Duration::from_millis(500));
    let result = storm();
    stop(&mut peer);
    result
}

/// SIGINT, then SIGKILL after 10 s, of a child we started.
fn stop(child: &mut Child) {
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
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
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

/// The counters of `memlens status --json` the benchmark reads.
struct Status {
    runs: u64,
    run_ns: u64,
    sampled_frames: u64,
    reused: u64,
}

impl Status {
    fn parse(json: &str) -> Option<Status> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let program = v["programs"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "page_alloc_raw" || p["name"] == "page_alloc_tp")?;
        Some(Status {
            runs: program["run_count"].as_u64()?,
            run_ns: program["run_time_ns"].as_u64()?,
            sampled_frames: v["counters"]["sampled_allocs"].as_u64()?,
            reused: v["counters"]["kernel_stack_reused"].as_u64()?,
        })
    }
}
