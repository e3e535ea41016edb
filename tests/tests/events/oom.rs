//! OOM kills recorded from the kernel's own event, and the restarts they cause.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use memlens_tests::{workload_bin, TestCgroup, Workload, MIB};
use serde_json::Value;

use crate::{
    harness::{events, lifecycle, poll, setup},
    SERIAL,
};

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
