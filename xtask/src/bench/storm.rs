//! `cargo xtask bench storm`: the page-fault storm, untraced, with the agent, and with a
//! memleak-style bpftrace peer.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{build_workload, pct, quartiles, start_agent, stop, BpfStats};
use crate::{setup, util};

/// The bpftrace peer from the issue: bcc memleak's idea on the page allocator.
const PEER: &str = "tracepoint:kmem:mm_page_alloc { @live[args->pfn] = kstack; } \
                    tracepoint:kmem:mm_page_free { delete(@live[args->pfn]); } \
                    END { clear(@live); }";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Config {
    Untraced,
    /// The agent at this sample shift and stack copy size (`--stack-copy`).
    Agent {
        shift: u32,
        stack_copy: u32,
    },
    Peer,
}

impl Config {
    fn name(self) -> String {
        match self {
            Config::Untraced => "untraced".into(),
            Config::Agent { shift, stack_copy } => format!(
                "memlens agent, 1 page in {}, {}",
                1u64 << shift,
                if stack_copy == 0 {
                    "frame pointers only".to_string()
                } else {
                    format!("stack copies of up to {} KiB", stack_copy / 1024)
                }
            ),
            Config::Peer => "bpftrace memleak-style peer".into(),
        }
    }
}

pub(super) struct Storm {
    pub(super) mib: usize,
    pub(super) passes: usize,
    /// Nested calls (256 bytes of stack each) the storm runs below.
    pub(super) depth: usize,
    /// Instead of the storm, Debian's python3 filling a dict of this many strings and a list
    /// from it: an interpreter's heap growing, a real workload among the fastest to allocate
    /// pages (210,000 a second here, against the storm's 400,000).
    pub(super) python: Option<usize>,
}

/// The python3 workload: prints what the storm prints, timing only the fill.
const PYTHON_FILL: &str = "import sys, time
n = int(sys.argv[1])
t = time.perf_counter()
d = {i: str(i) for i in range(n)}
l = [s * 2 for s in d.values()]
print(f'seconds {time.perf_counter() - t:.6f} pages 0')
";

/// A storm run with the agent, and what the agent's counters said about it.
struct AgentRun {
    seconds: f64,
    pages: u64,
    runs: u64,
    run_ns: u64,
    sampled_frames: u64,
    reused_kernel_stacks: u64,
    copies: u64,
    copy_bytes: u64,
    copy_ns: u64,
}

pub(super) fn storm(
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
    let agent = |shift: u32, stack_copy: u32| -> Vec<String> {
        let mut args = vec![
            "--sample-shift".to_string(),
            shift.to_string(),
            "--stack-copy".to_string(),
            stack_copy.to_string(),
        ];
        args.extend(agent_args.iter().cloned());
        args
    };
    let run_one = |config: Config| -> Result<f64> {
        Ok(match config {
            Config::Untraced => run_storm(&workload, storm)?.0,
            Config::Agent { shift, stack_copy } => {
                with_agent(&memlens, &socket, &agent(shift, stack_copy), || {
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
        if let Config::Agent { shift, stack_copy } = config {
            let runs: Vec<AgentRun> = (0..3)
                .map(|_| {
                    with_agent(&memlens, &socket, &agent(shift, stack_copy), || {
                        run_storm(&workload, storm)
                    })
                })
                .collect::<Result<_>>()?;
            costs.push((config, runs));
        }
    }
    drop(stats);
    let _ = std::fs::remove_dir_all(&dir);

    match storm.python {
        Some(n) => println!(
            "## python3 filling a dict of {n} strings and a list from it, {rounds} interleaved \
             rounds"
        ),
        None => println!(
            "## storm: {} MiB x {} passes per run, {} nested calls deep, {rounds} interleaved \
             rounds",
            storm.mib, storm.passes, storm.depth
        ),
    }
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
    for (config, runs) in costs {
        let pages: u64 = runs.iter().map(|r| r.pages).sum();
        let secs: f64 = runs.iter().map(|r| r.seconds).sum();
        let count: u64 = runs.iter().map(|r| r.runs).sum();
        let run_ns: u64 = runs.iter().map(|r| r.run_ns).sum();
        let sampled: u64 = runs.iter().map(|r| r.sampled_frames).sum();
        let reused: u64 = runs.iter().map(|r| r.reused_kernel_stacks).sum();
        let copies: u64 = runs.iter().map(|r| r.copies).sum();
        let copy_bytes: u64 = runs.iter().map(|r| r.copy_bytes).sum();
        let copy_ns: u64 = runs.iter().map(|r| r.copy_ns).sum();
        let per = |total: u64| {
            if copies > 0 {
                total as f64 / copies as f64
            } else {
                0.0
            }
        };
        let copying = if copies == 0 {
            String::new()
        } else {
            format!(
                "; {:.0} stack copies/s of {:.0} bytes on average ({:.1} MB/s), {:.0} ns each in \
                 the kernel program",
                copies as f64 / secs,
                per(copy_bytes),
                copy_bytes as f64 / secs / 1e6,
                per(copy_ns)
            )
        };
        println!(
            "- {}: {:.0} page allocations/s through the kernel program ({count} runs, {pages} \
             storm pages), {:.1} ns per run including the statistics' own cost, {:.0} sampled \
             allocations/s, {:.0}% of their kernel stacks reused{copying}",
            config.name(),
            count as f64 / secs,
            if count > 0 {
                run_ns as f64 / count as f64
            } else {
                0.0
            },
            sampled as f64 / secs,
            if sampled > 0 {
                100.0 * reused as f64 / sampled as f64
            } else {
                0.0
            }
        );
    }
    Ok(())
}

/// Runs the storm (or the python3 fill); returns (seconds, pages: 0 for python3).
fn run_storm(workload: &Path, storm: &Storm) -> Result<(f64, u64)> {
    let out = match storm.python {
        Some(n) => Command::new("python3")
            .args(["-c", PYTHON_FILL, &n.to_string()])
            .output(),
        None => Command::new(workload)
            .args([
                "storm",
                &storm.mib.to_string(),
                &storm.passes.to_string(),
                &storm.depth.to_string(),
            ])
            .output(),
    }
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
    let mut agent = start_agent(memlens, socket, agent_args)?;
    let status = |memlens: &Path| -> Option<Status> {
        let out = Command::new(memlens)
            .arg("--socket")
            .arg(socket)
            .args(["status", "--json"])
            .output()
            .ok()?;
        Status::parse(&String::from_utf8_lossy(&out.stdout))
    };
    let Some(before) = status(memlens) else {
        stop(&mut agent);
        bail!("the agent gives no status");
    };
    let result = storm();
    // The programs' run counts come with the agent's next refresh (every 2 s by default).
    thread::sleep(Duration::from_millis(2500));
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
        copies: after.copies.saturating_sub(before.copies),
        copy_bytes: after.copy_bytes.saturating_sub(before.copy_bytes),
        copy_ns: after.copy_ns.saturating_sub(before.copy_ns),
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

/// The counters of `memlens status --json` the benchmark reads.
struct Status {
    runs: u64,
    run_ns: u64,
    sampled_frames: u64,
    reused: u64,
    copies: u64,
    copy_bytes: u64,
    copy_ns: u64,
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
            copies: v["counters"]["stack_copies"].as_u64()?,
            copy_bytes: v["counters"]["stack_copy_bytes"].as_u64()?,
            copy_ns: v["counters"]["stack_copy_ns"].as_u64()?,
        })
    }
}
