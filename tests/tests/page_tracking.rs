//! Acceptance of page tracking per memory cgroup: real programs, real kernel, real cgroups,
//! compared with the kernel's own `memory.stat`.
//!
//! The accuracy checks run the agent at 1 page in 64 (`ACCURACY`), where the estimator's 95%
//! bound for these sizes (±6.1% for 256 MiB, ±8.7% for 128 MiB) sits inside the 10% asked; at the
//! default 1 in 128 the bound for 128 MiB is ±12.3%, and the errors measured there are in
//! docs/design.md ("The estimator and its error").

use std::time::{Duration, Instant};

use memlens_tests::{
    assert_in_interval, held, patience, rel_diff, Agent, TestCgroup, Workload, MIB,
};

/// Agent flags of the accuracy checks.
const ACCURACY: &[&str] = &["--sample-shift", "6"];
/// The sibling check's: its smaller cgroup holds 128 MiB of 4 KiB pages, whose estimate at 1 in
/// 64 has a 95% bound of 8.7%, too close to the check's 10% (a CI run failed by chance at +10.8%,
/// 2.4 standard errors); at 1 in 32 the bound is 6.1% and 10% is 3.2 standard errors away.
const SIBLING_ACCURACY: &[&str] = &["--sample-shift", "5"];

/// Waits until the agent's estimate reflects the workload: a census taken after `since`.
fn settled_row(agent: &Agent, cgroup: &TestCgroup, min_anon: u64) -> serde_json::Value {
    let started = Instant::now();
    let mut last = None;
    // Two censuses after the estimate first reaches most of the expected size.
    while started.elapsed() < patience(Duration::from_secs(20)) {
        let row = agent.row(&cgroup.path);
        if let Some(r) = &row {
            if held(r, "anon_bytes") >= min_anon {
                agent.wait_censuses(2);
                return agent.row(&cgroup.path).expect("row still there");
            }
        }
        last = row;
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "estimate never reached {min_anon} bytes; last row: {last:?}\n{}",
        agent.log()
    );
}

