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

mod keep;
mod report;
mod sample;
mod settings;

use std::{
    net::TcpListener,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memlens_tests::{
    join_cgroup_before_exec, node_load_bin, Agent, BpfMount, TestCgroup, Workload,
};

use crate::{
    keep::Keeper,
    report::report,
    sample::{cpu_ticks, sample, status_field, Sample},
    settings::Settings,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
    // The agent runs within the DaemonSet's memory limit, its BPF maps charged there too.
    let agent_cgroup = TestCgroup::new("node-agent");
    agent_cgroup.set_limit(s.agent_limit_mib << 20);
    let mut keeper = Keeper::from_env();
    let started = Instant::now();
    let mut agent = Agent::start_in(Some(&agent_cgroup), &agent_args);
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
            keeper.keep(&agent, "first-agent");
            let (took, log) = agent.stop();
            eprintln!("first agent stopped in {:.1} s", took.as_secs_f64());
            keeper.keep_text("first-agent", "log", &log);
            agent = Agent::start_in(Some(&agent_cgroup), &agent_args);
            last = (Instant::now(), cpu_ticks(agent.pid()));
            restarted = true;
            restart_at_s = started.elapsed().as_secs();
            eprintln!("agent restarted at {restart_at_s} s");
        }
        if Instant::now() >= next_sample {
            let x = sample(&agent, metrics, &db, started, &mut last);
            eprintln!("{}", x.row());
            let before = samples.last().map_or(0, |p: &Sample| p.rss_kib);
            keeper.on_sample(&agent, x.at_s, before, x.rss_kib);
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
    keeper.keep(&agent, "second-agent");
    if let Some(dir) = keeper.dir() {
        eprintln!(
            "the agents' status, logs and memory maps: {}",
            dir.display()
        );
    }
    let agent_oom_kills = agent_cgroup.oom_kills();
    let agent_cgroup_peak = agent_cgroup.peak_bytes();
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
    match agent_cgroup_peak {
        Some(peak) => println!(
            "| agent's cgroup (limit {} MiB): peak, OOM kills | {} MiB, {agent_oom_kills} | no OOM kill |",
            s.agent_limit_mib,
            peak >> 20
        ),
        None => println!(
            "| agent's cgroup (limit {} MiB): OOM kills | {agent_oom_kills} | no OOM kill |",
            s.agent_limit_mib
        ),
    }
    if agent_oom_kills > 0 {
        eprintln!(
            "the agent was OOM-killed within its {} MiB limit",
            s.agent_limit_mib
        );
        std::process::exit(1);
    }
    if log.contains("panicked") {
        eprintln!("the agent panicked:\n{log}");
        std::process::exit(1);
    }
}
