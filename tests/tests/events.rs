//! The event engine against real workloads: a steady leak forecast before its OOM kill (across
//! a SIGKILL of the agent), a growing log that is page cache and not a leak, and a supervisor
//! restarting an OOM-killed workload, with every kill recorded from the kernel's own OOM event.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use memlens_tests::{go_bin, leak_bin, patience, workload_bin, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

/// One workload at a time: the forecasts are timed against real OOM kills.
static SERIAL: Mutex<()> = Mutex::new(());

/// Windows shrunk from hours to minutes, detectors every 2 s.
const CONFIG: &str = r#"
[leak]
interval = "2s"
lookback = "3m"
horizon = "5m"
min_samples = 10

[restarts]
interval = "2s"
window = "2m"
min_restarts = 2

[events]
silence = "5s"
"#;

struct Setup {
    dir: tempfile::TempDir,
    flags: Vec<String>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("memlens.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let flags = vec![
        "--db".to_string(),
        dir.path().join("history.db").display().to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "--history-interval".to_string(),
        "1s".to_string(),
        "--retention".to_string(),
        "10m".to_string(),
    ];
    Setup { dir, flags }
}

impl Setup {
    fn agent(&self) -> Agent {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        Agent::start(&flags)
    }
}

fn json(agent: &Agent, args: &[&str]) -> Value {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "memlens {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).expect("JSON answer")
}

/// Events of `kind` about `subject`, newest first.
fn events(agent: &Agent, kind: &str, subject: &str) -> Vec<Value> {
    json(agent, &["events", "list", "--kind", kind, "--json"])["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["subject"] == subject)
        .cloned()
        .collect()
}

fn lifecycle(agent: &Agent, cgroup: &str) -> Vec<Value> {
    json(
        agent,
        &[
            "lifecycle",
            "--cgroup",
            cgroup,
            "--since",
            "10m",
            "--limit",
            "1000",
            "--json",
        ],
    )["records"]
        .as_array()
        .expect("records")
        .clone()
}

fn history(agent: &Agent, cgroup: &str) -> Vec<Value> {
    json(
        agent,
        &[
            "history", "--cgroup", cgroup, "--since", "10m", "--limit", "10000", "--json",
        ],
    )["samples"]
        .as_array()
        .expect("samples")
        .clone()
}

fn names_function(value: &Value, function: &str) -> bool {
    value.to_string().contains(function)
}

/// Polls `probe` until it finds something, for `timeout` stretched by the slowdown.
fn poll<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let timeout = patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(500));
    }
}

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
    let evaluated_at = evidence["evaluated_at_unix_ms"]
        .as_u64()
        .expect("evaluated");
    let forecast_ms = evidence["time_to_limit_seconds"]
        .as_f64()
        .expect("time to limit")
        * 1000.0;
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
        lifecycle(&agent, &cgroup.path)
            .into_iter()
            .find(|r| r["kind"] == "oom_kill" && r["pid"].as_u64() == Some(u64::from(leak.pid())))
    });
    let status = leak.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    assert!(named, "no leak evidence named leak_slowly");
    assert!(traced, "no allocator trace named leak_slowly");
    let actual_ms = (oom["ts_ms"].as_u64().expect("ts") - evaluated_at) as f64;
    let error = (forecast_ms - actual_ms).abs() / actual_ms;
    eprintln!(
        "raised {:.1} s before the OOM kill at {} MiB growing {:.2} MiB/s ({} samples), forecast {:.1} s: error {:.1}%",
        actual_ms / 1000.0,
        evidence["usage_bytes"].as_u64().unwrap_or(0) / MIB,
        evidence["growth_bytes_per_hour"].as_f64().unwrap_or(0.0) / 3600.0 / MIB as f64,
        evidence["samples"],
        forecast_ms / 1000.0,
        error * 100.0
    );
    assert!(error <= 0.20, "time to limit off by {:.0}%", error * 100.0);
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
    cgroup.set_limit(512 * MIB);
    let agent = setup.agent();
    // 8 sessions of 256 KiB a second (2 MiB/s) beside a churn: the page-level answer names the
    // churn for much of it, the runtime's profile the sessions.
    let mut service =
        Workload::start_program(&cgroup, &go_bin("goheap", false), &["400", "256", "8"]);
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

