//! The event engine against real workloads. True positives: a steady leak forecast before its
//! OOM kill (across a SIGKILL of the agent), a log on tmpfs filling a limited cgroup's working
//! set forecast before its OOM kill (file-cache pressure, not a leak), a supervisor restarting
//! an OOM-killed workload, with every kill recorded from the kernel's own OOM event. False
//! positives (none allowed): healthy growth, in `healthy`.

use std::{path::Path, sync::Mutex, time::Duration};

use memlens_tests::{go_bin, leak_bin, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

mod harness;
mod healthy;
mod names;
mod oom;

use harness::{events, history, lifecycle, names_function, poll, setup};

/// One workload at a time: the forecasts are timed against real OOM kills.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_steady_leak_is_forecast_before_its_oom_kill_across_an_agent_restart() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("leak-forecast");
    cgroup.set_limit(256 * MIB);
    let agent = setup.agent();
    // 4 MiB a second into a 256 MiB limit: the OOM killer comes after about a minute.
    let mut leak = Workload::start_program(&cgroup, &leak_bin(), &["400", "4"]);
    let first = poll(Duration::from_secs(45), "leak event", || {
        events(&agent, "leak_suspected", &cgroup.path).pop()
    });
    let id = first["id"].as_u64().expect("id");
    let evidence = &first["evidence"];
    assert_eq!(first["status"], "open");
    assert_eq!(
        evidence["limit_bytes"].as_u64(),
        Some(256 * MIB),
        "{evidence}"
    );
    let anon = evidence["anon_growth_bytes_per_hour"]
        .as_f64()
        .expect("anon growth");
    let file = evidence["file_growth_bytes_per_hour"]
        .as_f64()
        .expect("file growth");
    assert!(anon > file, "{evidence}");
    // A native program has no profile of its own: the evidence says how to trace it.
    assert!(
        evidence["allocation_trace_hint"]
            .as_str()
            .is_some_and(|h| h.contains("--allocations") && h.contains(&cgroup.path)),
        "{evidence}"
    );
    assert!(
        evidence["top_processes"][0]["pid"].as_u64() == Some(u64::from(leak.pid())),
        "top process: {}",
        evidence["top_processes"]
    );
    // The evidence names the leaking function (now, or at a later check before the kill); a
    // trace of the process's allocator (started by the engine) names it at a later check.
    let mut named = names_function(&evidence["top_stacks"], "leak_slowly");
    let mut traced = names_function(&evidence["allocation_stacks"], "leak_slowly");

    // SIGKILL mid-leak: the event and the history outlive the agent, once.
    let show = agent.cli(&["events", "show", &id.to_string()]);
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.status.success() && shown.contains("limit"), "{shown}");
    let history_before = history(&agent, &cgroup.path);
    agent.kill_hard();
    let agent = setup.agent();
    let history_after = history(&agent, &cgroup.path);
    for sample in &history_before {
        assert!(history_after.contains(sample), "history lost: {sample}");
    }
    let after = events(&agent, "leak_suspected", &cgroup.path);
    assert_eq!(after.len(), 1, "duplicated or lost: {after:?}");
    assert_eq!(
        (after[0]["id"].as_u64(), &after[0]["status"]),
        (Some(id), &Value::from("open"))
    );
    assert_eq!(after[0]["first_seen_unix_ms"], first["first_seen_unix_ms"]);

    let oom = poll(Duration::from_secs(120), "the leak's OOM kill", || {
        if !named || !traced {
            let now = events(&agent, "leak_suspected", &cgroup.path);
            named |= now
                .iter()
                .any(|e| names_function(&e["evidence"]["top_stacks"], "leak_slowly"));
            traced |= now
                .iter()
                .any(|e| names_function(&e["evidence"]["allocation_stacks"], "leak_slowly"));
        }
        oom_kill_of(&agent, &cgroup.path, &mut leak)
    });
    assert!(named, "no leak evidence named leak_slowly");
    assert!(traced, "no allocator trace named leak_slowly");
    time_to_limit_holds(evidence, &oom);
    assert!(oom["oom_killed"] == true && oom["signal"] == 9, "{oom}");
    assert!(
        names_function(&oom["evidence"]["top_stacks"], "leak_slowly"),
        "memory at death: {}",
        oom["evidence"]
    );

    // The leak is gone with its process: the event recovers, with its duration.
    let recovered = poll(Duration::from_secs(30), "recovery", || {
        events(&agent, "leak_suspected", &cgroup.path)
            .into_iter()
            .find(|e| e["id"].as_u64() == Some(id) && e["status"] == "recovered")
    });
    assert!(
        recovered["duration_seconds"].as_f64() > Some(10.0),
        "{recovered}"
    );
    assert_eq!(events(&agent, "leak_suspected", &cgroup.path).len(), 1);
    let export = agent.cli(&["events", "export", &id.to_string()]);
    let exported: Value = serde_json::from_slice(&export.stdout).expect("export is JSON");
    assert_eq!(exported["id"].as_u64(), Some(id));
}

