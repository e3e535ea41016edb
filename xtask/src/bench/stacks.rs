//! `cargo xtask bench stacks`: the agent with 100,000+ distinct stacks tracked.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{rss_kib, stop};
use crate::util;

/// `cargo xtask bench stacks`.
pub(super) fn many_stacks(root: &Path, depth: u32) -> Result<()> {
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
            "--pin-dir",
            "none",
            "--sample-shift",
            "0",
            "--max-sample-entries",
            "16777216",
        ])
        .args(["--stack-entries", &(stacks * 4).max(65_536).to_string()])
        .args(["--max-stacks", &(stacks * 2).to_string(), "--refresh", "5s"])
        .args(["--cpu-budget", "0"])
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