#[test]
fn a_growing_log_is_file_cache_pressure_not_a_leak() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("log-growth");
    cgroup.set_limit(256 * MIB);
    let agent = setup.agent();
    let log = setup.dir.path().join("service.log");
    let log_arg = log.display().to_string();
    let mut writer = Workload::start(&cgroup, &["appendlog", &log_arg, "200", "4"]);
    let event = poll(Duration::from_secs(60), "file cache event", || {
        assert!(
            events(&agent, "leak_suspected", &cgroup.path).is_empty(),
            "a growing log raised a leak"
        );
        events(&agent, "file_cache_pressure", &cgroup.path).pop()
    });
    let evidence = &event["evidence"];
    let files: Vec<&str> = evidence["top_files"]
        .as_array()
        .expect("top files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(files.first(), Some(&log_arg.as_str()), "{evidence}");
    assert!(
        evidence["file_growth_bytes_per_hour"].as_f64()
            > evidence["anon_growth_bytes_per_hour"].as_f64(),
        "{evidence}"
    );
    writer.expect_line("written");
    // Checked on demand too: still no leak.
    let report = json(&agent, &["events", "check", "--json"]);
    assert!(!report.to_string().contains("leak_suspected"), "{report}");
    writer.send("exit");
}

/// The kernel's count of OOM kills in the cgroup (`memory.oom_control` on v1, `memory.events`
/// on v2).
fn kernel_oom_kills(cgroup: &TestCgroup) -> u64 {
    let file = if cgroup.v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = std::fs::read_to_string(cgroup.dir.join(file)).expect("OOM counter file");
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_kill line in {file}: {text}"))
}

#[test]
fn an_oom_kill_is_recorded_with_its_cgroup() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("oom");
    cgroup.set_limit(64 * MIB);
    let agent = setup.agent();
    let mut workload = Workload::start(&cgroup, &["anon", "200"]);
    let pid = workload.pid();
    let status = workload.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the workload was not killed: {status}"
    );
    assert_eq!(
        kernel_oom_kills(&cgroup),
        1,
        "the kernel counted no OOM kill"
    );

    let kill = poll(Duration::from_secs(20), "the OOM kill record", || {
        lifecycle(&agent, &cgroup.path)
            .into_iter()
            .find(|r| r["pid"] == pid && r["kind"] == "oom_kill")
    });
    let rss = kill["anon_rss_bytes"].as_u64().expect("victim's anon RSS");
    eprintln!(
        "OOM kill of pid {pid} recorded in {} (id {}), victim anon RSS {:.1} MiB, signal {}; \
         the kernel's oom_kill count 1",
        kill["cgroup_path"],
        kill["cgroup_id"],
        rss as f64 / MIB as f64,
        kill["signal"]
    );
    assert_eq!(kill["cgroup_path"], cgroup.path.as_str(), "{kill}");
    assert_eq!(kill["cgroup_id"], cgroup.id(), "{kill}");
    assert!(
        kill["oom_killed"] == true && kill["signal"] == 9 && kill["main_process"] == true,
        "{kill}"
    );
    assert!(
        (32 * MIB..=72 * MIB).contains(&rss),
        "anon at the kill: {rss}"
    );
}