#[test]
fn a_go_leak_event_names_the_function_from_the_runtimes_own_profile() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("go-leak-event");
    cgroup.set_limit(256 * MIB);
    let agent = setup.agent();
    // 8 sessions of 256 KiB a second (2 MiB/s) beside a churn: the page-level answer names the
    // churn for much of it, the runtime's profile the sessions. Their 300 MiB would reach the
    // limit after about two minutes; the test ends them once the event is raised.
    let mut service =
        Workload::start_program(&cgroup, &go_bin("goheap", false), &["1200", "256", "8"]);
    let event = poll(
        Duration::from_secs(90),
        "a leak event naming the sessions",
        || {
            events(&agent, "leak_suspected", &cgroup.path)
                .pop()
                .filter(|e| {
                    names_function(&e["evidence"]["allocation_stacks"], "main.serveSession")
                })
        },
    );
    let first = &event["evidence"]["allocation_stacks"][0];
    eprintln!(
        "first allocation stack: {} bytes in use, {}",
        first["inuse_bytes"], first["user_stack"][0]["function"]
    );
    assert!(names_function(first, "main.serveSession"), "{first:#}");
    assert_eq!(first["pid"], service.pid(), "{first:#}");
    let shown = agent.cli(&["events", "show", &event["id"].to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("own allocation profiles") && shown.contains("main.serveSession"),
        "{shown}"
    );
    service.send("exit");
}

/// The kernel's OOM kill of `process` in `cgroup`, once recorded; the process is then reaped
/// (it must have died of SIGKILL).
fn oom_kill_of(agent: &Agent, cgroup: &str, process: &mut Workload) -> Option<Value> {
    let kill = lifecycle(agent, cgroup)
        .into_iter()
        .find(|r| r["kind"] == "oom_kill" && r["pid"].as_u64() == Some(u64::from(process.pid())))?;
    let status = process.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    Some(kill)
}

/// The event's time to the limit, from when it was evaluated, is within 20% of the OOM kill.
fn time_to_limit_holds(evidence: &Value, oom: &Value) {
    let evaluated_at = evidence["evaluated_at_unix_ms"]
        .as_u64()
        .expect("evaluated");
    let forecast_ms = evidence["time_to_limit_seconds"]
        .as_f64()
        .expect("time to limit")
        * 1000.0;
    let actual_ms = (oom["ts_ms"].as_u64().expect("ts") - evaluated_at) as f64;
    let error = (forecast_ms - actual_ms).abs() / actual_ms;
    eprintln!(
        "raised {:.1} s before the OOM kill at {} MiB of working set growing {:.2} MiB/s ({} samples), forecast {:.1} s: error {:.1}%",
        actual_ms / 1000.0,
        evidence["measured_bytes"].as_u64().unwrap_or(0) / MIB,
        evidence["growth_bytes_per_hour"].as_f64().unwrap_or(0.0) / 3600.0 / MIB as f64,
        evidence["samples"],
        forecast_ms / 1000.0,
        error * 100.0
    );
    assert!(error <= 0.20, "time to limit off by {:.0}%", error * 100.0);
}