#[test]
fn anon_memory_is_attributed_to_its_cgroup_and_released() {
    let agent = Agent::start(ACCURACY);
    let cgroup = TestCgroup::new("anon256");
    let mut workload = Workload::start(&cgroup, &["anon", "256"]);
    workload.expect_line("ready");

    let row = settled_row(&agent, &cgroup, 200 * MIB);
    let truth = cgroup.anon_bytes();
    let reported = row["anon_bytes"].as_u64().expect("anon_bytes");
    let estimate = held(&row, "anon_bytes");
    let tracked = held(&row, "tracked_bytes");
    eprintln!(
        "memory.stat anon {} MiB; top anon {} MiB; eBPF held anon {:.1} MiB (tracked {:.1} MiB, ±{:.1} MiB)",
        truth / MIB,
        reported / MIB,
        estimate as f64 / MIB as f64,
        tracked as f64 / MIB as f64,
        held(&row, "error95_bytes") as f64 / MIB as f64
    );
    assert!(
        truth >= 256 * MIB,
        "the kernel charged {truth} bytes of anon, expected 256 MiB"
    );
    assert!(
        rel_diff(reported, truth) <= 0.05,
        "top anon {reported} vs memory.stat {truth}"
    );
    assert!(
        rel_diff(estimate, truth) <= 0.10,
        "eBPF estimate {estimate} vs memory.stat {truth}"
    );
    // The workload started after the agent: its pages were seen being allocated.
    assert!(
        tracked as f64 >= 0.9 * estimate as f64,
        "tracked {tracked} of {estimate}"
    );

    // Freed: the estimate falls back within 10 s.
    workload.send("free");
    workload.expect_line("freed");
    let freed_at = Instant::now();
    let row = agent
        .wait_row(&cgroup.path, Duration::from_secs(10), |r| {
            held(r, "anon_bytes") < 16 * MIB
        })
        .expect("cgroup still listed");
    let left = held(&row, "anon_bytes");
    assert!(
        left < 16 * MIB,
        "10 s after free the estimate is still {left} bytes"
    );
    eprintln!(
        "estimate fell to {} KiB in {:?}",
        left / 1024,
        freed_at.elapsed()
    );

    // Exited and removed: the cgroup disappears from top.
    workload.stop();
    cgroup.remove();
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    while agent.row(&cgroup.path).is_some() {
        assert!(
            Instant::now() < deadline,
            "removed cgroup {} still listed after 10 s",
            cgroup.path
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// At the default refresh and CPU budget, a workload started soon after the agent is listed
/// and estimated within seconds: the agent's start-up (every process's mappings, the first
/// symbolization) and the workload's first allocations are bursts its budget absorbs, not a
/// reason to stretch the refresh to a minute (as one cycle's measure once did).
#[test]
fn a_workload_started_after_the_agent_is_estimated_within_seconds() {
    let agent = Agent::start(&["--refresh", "2s", "--cpu-budget", "0.02"]);
    // Past the agent's start-up and its first few refreshes.
    std::thread::sleep(Duration::from_secs(10));
    let cgroup = TestCgroup::new("fresh64");
    let mut workload = Workload::start(&cgroup, &["anon", "64"]);
    workload.expect_line("ready");
    let ready = Instant::now();
    let row = agent.wait_row(&cgroup.path, Duration::from_secs(10), |r| {
        held(r, "anon_bytes") >= 32 * MIB
    });
    let status = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(
        row.as_ref()
            .is_some_and(|r| held(r, "anon_bytes") >= 32 * MIB),
        "64 MiB not estimated {:?} after the workload was ready: {row:?}\n{status}",
        ready.elapsed()
    );
}

/// Small cgroups at a coarse rate: 1, 2 and 4 MiB at 1 in 512 are 0.5 to 2 sampled frames'
/// worth, so the estimate is often 0. Its stated interval must still hold the kernel's figure:
/// an interval from the estimate's own variance had no width at all with no frame seen.
#[test]
fn a_small_cgroups_interval_holds_its_memory() {
    let agent = Agent::start(&["--sample-shift", "9"]);
    let sizes = ["1", "2", "4"];
    let cgroups: Vec<TestCgroup> = sizes
        .iter()
        .map(|mib| TestCgroup::new(&format!("small{mib}")))
        .collect();
    let mut workloads: Vec<Workload> = cgroups
        .iter()
        .zip(sizes)
        .map(|(cgroup, mib)| Workload::start(cgroup, &["anon", mib]))
        .collect();
    for workload in &mut workloads {
        workload.expect_line("ready");
    }
    agent.wait_censuses(2);
    let top = agent.top();
    for cgroup in &cgroups {
        let row = top["cgroups"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["path"] == cgroup.path.as_str()))
            .unwrap_or_else(|| panic!("{} not listed: {top}", cgroup.path));
        let truth = row["anon_bytes"].as_u64().expect("anon_bytes");
        let (estimate, error) = (held(row, "anon_bytes"), held(row, "error95_bytes"));
        eprintln!(
            "{}: memory.stat anon {truth}, estimate {estimate} ± {error} ({} frames)",
            cgroup.path,
            held(row, "frames")
        );
        assert!(truth >= MIB, "{row}");
        assert_in_interval(&cgroup.path, estimate, error, truth);
    }
}

/// A census past its frame budget (a large host's; here 409,601 frames at 1 in 16 on 24 GiB, read
/// 65,536 at a time): a workload's new pages are read first, since their records changed, so the
/// estimate keeps up; its freed pages, which no probe sees, within one sweep.
#[test]
fn a_census_past_its_frame_budget_keeps_up_and_sweeps_frees() {
    let agent = Agent::start(&["--sample-shift", "4", "--census-frames", "65536"]);
    let cgroup = TestCgroup::new("sweep256");
    let mut workload = Workload::start(&cgroup, &["anon", "256"]);
    workload.expect_line("ready");
    let ready = Instant::now();
    let row = settled_row(&agent, &cgroup, 200 * MIB);
    let truth = cgroup.anon_bytes();
    let (estimate, error) = (held(&row, "anon_bytes"), held(&row, "error95_bytes"));
    eprintln!(
        "{:?} after ready: memory.stat anon {truth}, estimate {estimate} ± {error}",
        ready.elapsed()
    );
    assert_in_interval(&cgroup.path, estimate, error, truth);
    let status = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("65536 frames read of"), "{status}");

    workload.send("free");
    workload.expect_line("freed");
    let freed = Instant::now();
    let row = agent
        .wait_row(&cgroup.path, Duration::from_secs(30), |r| {
            held(r, "anon_bytes") < 16 * MIB
        })
        .expect("cgroup still listed");
    eprintln!(
        "estimate fell to {} KiB {:?} after the free",
        held(&row, "anon_bytes") / 1024,
        freed.elapsed()
    );
    assert!(held(&row, "anon_bytes") < 16 * MIB, "after the free: {row}");
}

#[test]
fn estimate_falls_back_when_the_workload_exits() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("exit64");
    let mut workload = Workload::start(&cgroup, &["anon", "64"]);
    workload.expect_line("ready");
    // At the default rate 64 MiB is 128 sampled frames (95% bound ±17%): only check it is seen.
    let row = settled_row(&agent, &cgroup, 32 * MIB);
    assert!(held(&row, "anon_bytes") >= cgroup.anon_bytes() / 2, "{row}");
    workload.send("exit");
    let row = agent
        .wait_row(&cgroup.path, Duration::from_secs(10), |r| {
            held(r, "anon_bytes") < 4 * MIB
        })
        .expect("cgroup still listed");
    assert!(held(&row, "anon_bytes") < 4 * MIB, "after exit: {row}");
}

