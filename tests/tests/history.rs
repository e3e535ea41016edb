//! Persistent history: what the agent recorded survives a SIGKILL and a restart, once.

use std::time::Duration;

use memlens_tests::{patience, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

fn history(agent: &Agent, cgroup: &TestCgroup) -> Vec<Value> {
    let out = agent.cli(&[
        "history",
        "--cgroup",
        &cgroup.path,
        "--since",
        "10m",
        "--limit",
        "10000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "memlens history: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("history --json is JSON");
    v["samples"].as_array().expect("samples").clone()
}

#[test]
fn history_survives_a_killed_agent_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let db_arg = db.to_str().expect("path");
    let flags = ["--db", db_arg, "--history-interval", "500ms"];
    let cgroup = TestCgroup::new("history");
    let mut workload = Workload::start(&cgroup, &["anon", "64"]);
    workload.expect_line("ready");

    let agent = Agent::start(&flags);
    let wait = patience(Duration::from_secs(3));
    std::thread::sleep(wait);
    let before = history(&agent, &cgroup);
    assert!(
        before.len() >= 3,
        "only {} samples in {wait:?}",
        before.len()
    );
    assert!(
        before
            .iter()
            .all(|s| s["anon_bytes"].as_u64().unwrap_or(0) >= 60 * MIB),
        "{before:?}"
    );
    let last_before = before.last().and_then(|s| s["ts_ms"].as_u64()).expect("ts");
    agent.kill_hard();

    let agent = Agent::start(&flags);
    std::thread::sleep(patience(Duration::from_secs(2)));
    let after = history(&agent, &cgroup);
    let times: Vec<u64> = after
        .iter()
        .map(|s| s["ts_ms"].as_u64().expect("ts"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "duplicate or unordered samples: {times:?}"
    );
    for sample in &before {
        assert!(
            after.contains(sample),
            "sample lost across the restart: {sample}"
        );
    }
    assert!(
        times.iter().any(|&t| t > last_before),
        "nothing recorded after the restart"
    );
    eprintln!(
        "{} samples before the kill, {} after the restart",
        before.len(),
        after.len()
    );
    workload.send("exit");
}

#[test]
fn a_corrupt_history_database_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    std::fs::write(&db, b"this is not a database").expect("write");
    let out = std::process::Command::new(memlens_tests::memlens_bin())
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["agent", "--db"])
        .arg(&db)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("history database")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}
