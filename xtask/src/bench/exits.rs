//! `cargo xtask bench exits`: what the lifecycle probes and their records cost a host that starts
//! and ends processes fast (a crash loop, a build), and how long the event engine and a
//! Prometheus scrape take on this host.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use super::{quartiles, ratio_table, start_agent, stop, BpfStats};
use crate::util;

/// Runs `count` processes that exit with `status` one after the other; seconds taken.
fn storm(count: usize, status: u8) -> Result<f64> {
    let program = if status == 0 {
        "/bin/true"
    } else {
        "/bin/false"
    };
    let started = Instant::now();
    for _ in 0..count {
        Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {program}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds to GET `/metrics` from `port` on loopback.
fn scrape(port: u16) -> Result<f64> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        bail!(
            "/metrics answered {}",
            answer.lines().next().unwrap_or_default()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `cargo xtask bench exits`.
pub(super) fn exits(root: &Path, rounds: usize, processes: usize) -> Result<()> {
    let memlens = util::build_release(root)?;
    let dir = Path::new("/var/tmp").join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("memlens.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args: Vec<String> = vec![
        "--db".into(),
        dir.join("history.db").display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    let result = (|| -> Result<()> {
        // [status][untraced, agent] seconds per round.
        let mut runs = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for round in 0..rounds {
            for i in [round % 2, 1 - round % 2] {
                let agent = if i == 1 {
                    Some(start_agent(&memlens, &socket, &args)?)
                } else {
                    None
                };
                for (s, status) in [0u8, 1].into_iter().enumerate() {
                    runs[s][i].push(storm(processes, status)?);
                }
                if let Some(mut agent) = agent {
                    stop(&mut agent);
                }
            }
            eprintln!(
                "round {}/{rounds}: exit 0 x{:.3}, exit 1 x{:.3}",
                round + 1,
                runs[0][1][round] / runs[0][0][round],
                runs[1][1][round] / runs[1][0][round]
            );
        }
        // The probe's own cost, then the engine and a scrape, with the agent up.
        let stats = BpfStats::enable()?;
        let mut agent = start_agent(&memlens, &socket, &args)?;
        let stormed = storm(processes, 1)?;
        let cli = |what: &[&str]| {
            Command::new(&memlens)
                .arg("--socket")
                .arg(&socket)
                .args(what)
                .output()
        };
        let status = cli(&["status", "--json"])?;
        let mut checks = Vec::new();
        let mut scrapes = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            if !cli(&["events", "check", "--json"])?.status.success() {
                bail!("memlens events check failed");
            }
            checks.push(started.elapsed().as_secs_f64());
            scrapes.push(scrape(port)?);
        }
        stop(&mut agent);
        drop(stats);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        println!("## process exits: {processes} processes one after another, {rounds} interleaved rounds");
        println!();
        for program in status["programs"].as_array().into_iter().flatten() {
            let name = program["name"].as_str().unwrap_or("?");
            let runs = program["run_count"].as_u64().unwrap_or(0);
            if name == "process_exit" && runs > 0 {
                let ns = program["run_time_ns"].as_u64().unwrap_or(0);
                println!(
                    "- {name}: {runs} runs while {processes} processes exited with status 1 in {stormed:.2} s: {:.0} ns per run including the statistics' own cost",
                    ns as f64 / runs as f64
                );
            }
        }
        let (_, check, _) = quartiles(&mut checks);
        let (_, scraped, _) = quartiles(&mut scrapes);
        println!(
            "- `memlens events check` (both detectors, every cgroup of this host): {:.0} ms median of 5; a `/metrics` scrape: {:.0} ms median of 5",
            check * 1000.0,
            scraped * 1000.0
        );
        println!();
        ratio_table(&[
            ("exit 0 (counted, not kept)", &runs[0]),
            ("exit 1 (recorded)", &runs[1]),
        ]);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
