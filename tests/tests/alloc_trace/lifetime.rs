//! A trace outlives neither its processes nor its agent: results kept across a restart, no
//! probe left behind a killed agent.

use std::time::{Duration, Instant};

use memlens_tests::{assert_near, heap_reuse_bin, stack_names, Agent, TestCgroup, Workload};

use crate::{entries, held_by, leaked, patched_libc_bytes, trace, wait_attached};

#[test]
fn a_traced_process_that_exits_ends_the_trace_with_its_results_kept_across_a_restart() {
    memlens_tests::require_root();
    let cgroup = TestCgroup::new("alloctrace-exit");
    let db = tempfile::tempdir().expect("tempdir");
    let db_path = db.path().join("history.db").display().to_string();
    let agent = Agent::start(&["--db", &db_path]);
    // 30 steps at 10 a second (7.5 MiB kept) once the trace is attached, then it is told to
    // exit.
    let mut workload = Workload::start_program(&cgroup, &heap_reuse_bin(), &["30", "10", "wait"]);
    workload.expect_line("ready");
    let pid = workload.pid();
    let answer = std::thread::scope(|s| {
        let tracing = s.spawn(|| trace(&agent, "60s", &["--pid", &pid.to_string()]));
        wait_attached(pid, "/libc.so");
        workload.send("go");
        let kept = leaked(&mut workload);
        workload.send("exit");
        assert!(workload.wait().success());
        let answer = tracing.join().expect("the trace");
        (answer, kept)
    });
    let (answer, kept) = answer;
    let status = &answer["trace"];
    eprintln!(
        "ended {} after {} s; probes cost {:.2} us per allocating call, {:.2} us per free",
        status["end"],
        status["elapsed_seconds"],
        status["alloc_call_cost_us"].as_f64().unwrap_or(0.0),
        status["free_call_cost_us"].as_f64().unwrap_or(0.0)
    );
    assert_eq!(status["end"], "processes_exited", "{status}");
    assert!(
        status["elapsed_seconds"].as_f64().expect("elapsed")
            < memlens_tests::patience(Duration::from_secs(20)).as_secs_f64(),
        "{status}"
    );
    assert_eq!(status["processes"][0]["exited"], true, "{status}");
    // What it sampled before it exited is kept, and named.
    let names = stack_names(&entries(&answer)[0]);
    assert!(names.iter().any(|n| n == "remember_request"), "{names:?}");
    assert_near(
        "the leak's held bytes at exit",
        held_by(&answer, "remember_request"),
        kept,
        0.25,
    );
    // `memlens status` names the last trace.
    let status_text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(
        status_text
            .lines()
            .any(|l| l.starts_with("allocator traces") && l.contains("ProcessesExited")),
        "{status_text}"
    );
    // The results outlive the agent (and the process): asked again by id after a restart.
    let id = status["id"].as_u64().expect("id").to_string();
    drop(agent);
    let agent = Agent::start(&["--db", &db_path]);
    let again = agent.json(&["leaks", "--allocations", "--json", "--trace", &id]);
    assert_eq!(again["trace"]["end"], "processes_exited", "{again}");
    assert_eq!(
        held_by(&again, "remember_request"),
        held_by(&answer, "remember_request")
    );
    let out = agent.cli(&["leaks", "--allocations", "--trace", "999"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no trace 999"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_probe_is_left_when_the_agent_is_killed_mid_trace() {
    memlens_tests::require_root();
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("alloctrace-kill");
    let mut workload = Workload::start_program(&cgroup, &heap_reuse_bin(), &["600", "10", "0"]);
    workload.expect_line("ready");
    let pid = workload.pid();
    assert_eq!(patched_libc_bytes(pid), 0, "no probe before the trace");
    let mut cli = agent.cli_child(&[
        "leaks",
        "--allocations",
        "--pid",
        &pid.to_string(),
        "--for",
        "120s",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut patched = 0;
    while Instant::now() < deadline && patched == 0 {
        std::thread::sleep(Duration::from_millis(200));
        patched = patched_libc_bytes(pid);
    }
    eprintln!("{patched} bytes of libc's code patched while traced");
    assert!(patched > 0, "the trace never attached");
    agent.kill_hard();
    let _ = cli.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && patched_libc_bytes(pid) != 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(patched_libc_bytes(pid), 0, "a probe outlived the agent");
    workload.send("exit");
}
