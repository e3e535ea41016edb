//! `cargo xtask bench go-profile`: how long the agent takes to read a Go process's heap profile
//! from its memory, for a profile of 2^bits distinct stacks (every allocation sampled).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{quartiles, start_agent, stop};
use crate::util;

/// Queries timed per profile.
const QUERIES: usize = 20;

/// `cargo xtask bench go-profile`.
pub(super) fn go_profile(root: &Path, bits: &[u32]) -> Result<()> {
    let memlens = util::build_release(root)?;
    crate::setup::install_packages(&["golang-go"])?;
    let dir = std::env::temp_dir().join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let goheap = dir.join("goheap");
    util::run(
        Command::new("go")
            .current_dir(root.join("tests/workloads/goheap"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", dir.join("go-cache"))
            .args(["build", "-o"])
            .arg(&goheap),
    )?;
    let socket = dir.join("memlens.sock");
    let mut agent = start_agent(&memlens, &socket, &[])?;
    println!("## reading a Go process's heap profile (every allocation sampled)\n");
    println!("| distinct stacks | buckets read | read time, median (quartiles) | whole query (read + symbolizing 10 stacks), median |");
    println!("|---|---|---|---|");
    let result = bits.iter().try_for_each(|&b| {
        let sessions = (1u32 << b).max(64);
        // Every allocation sampled: one bucket per distinct stack.
        let mut service = Command::new(&goheap)
            .env("GOHEAP_MEMPROFILERATE", "1")
            .args([&sessions.to_string(), "4", "100000", &b.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting goheap")?;
        let mut line = String::new();
        BufReader::new(service.stdout.take().context("stdout")?).read_line(&mut line)?;
        if !line.starts_with("ready ") {
            stop(&mut service);
            bail!("goheap said {line:?}");
        }
        let pid = service.id().to_string();
        let (mut reads, mut queries, mut stacks) = (Vec::new(), Vec::new(), 0);
        for _ in 0..QUERIES {
            let started = std::time::Instant::now();
            let out = Command::new(&memlens)
                .arg("--socket")
                .arg(&socket)
                .args(["leaks", "--allocations", "--json", "--pid", &pid])
                .output()?;
            queries.push(started.elapsed().as_secs_f64());
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
            let process = &answer["allocations"]["processes"][0];
            reads.push(process["read_seconds"].as_f64().unwrap_or(0.0));
            stacks = process["stacks"].as_u64().unwrap_or(0);
        }
        stop(&mut service);
        let (q1, median, q3) = quartiles(&mut reads);
        let (_, query, _) = quartiles(&mut queries);
        println!(
            "| {} | {stacks} | {:.2} ms ({:.2} .. {:.2}) | {:.1} ms |",
            1u32 << b,
            median * 1e3,
            q1 * 1e3,
            q3 * 1e3,
            query * 1e3
        );
        Ok(())
    });
    stop(&mut agent);
    result
}
