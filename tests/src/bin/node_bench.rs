//! `memlens-node-bench` (run by `cargo xtask bench node`): a busy node simulated on this
//! machine, bounded in time and cleaned up, and what the agent costs on it over time.
//!
//! The node: `--cgroups` memory cgroups (each a child of the bench's own), `--services` long-lived
//! processes in each (`tests/workloads/nodeload.c serve`: memory held under 2^17 distinct call
//! paths, part of it replaced every second, files written and read again), short-lived processes
//! started and exiting all along, a process killed by its cgroup's limit now and then, a
//! Prometheus-style scrape of `/metrics` and a `top` query every 15 s, a `leaks` query every
//! minute. The agent starts on the busy node (its start-up is measured there) and is restarted
//! halfway (kernel records kept). Every 15 s: the agent's RSS, peak RSS and heap, CPU, the kernel
//! memory of its BPF maps (fdinfo), census time, stacks, SQLite size and drops.
//!
//! Needs root; everything it starts is stopped and every cgroup removed at the end.

use std::{
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memlens_tests::{
    join_cgroup_before_exec, node_load_bin, Agent, BpfMount, TestCgroup, Workload,
};
use serde_json::Value;

/// The bench's settings (`--name value`).
struct Settings {
    minutes: u64,
    cgroups: usize,
    services: usize,
    held_kib: u64,
    churn_kib: u64,
    files: usize,
    file_kib: u64,
    short_lived: usize,
    oom_every: Duration,
    /// Restart the agent halfway (kernel records kept).
    restart: bool,
}

impl Settings {
    fn parse() -> Result<Settings, String> {
        let mut s = Settings {
            minutes: 20,
            cgroups: 1000,
            services: 2,
            held_kib: 4096,
            churn_kib: 64,
            files: 5,
            file_kib: 64,
            short_lived: 3000,
            oom_every: Duration::from_secs(120),
            restart: true,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        for pair in args.chunks(2) {
            let [name, value] = pair else {
                return Err(format!("{} has no value", pair[0]));
            };
            let n: u64 = value.parse().map_err(|e| format!("{name} {value}: {e}"))?;
            let count = usize::try_from(n).map_err(|e| e.to_string())?;
            match name.as_str() {
                "--minutes" => s.minutes = n,
                "--cgroups" => s.cgroups = count,
                "--services" => s.services = count,
                "--held-kib" => s.held_kib = n,
                "--churn-kib" => s.churn_kib = n,
                "--files" => s.files = count,
                "--file-kib" => s.file_kib = n,
                "--short-lived" => s.short_lived = count,
                "--oom-every" => s.oom_every = Duration::from_secs(n.max(1)),
                "--restart" => s.restart = n != 0,
                other => return Err(format!("unknown setting {other}")),
            }
        }
        Ok(s)
    }
}

/// One sample of the agent.
#[derive(Clone, Default)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    peak_kib: u64,
    anon_kib: u64,
    cpu_pct: f64,
    maps_kib: u64,
    census_ms: u64,
    /// Seconds between refreshes (stretched to the CPU budget).
    cycle_s: f64,
    stacks: u64,
    kernel_stacks: u64,
    scrape_ms: f64,
    top_ms: f64,
    db_kib: u64,
    drops: u64,
}

impl Sample {
    /// The sample as a row of the report's table.
    fn row(&self) -> String {
        format!(
            "| {} s | {} MiB | {} MiB | {} MiB | {:.1}% | {:.1} MiB | {} ms ({:.1} s) | {} ({}) | \
             {:.0} ms | {:.0} ms | {:.1} MiB | {} |",
            self.at_s,
            self.rss_kib / 1024,
            self.peak_kib / 1024,
            self.anon_kib / 1024,
            self.cpu_pct,
            self.maps_kib as f64 / 1024.0,
            self.census_ms,
            self.cycle_s,
            self.stacks,
            self.kernel_stacks,
            self.scrape_ms,
            self.top_ms,
            self.db_kib as f64 / 1024.0,
            self.drops
        )
    }
}

fn status_field(path: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{path}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the comm.
    field(11) + field(12)
}

/// Kernel memory of the BPF maps `pid` holds open (their fdinfo's `memlock`), in KiB.
fn map_kib(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut bytes = 0;
    for fd in fds.flatten() {
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    bytes / 1024
}

/// Milliseconds an HTTP GET of `path` takes to answer in full over `stream`.
fn timed_get(mut stream: impl std::io::Read + std::io::Write, path: &str) -> f64 {
    let started = Instant::now();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return f64::NAN;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if !answer.starts_with(b"HTTP/1.1 200") {
        return f64::NAN;
    }
    started.elapsed().as_secs_f64() * 1000.0
}

/// The first number in a status line's detail after `after`.
fn number_after(detail: &str, after: &str) -> u64 {
    detail
        .split_once(after)
        .map_or("", |(_, rest)| rest)
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn capability<'a>(status: &'a Value, name: &str) -> &'a str {
    status["capabilities"]
        .as_array()
        .and_then(|caps| caps.iter().find(|c| c["name"] == name))
        .and_then(|c| c["detail"].as_str())
        .unwrap_or("")
}

fn sample(
    agent: &Agent,
    metrics: u16,
    db: &Path,
    started: Instant,
    last: &mut (Instant, u64),
) -> Sample {
    let pid = agent.pid();
    let scrape_ms =
        TcpStream::connect(("127.0.0.1", metrics)).map_or(f64::NAN, |s| timed_get(s, "/metrics"));
    let top_ms = UnixStream::connect(&agent.socket).map_or(f64::NAN, |s| timed_get(s, "/v1/top"));
    let status = agent.json(&["status", "--json"]);
    let census = capability(&status, "page census");
    let census_ms = census
        .rsplit_once(" ms")
        .and_then(|(left, _)| left.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    let ticks = cpu_ticks(pid);
    let now = Instant::now();
    let cpu_pct = (ticks.saturating_sub(last.1)) as f64
        / 100.0
        / now.duration_since(last.0).as_secs_f64().max(0.001)
        * 100.0;
    *last = (now, ticks);
    let db_kib = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len() / 1024)
        .sum();
    Sample {
        at_s: started.elapsed().as_secs(),
        rss_kib: status_field(pid, "VmRSS:"),
        peak_kib: status_field(pid, "VmHWM:"),
        anon_kib: status_field(pid, "RssAnon:"),
        cpu_pct,
        maps_kib: map_kib(pid),
        census_ms,
        cycle_s: capability(&status, "refresh")
            .strip_prefix("every ")
            .and_then(|r| r.split(' ').next()?.trim_end_matches('s').parse().ok())
            .unwrap_or(2.0),
        stacks: number_after(capability(&status, "leak attribution"), ""),
        kernel_stacks: number_after(capability(&status, "sampling"), "stack slots ("),
        scrape_ms,
        top_ms,
        db_kib,
        drops: number_after(capability(&status, "drops"), ""),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let settings = match Settings::parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memlens-node-bench: {e}");
            std::process::exit(2);
        }
    };
    let s = &settings;
    let nodeload = node_load_bin();
    let files_dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let db = state.path().join("history.db");

    eprintln!(
        "node: {} cgroups x {} services ({} KiB held, {} KiB/s replaced, {} files of {} KiB each)",
        s.cgroups, s.services, s.held_kib, s.churn_kib, s.files, s.file_kib
    );
    let setup = Instant::now();
    let cgroups: Vec<TestCgroup> = (0..s.cgroups)
        .map(|i| TestCgroup::new(&format!("node{i}")))
        .collect();
    let mut services = Vec::new();
    for (i, cgroup) in cgroups.iter().enumerate() {
        for j in 0..s.services {
            let dir = files_dir.path().join(format!("c{i}s{j}"));
            std::fs::create_dir_all(&dir).expect("files dir");
            let seed = (i * s.services + j + 1).to_string();
            services.push(Workload::start_program(
                cgroup,
                &nodeload,
                &[
                    "serve",
                    &seed,
                    &s.held_kib.to_string(),
                    &s.churn_kib.to_string(),
                    &dir.display().to_string(),
                    &s.files.to_string(),
                    &s.file_kib.to_string(),
                ],
            ));
        }
    }
    for w in &mut services {
        w.expect_line("ready");
    }
    eprintln!(
        "{} services ready in {:.0} s",
        services.len(),
        setup.elapsed().as_secs_f64()
    );

    let pins = BpfMount::new();
    let pin_dir = pins.pin_dir().display().to_string();
    let db_arg = db.display().to_string();
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let agent_args = [
        "--refresh",
        "2s",
        "--cpu-budget",
        "0.02",
        "--pin-dir",
        pin_dir.as_str(),
        "--db",
        db_arg.as_str(),
        "--metrics-addr",
        metrics_addr.as_str(),
    ];
    let started = Instant::now();
    let mut agent = Agent::start(&agent_args);
    let mut start_peaks = Vec::new();
    let mut last = (Instant::now(), cpu_ticks(agent.pid()));
    let oom_cgroup = TestCgroup::new("node-oom");
    oom_cgroup.set_limit(64 << 20);
    let mut ooms = 0;
    let mut oom: Option<Workload> = None;
    let mut short_started = 0usize;
    let mut leaks_ms = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let duration = Duration::from_secs(s.minutes * 60);
    let short_every = duration.as_secs_f64() / s.short_lived.max(1) as f64;
    let mut next_sample = Instant::now();
    let mut next_oom = Instant::now() + s.oom_every / 2;
    let mut next_leaks = Instant::now() + Duration::from_secs(60);
    let mut restarted = false;
    let mut restart_at_s = u64::MAX;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    while started.elapsed() < duration {
        // Short-lived processes, on schedule.
        let due = (started.elapsed().as_secs_f64() / short_every) as usize;
        while short_started < due.min(s.short_lived) {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let cgroup = &cgroups[(rng >> 33) as usize % cgroups.len()];
            let mut cmd = Command::new(&nodeload);
            cmd.args(["short", &short_started.to_string(), "256"]);
            join_cgroup_before_exec(&mut cmd, cgroup.dir.join("cgroup.procs"));
            if let Ok(mut child) = cmd.spawn() {
                thread::spawn(move || child.wait());
            }
            short_started += 1;
        }
        if Instant::now() >= next_oom {
            if let Some(mut w) = oom.take() {
                w.wait();
            }
            oom = Some(Workload::start_program(&oom_cgroup, &nodeload, &["oom"]));
            ooms += 1;
            next_oom += s.oom_every;
        }
        if Instant::now() >= next_leaks {
            let t = Instant::now();
            let out = agent.cli(&["leaks", "--top", "10", "--json"]);
            if out.status.success() {
                leaks_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            next_leaks += Duration::from_secs(60);
        }
        if s.restart && !restarted && started.elapsed() >= duration / 2 {
            let peak = status_field(agent.pid(), "VmHWM:");
            start_peaks.push(("first agent, whole first half", peak));
            drop(agent);
            agent = Agent::start(&agent_args);
            last = (Instant::now(), cpu_ticks(agent.pid()));
            restarted = true;
            restart_at_s = started.elapsed().as_secs();
            eprintln!("agent restarted at {restart_at_s} s");
        }
        if Instant::now() >= next_sample {
            let x = sample(&agent, metrics, &db, started, &mut last);
            eprintln!("{}", x.row());
            samples.push(x);
            next_sample += Duration::from_secs(15);
        }
        thread::sleep(Duration::from_millis(100));
    }
    start_peaks.push((
        "second agent (restarted on the busy node)",
        status_field(agent.pid(), "VmHWM:"),
    ));
    let log = agent.log();
    drop(agent);
    drop(oom);
    drop(services);
    report(
        s,
        &samples,
        restart_at_s,
        &start_peaks,
        &leaks_ms,
        short_started,
        ooms,
    );
    if log.contains("panicked") {
        eprintln!("the agent panicked:\n{log}");
        std::process::exit(1);
    }
}

fn report(
    s: &Settings,
    samples: &[Sample],
    restart_at_s: u64,
    peaks: &[(&str, u64)],
    leaks_ms: &[f64],
    short_lived: usize,
    ooms: usize,
) {
    println!(
        "## Busy node: {} cgroups, {} long-lived and {short_lived} short-lived processes, {ooms} \
         OOM kills, {} min",
        s.cgroups,
        s.cgroups * s.services,
        s.minutes
    );
    println!();
    println!("| time | RSS | peak RSS | heap | CPU | BPF maps | census (every) | stacks (kernel map) | /metrics | top | SQLite | drops |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in samples.iter().step_by(4) {
        println!("{}", x.row());
    }
    println!();
    // Steady: from a minute after each start of the agent.
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.at_s >= 60 && !(restart_at_s..restart_at_s + 60).contains(&x.at_s))
        .collect();
    let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { steady.iter().map(|x| f(x)).collect() };
    let rss = col(&|x| x.rss_kib as f64 / 1024.0);
    let cpu = col(&|x| x.cpu_pct);
    let all = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { samples.iter().map(f).collect() };
    let scrape = all(&|x| x.scrape_ms);
    let top = all(&|x| x.top_ms);
    let maps = all(&|x| x.maps_kib as f64 / 1024.0);
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| agent RSS, steady (median, max) | {:.0} MiB, {:.0} MiB | <= 100 MiB |",
        percentile(&rss, 0.5),
        percentile(&rss, 1.0)
    );
    for (what, peak) in peaks {
        println!("| peak RSS, {what} | {} MiB | <= 150 MiB |", peak / 1024);
    }
    println!(
        "| BPF maps (max) | {:.1} MiB | <= 32 MiB |",
        percentile(&maps, 1.0)
    );
    println!(
        "| agent CPU, steady (median, p90) | {:.2}%, {:.2}% of one core | <= 2% |",
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.9)
    );
    println!(
        "| /metrics (p50, p99) | {:.0} ms, {:.0} ms | p99 <= 100 ms |",
        percentile(&scrape, 0.5),
        percentile(&scrape, 0.99)
    );
    println!(
        "| top (p50, p99) | {:.0} ms, {:.0} ms | p99 <= 50 ms |",
        percentile(&top, 0.5),
        percentile(&top, 0.99)
    );
    println!(
        "| `leaks --top 10` (CLI, p50, max) | {:.0} ms, {:.0} ms | |",
        percentile(leaks_ms, 0.5),
        percentile(leaks_ms, 1.0)
    );
    if let Some(x) = samples.last() {
        println!(
            "| at the end: census, stacks, SQLite, drops | {} ms, {}, {:.1} MiB, {} | no drops |",
            x.census_ms,
            x.stacks,
            x.db_kib as f64 / 1024.0,
            x.drops
        );
    }
}
