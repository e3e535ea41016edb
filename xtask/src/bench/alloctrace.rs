//! `cargo xtask bench alloc-trace`: what an allocator trace costs the traced process. A
//! malloc/free loop and a redis-server filled by redis-benchmark, untraced and traced,
//! interleaved round by round; the loop also once more after each trace, to show that nothing
//! is left behind; and the cost per call the trace measured beside the cost the loop paid.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{quartiles, ratio_table, start_agent, stop};
use crate::util;

/// The loop's calls per run, untraced and traced (a traced call is about 1,000 times dearer).
const UNTRACED_PAIRS: u64 = 2_000_000;
const TRACED_PAIRS: u64 = 20_000;
/// SETs per redis-benchmark run.
const SETS: u32 = 20_000;

struct MallocLoop {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl MallocLoop {
    fn start(program: &Path) -> Result<MallocLoop> {
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the malloc loop")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the malloc loop said {line:?}");
        }
        Ok(MallocLoop {
            child,
            stdin,
            stdout,
        })
    }

    /// Nanoseconds per malloc/free pair over `pairs` of them.
    fn run(&mut self, pairs: u64) -> Result<f64> {
        writeln!(self.stdin, "run {pairs}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let seconds: f64 = line.trim().parse().context("the loop's time")?;
        Ok(seconds * 1e9 / pairs as f64)
    }
}

/// A trace of `pid` for up to a minute, started through the CLI; stopped on drop.
struct Tracing(Child);

impl Tracing {
    fn start(memlens: &Path, socket: &Path, pid: u32) -> Result<Tracing> {
        let mut child = Command::new(memlens)
            .arg("--socket")
            .arg(socket)
            .args([
                "leaks",
                "--allocations",
                "--json",
                "--pid",
                &pid.to_string(),
            ])
            .args(["--for", "60s", "--budget", "16"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a trace")?;
        // The CLI prints the trace's first line once its probes are attached.
        let mut first = String::new();
        BufReader::new(child.stderr.as_mut().context("stderr")?).read_line(&mut first)?;
        if !first.starts_with("trace ") {
            bail!("the trace did not start: {first}");
        }
        Ok(Tracing(child))
    }

    /// Stops the trace (the CLI stops it on SIGINT) and returns its JSON answer.
    fn finish(mut self) -> Result<serde_json::Value> {
        stop(&mut self.0);
        let mut out = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().context("stdout")?, &mut out)?;
        serde_json::from_str(&out).context("the trace's answer")
    }
}

/// Seconds redis-benchmark takes for `SETS` SETs of new random keys.
fn fill_redis(port: u16) -> Result<f64> {
    let started = Instant::now();
    util::run(
        Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "set",
                "-d",
                "256",
            ])
            .args(["-r", "100000000", "-n", &SETS.to_string(), "-c", "8", "-q"])
            .stdout(Stdio::null()),
    )?;
    Ok(started.elapsed().as_secs_f64())
}

/// `cargo xtask bench alloc-trace`.
pub(super) fn alloc_trace(root: &Path, rounds: usize) -> Result<()> {
    crate::setup::install_packages(&["gcc", "redis-server", "redis-tools"])?;
    let memlens = util::build_release(root)?;
    let dir = Path::new("/var/tmp").join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("mallocloop");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&program)
            .arg(root.join("tests/workloads/mallocloop.c")),
    )?;
    let socket = dir.join("memlens.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent = start_agent(
        &memlens,
        &socket,
        &["--db".into(), dir.join("history.db").display().to_string()],
    )?;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut malloc = MallocLoop::start(&program)?;
        // ns per pair: untraced, traced, untraced after the trace.
        let (mut before, mut traced, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let mut calibrated = Vec::new();
        // Seconds per redis-benchmark run: [untraced, traced].
        let mut redis_runs = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            before.push(malloc.run(UNTRACED_PAIRS)?);
            let trace = Tracing::start(&memlens, &socket, malloc.child.id())?;
            traced.push(malloc.run(TRACED_PAIRS)?);
            let answer = trace.finish()?;
            let status = &answer["trace"];
            calibrated.push(
                status["alloc_call_cost_us"].as_f64().unwrap_or(f64::NAN) * 1000.0
                    + status["free_call_cost_us"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            );
            after.push(malloc.run(UNTRACED_PAIRS)?);

            let untraced_first = round % 2 == 0;
            for traced_run in [!untraced_first, untraced_first] {
                if traced_run {
                    let trace = Tracing::start(&memlens, &socket, redis.id())?;
                    redis_runs[1].push(fill_redis(port)?);
                    trace.finish()?;
                } else {
                    redis_runs[0].push(fill_redis(port)?);
                }
            }
            eprintln!(
                "round {}/{rounds}: loop {:.1} ns/pair untraced, {:.0} traced (calibrated {:.0}), \
                 {:.1} after; redis x{:.2}",
                round + 1,
                before[round],
                traced[round],
                calibrated[round],
                after[round],
                redis_runs[1][round] / redis_runs[0][round]
            );
        }
        let (_, b, _) = quartiles(&mut before);
        let (tq1, t, tq3) = quartiles(&mut traced);
        let (_, a, _) = quartiles(&mut after);
        let (cq1, c, cq3) = quartiles(&mut calibrated);
        println!("## allocator trace: {rounds} interleaved rounds");
        println!();
        println!(
            "- malloc(64)/free loop (gcc -O2, glibc): {b:.1} ns per pair untraced, {t:.0} ns \
             traced (quartiles {tq1:.0} .. {tq3:.0}): {:.2} us added per pair; the trace's own \
             measure before it started: {:.2} us (quartiles {:.2} .. {:.2}); {a:.1} ns per pair \
             after each trace (nothing left attached)",
            (t - b) / 1000.0,
            c / 1000.0,
            cq1 / 1000.0,
            cq3 / 1000.0
        );
        println!();
        ratio_table(&[(
            "redis-benchmark, 20,000 SETs of new keys (redis-server, jemalloc)",
            &redis_runs,
        )]);
        Ok(())
    })();
    stop(&mut redis);
    stop(&mut agent);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