#[test]
fn transparent_huge_pages_are_counted_whole() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("thp256");
    let mut workload = Workload::start(&cgroup, &["anon-thp", "256"]);
    workload.expect_line("ready");
    let thp = cgroup.stat("rss_huge", "anon_thp");
    assert!(
        thp >= 200 * MIB,
        "the kernel gave only {thp} bytes of THP; is THP disabled?"
    );
    let row = settled_row(&agent, &cgroup, 200 * MIB);
    let truth = cgroup.anon_bytes();
    let estimate = held(&row, "anon_bytes");
    eprintln!(
        "THP workload: memory.stat anon {:.1} MiB (huge {:.1} MiB), eBPF held anon {:.1} MiB",
        truth as f64 / MIB as f64,
        thp as f64 / MIB as f64,
        estimate as f64 / MIB as f64
    );
    // A 2 MiB page holds exactly 2^(9 - shift) sampled frames: no sampling error there.
    assert!(
        rel_diff(estimate, truth) <= 0.03,
        "estimate {estimate} vs memory.stat {truth}"
    );
    let _ = workload.pid();
}

#[test]
fn sibling_cgroups_are_each_attributed_their_own_pages() {
    let agent = Agent::start(SIBLING_ACCURACY);
    let small = TestCgroup::new("anon128");
    let large = TestCgroup::new("anon384");
    let mut w_small = Workload::start(&small, &["anon", "128"]);
    let mut w_large = Workload::start(&large, &["anon", "384"]);
    w_small.expect_line("ready");
    w_large.expect_line("ready");

    let _ = settled_row(&agent, &large, 300 * MIB);
    let top = agent.top();
    let rows = top["cgroups"].as_array().expect("cgroups");
    for (cgroup, mib) in [(&small, 128), (&large, 384)] {
        let row = rows
            .iter()
            .find(|r| r["path"] == cgroup.path.as_str())
            .unwrap_or_else(|| panic!("{} not in top", cgroup.path));
        assert_eq!(
            row["id"].as_u64(),
            Some(cgroup.id()),
            "id is the directory inode"
        );
        let truth = cgroup.anon_bytes();
        let estimate = held(row, "anon_bytes");
        eprintln!(
            "{mib} MiB workload: memory.stat anon {:.1} MiB, eBPF held anon {:.1} MiB",
            truth as f64 / MIB as f64,
            estimate as f64 / MIB as f64
        );
        assert!(truth >= mib * MIB, "kernel charged only {truth}");
        assert!(
            rel_diff(estimate, truth) <= 0.10,
            "{}: estimate {estimate} vs memory.stat {truth}",
            cgroup.path
        );
    }
    drop((w_small, w_large));
}

#[test]
fn top_json_has_stable_fields_and_the_kernel_working_set() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("fields");
    std::fs::write(
        cgroup.dir.join(if cgroup.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        }),
        "536870912",
    )
    .expect("set limit");
    let mut workload = Workload::start(&cgroup, &["anon", "32"]);
    workload.expect_line("ready");
    let row = settled_row(&agent, &cgroup, 24 * MIB);
    for field in [
        "id",
        "path",
        "name",
        "usage_bytes",
        "anon_bytes",
        "file_bytes",
        "active_file_bytes",
        "inactive_file_bytes",
        "kernel_bytes",
        "working_set_bytes",
        "limit_bytes",
        "held",
    ] {
        assert!(row.get(field).is_some(), "field {field} missing: {row}");
    }
    assert_eq!(row["limit_bytes"].as_u64(), Some(512 * MIB));
    // The kernel's working set as kubelet computes it (usage - inactive file), read beside the
    // agent's answer while the workload holds still.
    let usage_file = if cgroup.v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let kernel_working_set = || {
        let usage: u64 = std::fs::read_to_string(cgroup.dir.join(usage_file))
            .expect("usage")
            .trim()
            .parse()
            .expect("usage is a number");
        usage.saturating_sub(cgroup.stat("inactive_file", "inactive_file"))
    };
    let before = kernel_working_set();
    let row = agent.row(&cgroup.path).expect("row");
    let after = kernel_working_set();
    let reported = row["working_set_bytes"].as_u64().expect("working set");
    let kernel = (before + after) / 2;
    assert!(
        reported >= 32 * MIB && rel_diff(reported, kernel) <= 0.05,
        "memlens says {reported}, the kernel {before}..{after}"
    );
    // The cgroup by the path the shell shows (`/sys/fs/cgroup/...`), as by its hierarchy path.
    let shell_path = cgroup.dir.to_str().expect("path");
    let by_dir = agent.cli(&["top", "--json", "--cgroup", shell_path]);
    let by_dir: serde_json::Value = serde_json::from_slice(&by_dir.stdout).unwrap_or_else(|e| {
        panic!(
            "top --cgroup {shell_path}: {e}: {}",
            String::from_utf8_lossy(&by_dir.stderr)
        )
    });
    let rows = by_dir["cgroups"].as_array().expect("cgroups");
    assert_eq!(rows.len(), 1, "{by_dir}");
    assert_eq!(rows[0]["path"], cgroup.path.as_str());
    for command in ["leaks", "cache"] {
        let out = agent.cli(&[command, "--cgroup", shell_path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("no memory cgroup"),
            "{command} --cgroup {shell_path}: {err}"
        );
    }
    let table = agent.cli(&["top", "--cgroup", &cgroup.path]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("WORKING SET") && text.contains("MiB"),
        "{text}"
    );
}
