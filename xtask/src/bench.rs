//! `cargo xtask bench`: overhead measured side by side, interleaved in one run (this machine kind
//! is noisy: about ±15% between runs, so only ratios within one round are compared, and medians
//! of those ratios reported).

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
    /// Page-fault storm (map, touch, unmap anonymous memory): untraced, with the agent, and with
    /// a memleak-style bpftrace peer, interleaved.
    Storm {
        /// Interleaved rounds (each runs every configuration once).
        #[arg(long, default_value_t = 12)]
        rounds: usize,
        /// MiB mapped and touched per storm pass.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Storm passes per run.
        #[arg(long, default_value_t = 2)]
        passes: usize,
        /// The agent's --sample-shift.
        #[arg(long, default_value_t = 6)]
        sample_shift: u32,
        /// Leave out the bpftrace peer.
        #[arg(long)]
        no_peer: bool,
        /// Further flags for `memlens agent` (e.g. `--agent-arg=--refresh=1h`).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
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
            let mut args = vec!["--sample-shift".to_string(), sample_shift.to_string()];
            args.extend(agent_args);
            storm(root, rounds, mib, passes, sample_shift, &args, !no_peer)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Untraced,
    Agent,
    Peer,
}

struct AgentRun {
    seconds: f64,
    pages: u64,
    runs: u64,
    run_ns: u64,
    sampled_frames: u64,
}

fn storm(
    root: &Path,
    rounds: usize,
    mib: usize,
    passes: usize,
    shift: u32,
    agent_args: &[String],
    peer: bool,
) -> Result<()> {
    if peer {
        setup::install_packages(&["bpftrace"])?;
    }
    let memlens = util::build_release(root)?;
    util::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "memlens-tests",
        "--bin",
        "memlens-workload",
    ]))?;
    let workload = root.join("target/release/memlens-workload");
    let dir = std::env::temp_dir().join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("memlens.sock");

    let mut configs = vec![Config::Untraced, Config::Agent];
    if peer {
        configs.push(Config::Peer);
    }
    let mut agent_ratios = Vec::new();
    let mut peer_ratios = Vec::new();
    let mut agent_runs: Vec<AgentRun> = Vec::new();
    let mut untraced_seconds = Vec::new();
    for round in 0..rounds {
        let mut order = configs.clone();
        order.rotate_left(round % configs.len());
        let mut times = [0.0f64; 3];
        for config in order {
            let seconds = match config {
                Config::Untraced => run_storm(&workload, mib, passes)?.0,
                Config::Agent => {
                    with_agent(&memlens, &socket, agent_args, || {
                        run_storm(&workload, mib, passes)
                    })?
                    .seconds
                }
                Config::Peer => with_peer(|| run_storm(&workload, mib, passes))?.0,
            };
            times[config as usize] = seconds;
        }
        untraced_seconds.push(times[0]);
        agent_ratios.push(times[1] / times[0]);
        if peer {
            peer_ratios.push(times[2] / times[0]);
        }
        eprintln!(
            "round {}/{rounds}: untraced {:.3} s, agent x{:.3}{}",
            round + 1,
            times[0],
            times[1] / times[0],
            if peer {
                format!(", bpftrace x{:.3}", times[2] / times[0])
            } else {
                String::new()
            }
        );
    }
    // Program cost from the kernel's statistics, in separate runs: measuring costs two clock
    // reads per program run, which must not inflate the ratios above.
    let stats = BpfStats::enable()?;
    for _ in 0..3 {
        agent_runs.push(with_agent(&memlens, &socket, agent_args, || {
            run_storm(&workload, mib, passes)
        })?);
    }
    drop(stats);
    let _ = std::fs::remove_dir_all(&dir);

    let pages: u64 = agent_runs.iter().map(|r| r.pages).sum();
    let seconds: f64 = agent_runs.iter().map(|r| r.seconds).sum();
    let runs: u64 = agent_runs.iter().map(|r| r.runs).sum();
    let run_ns: u64 = agent_runs.iter().map(|r| r.run_ns).sum();
    let sampled: u64 = agent_runs.iter().map(|r| r.sampled_frames).sum();
    println!("## storm: {mib} MiB x {passes} passes per run, {rounds} interleaved rounds, sample 1 in {}", 1u64 << shift);
    println!();
    println!("| configuration | added time (median of per-round ratios) | quartiles |");
    println!("|---|---|---|");
    println!(
        "| untraced | {:.3} s per run (median) | |",
        median(&mut untraced_seconds.clone())
    );
    let (q1, med, q3) = quartiles(&mut agent_ratios);
    println!(
        "| memlens agent | {:+.1}% | {:+.1}% .. {:+.1}% |",
        pct(med),
        pct(q1),
        pct(q3)
    );
    if peer {
        let (q1, med, q3) = quartiles(&mut peer_ratios);
        println!(
            "| bpftrace memleak-style peer | {:+.1}% | {:+.1}% .. {:+.1}% |",
            pct(med),
            pct(q1),
            pct(q3)
        );
    }
    println!();
    println!(
        "agent: {:.0} page allocations/s handled by the kernel program ({} runs for {} storm pages), \
         {:.1} ns per run (kernel.bpf_stats_enabled), {:.0} sampled frames/s",
        runs as f64 / seconds,
        runs,
        pages,
        if runs > 0 { run_ns as f64 / runs as f64 } else { 0.0 },
        sampled as f64 / seconds
    );
    Ok(())
}

fn pct(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

fn median(v: &mut [f64]) -> f64 {
    quartiles(v).1
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
fn run_storm(workload: &Path, mib: usize, passes: usize) -> Result<(f64, u64)> {
    let out = Command::new(workload)
        .args(["storm", &mib.to_string(), &passes.to_string()])
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
            sampled_frames: v["counters"]["sampled_frames"].as_u64()?,
        })
    }
}
