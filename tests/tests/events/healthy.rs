//! The false-positive suite: memory that grows for healthy reasons raises no event. Six
//! workloads run side by side for longer than the detector needs to decide (a sample a second,
//! a run every 2 s, ten samples to a trend), under a horizon of 10 hours, so that any growth
//! taken for a leak would be forecast past its limit:
//! - a cache of random keys warming to a plateau (anon, churn in the same heap);
//! - a Go service whose session cache fills and whose collector then holds the heap;
//! - a process that allocates one large buffer at start;
//! - a log writer with no limit (the finding: its page cache grew toward the node's memory and
//!   raised file-cache pressure);
//! - the same log writer under a 128 MiB limit, whose reclaim keeps up;
//! - a build job reading its headers again and again and writing objects once, under a limit.

use std::time::{Duration, Instant};

use memlens_tests::{go_bin, TestCgroup, Workload, MIB};
use serde_json::Value;

use crate::{
    harness::{json, setup_with},
    SERIAL,
};

/// The suite's windows: a 3-minute lookback and a 10-hour horizon.
const CONFIG: &str = r#"
[leak]
interval = "2s"
lookback = "3m"
horizon = "10h"
min_samples = 10

[restarts]
interval = "2s"
window = "2m"
"#;

/// How long the workloads run: longer than the warming ones take to settle (about a minute) and
/// than the lookback's first half.
const RUN: Duration = Duration::from_secs(120);

/// One healthy workload: its process, its cgroup (removed after the process ends), what it is.
struct Healthy {
    what: &'static str,
    process: Workload,
    cgroup: TestCgroup,
}

#[test]
fn healthy_growth_raises_no_event() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup_with(CONFIG);
    let agent = setup.agent();
    let files = setup.dir.path();
    let log = files.join("unlimited.log").display().to_string();
    let limited_log = files.join("limited.log").display().to_string();
    let build = files.join("build");
    std::fs::create_dir_all(&build).expect("build directory");
    let build = build.display().to_string();
    let gosettle = go_bin("gosettle", false);
    let start = |what: &'static str, name: &str, limit: Option<u64>, args: &[&str]| {
        let cgroup = TestCgroup::new(name);
        if let Some(limit) = limit {
            cgroup.set_limit(limit);
        }
        let process = Workload::start(&cgroup, args);
        Healthy {
            what,
            cgroup,
            process,
        }
    };
    let mut healthy = vec![
        start(
            "cache warming to a plateau (150 MiB, limit 256 MiB)",
            "warm-cache",
            Some(256 * MIB),
            &["warmcache", "150", "60"],
        ),
        {
            let cgroup = TestCgroup::new("go-settle");
            cgroup.set_limit(384 * MIB);
            let process = Workload::start_program(&cgroup, &gosettle, &["96", "20"]);
            Healthy {
                what: "Go heap settling (96 MiB of sessions, limit 384 MiB)",
                cgroup,
                process,
            }
        },
        start(
            "one 200 MiB buffer at start (limit 256 MiB)",
            "big-buffer",
            Some(256 * MIB),
            &["anon", "200"],
        ),
        start(
            "log writer, no limit (4 MiB/s)",
            "log-unlimited",
            None,
            &["appendlog", &log, "600", "4"],
        ),
        start(
            "log writer, limit 128 MiB (4 MiB/s)",
            "log-limited",
            Some(128 * MIB),
            &["appendlog", &limited_log, "600", "4"],
        ),
        start(
            "build job, limit 128 MiB (3 MiB/s of objects)",
            "build-job",
            Some(128 * MIB),
            &["buildjob", &build, "400", "3"],
        ),
    ];
    let subjects: Vec<String> = healthy.iter().map(|h| h.cgroup.path.clone()).collect();
    let parent = subjects[0]
        .rsplit_once('/')
        .map_or_else(String::new, |(p, _)| p.to_string());
    let ours = |subject: &str| subjects.iter().any(|s| s == subject) || subject == parent;
    let started = Instant::now();
    let mut peaks = vec![0u64; healthy.len()];
    while started.elapsed() < RUN {
        std::thread::sleep(Duration::from_secs(5));
        let top = json(&agent, &["top", "--json", "--limit", "0"]);
        for (h, peak) in healthy.iter().zip(peaks.iter_mut()) {
            if let Some(row) = rows(&top).find(|r| r["path"] == h.cgroup.path.as_str()) {
                *peak = (*peak).max(row["working_set_bytes"].as_u64().unwrap_or(0));
            }
        }
        let raised = our_events(&agent, &ours);
        assert!(
            raised.is_empty(),
            "healthy growth raised events after {:.0} s: {raised:#?}",
            started.elapsed().as_secs_f64()
        );
    }
    let report = json(&agent, &["events", "check", "--json"]);
    let held_back: Vec<&Value> = report["held_back"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|h| h["subject"].as_str().is_some_and(&ours))
                .collect()
        })
        .unwrap_or_default();
    for (h, peak) in healthy.iter().zip(&peaks) {
        let why = held_back
            .iter()
            .find(|b| b["subject"] == h.cgroup.path.as_str())
            .map_or("quiet", |b| b["reason"].as_str().unwrap_or("?"));
        eprintln!(
            "{}: working set peaked at {} MiB, no event ({why})",
            h.what,
            peak / MIB
        );
    }
    assert!(our_events(&agent, &ours).is_empty());
    // The limited log writer is at its limit: why that is no event is said.
    let limited = &healthy[4].cgroup.path;
    assert!(
        held_back.iter().any(|b| b["subject"] == limited.as_str()
            && b["reason"]
                .as_str()
                .is_some_and(|r| r.contains("reclaims on demand"))),
        "{report:#}"
    );
    for h in &mut healthy {
        h.process.send("exit");
    }
}

fn rows(top: &Value) -> impl Iterator<Item = &Value> {
    top["cgroups"].as_array().into_iter().flatten()
}

/// Every event (any kind, any status) about one of our cgroups.
fn our_events(agent: &memlens_tests::Agent, ours: &dyn Fn(&str) -> bool) -> Vec<Value> {
    json(agent, &["events", "list", "--json", "--limit", "1000"])["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["subject"].as_str().is_some_and(ours))
        .cloned()
        .collect()
}