/// Removes a file at the end of a test, even a failed one: a tmpfs file holds memory.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A log on tmpfs (a Kubernetes `emptyDir` of medium `Memory`): page cache reclaim cannot drop,
/// filling a limited cgroup's working set until the writer is OOM-killed. File-cache pressure,
/// not a leak, forecast to the kill.
#[test]
fn a_log_on_tmpfs_filling_a_limited_cgroup_is_file_cache_pressure_before_its_oom_kill() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("tmpfs-log");
    cgroup.set_limit(256 * MIB);
    let agent = setup.agent();
    let log = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/dev/shm/memlens-test-{}-service.log",
        std::process::id()
    )));
    let log_arg = log.0.display().to_string();
    let mut writer = Workload::start(&cgroup, &["appendlog", &log_arg, "400", "3"]);
    let event = poll(Duration::from_secs(75), "file cache event", || {
        assert!(
            events(&agent, "leak_suspected", &cgroup.path).is_empty(),
            "a growing log raised a leak"
        );
        events(&agent, "file_cache_pressure", &cgroup.path).pop()
    });
    let evidence = &event["evidence"];
    assert_eq!(evidence["measure"], "working_set", "{evidence}");
    assert!(
        evidence["file_growth_bytes_per_hour"].as_f64()
            > evidence["anon_growth_bytes_per_hour"].as_f64(),
        "{evidence}"
    );
    // Pages of tmpfs files are not seen by the page-cache probes (shmem has its own path into
    // the page cache): the files, when any, are printed, not required.
    let files: Vec<&str> = evidence["top_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .collect();
    eprintln!("top files: {files:?}; why: {}", evidence["reason"]);
    let oom = poll(Duration::from_secs(120), "the writer's OOM kill", || {
        oom_kill_of(&agent, &cgroup.path, &mut writer)
    });
    time_to_limit_holds(evidence, &oom);
    assert_eq!(events(&agent, "leak_suspected", &cgroup.path).len(), 0);
}

/// A cgroup reading a file larger than its limit again and again: reclaim evicts the pages the
/// next pass reads back in (the kernel's `workingset_refault_file`). File-cache pressure with no
/// growth at all: the working set is flat at the limit.
#[test]
fn a_file_read_again_and_again_past_its_limit_is_thrashing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("thrash");
    cgroup.set_limit(32 * MIB);
    let refaults_counted = std::fs::read_to_string(cgroup.dir.join("memory.stat"))
        .is_ok_and(|stat| stat.contains("workingset_refault"));
    let agent = setup.agent();
    let data = setup.dir.path().join("dataset");
    let script = format!(
        "dd if=/dev/zero of={data} bs=1M count=48 status=none && echo ready && \
         while :; do cat {data} > /dev/null; sleep 0.5; done",
        data = data.display()
    );
    let mut reader = Workload::start_program(&cgroup, Path::new("/bin/sh"), &["-c", &script]);
    reader.expect_line("ready");
    if !refaults_counted {
        eprintln!("this kernel counts no refaults in memory.stat: nothing to tell thrashing by");
        return;
    }
    let event = poll(Duration::from_secs(60), "file cache event", || {
        events(&agent, "file_cache_pressure", &cgroup.path).pop()
    });
    let evidence = &event["evidence"];
    eprintln!("{}", event["summary"]);
    assert!(
        evidence["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("reclaim cannot keep up")),
        "{evidence}"
    );
    assert!(
        evidence["reclaim"]["refaulted_bytes"].as_u64() > Some(32 * MIB),
        "{evidence}"
    );
    assert!(events(&agent, "leak_suspected", &cgroup.path).is_empty());
}