#[test]
fn oom_kills_and_restarts_are_recorded_and_raise_abnormal_restarts() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = setup();
    let cgroup = TestCgroup::new("restarts");
    cgroup.set_limit(64 * MIB);
    let agent = setup.agent();
    // A supervisor outside the cgroup starts each run inside it: three runs that need 200 MiB,
    // then one that waits to be terminated.
    let procs = cgroup.dir.join("cgroup.procs");
    let script = format!(
        r#"for i in 1 2 3; do
  sh -c 'echo $$ > {procs}; exec {workload} anon 200' </dev/null >/dev/null
  echo "exit $?"
  sleep 1
done
sh -c 'echo $$ > {procs}; exec sleep 600' </dev/null &
echo "started $!"
wait $!
echo "exit $?"
"#,
        procs = procs.display(),
        workload = workload_bin().display()
    );
    let mut supervisor = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the supervisor");
    let mut lines = BufReader::new(supervisor.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    for _ in 0..3 {
        assert_eq!(next(), "exit 137");
    }
    let started = next();
    let sleeper: i32 = started
        .strip_prefix("started ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("supervisor said {started:?}"));
    thread::sleep(Duration::from_secs(1));
    // SAFETY: terminating the process our supervisor started, by pid.
    unsafe { libc::kill(sleeper, libc::SIGTERM) };
    assert_eq!(next(), "exit 143");
    let _ = supervisor.wait();

    let records = poll(Duration::from_secs(10), "lifecycle records", || {
        let records = lifecycle(&agent, &cgroup.path);
        (records.iter().any(|r| r["pid"] == sleeper)).then_some(records)
    });
    let kills: Vec<&Value> = records.iter().filter(|r| r["kind"] == "oom_kill").collect();
    assert_eq!(kills.len(), 3, "{records:?}");
    for kill in &kills {
        assert!(
            kill["oom_killed"] == true && kill["signal"] == 9 && kill["main_process"] == true,
            "{kill}"
        );
        let rss = kill["anon_rss_bytes"].as_u64().expect("rss");
        assert!(
            (32 * MIB..=72 * MIB).contains(&rss),
            "anon at the kill: {rss}"
        );
    }
    let terminated = records
        .iter()
        .find(|r| r["pid"] == sleeper)
        .expect("sleeper");
    assert_eq!(
        (
            &terminated["kind"],
            &terminated["oom_killed"],
            &terminated["signal"]
        ),
        (&Value::from("exit"), &Value::from(false), &Value::from(15)),
        "{terminated}"
    );

    let group = Path::new(&cgroup.path)
        .parent()
        .expect("parent")
        .display()
        .to_string();
    let event = poll(Duration::from_secs(20), "abnormal restarts event", || {
        events(&agent, "abnormal_restarts", &group)
            .pop()
            .filter(|e| e["evidence"]["restarts"].as_u64() >= Some(4))
    });
    let evidence = &event["evidence"];
    assert_eq!(evidence["oom_kills"].as_u64(), Some(3), "{evidence}");
    let recent = evidence["recent"].as_array().expect("recent");
    let oom: Vec<&Value> = recent
        .iter()
        .filter(|r| r["reason"] == "OOMKilled")
        .collect();
    assert_eq!(oom.len(), 3, "{evidence}");
    for r in &oom {
        assert!(
            r["pid"].as_u64().is_some() && r["at_unix_ms"].as_u64().is_some(),
            "{r}"
        );
        assert_eq!(r["container_exit_code"], 137);
    }
    let term = recent
        .iter()
        .find(|r| r["pid"] == sleeper)
        .expect("the terminated run is a restart");
    assert_eq!(
        (
            &term["reason"],
            &term["oom_killed"],
            &term["container_exit_code"]
        ),
        (
            &Value::from("Signaled"),
            &Value::from(false),
            &Value::from(143)
        ),
        "{term}"
    );

    // A kill while the agent is down has no victim event; the cgroup's own counter still tells.
    agent.kill_hard();
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}; exec {} anon 200",
                procs.display(),
                workload_bin().display()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the workload");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let agent = setup.agent();
    let event = poll(Duration::from_secs(20), "the unseen kill", || {
        events(&agent, "abnormal_restarts", &group)
            .pop()
            .filter(|e| e["evidence"]["oom_kills"].as_u64() == Some(4))
    });
    let unseen: Vec<&Value> = event["evidence"]["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter(|r| r["counted_only"] == true)
        .collect();
    assert_eq!(unseen.len(), 1, "{}", event["evidence"]);
    assert_eq!(unseen[0]["cgroup"], cgroup.path.as_str());
}
