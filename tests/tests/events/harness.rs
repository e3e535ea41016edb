//! The engine's test set-up (windows shrunk to minutes) and the CLI answers the tests read.

use std::{
    thread,
    time::{Duration, Instant},
};

use memlens_tests::{patience, Agent};
use serde_json::Value;

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

pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) flags: Vec<String>,
}

pub(crate) fn setup() -> Setup {
    setup_with(CONFIG)
}

/// A set-up with the engine config `text`.
pub(crate) fn setup_with(text: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("memlens.toml");
    std::fs::write(&config, text).expect("write config");
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
    pub(crate) fn agent(&self) -> Agent {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        Agent::start(&flags)
    }
}

pub(crate) fn json(agent: &Agent, args: &[&str]) -> Value {
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
pub(crate) fn events(agent: &Agent, kind: &str, subject: &str) -> Vec<Value> {
    json(agent, &["events", "list", "--kind", kind, "--json"])["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["subject"] == subject)
        .cloned()
        .collect()
}

pub(crate) fn lifecycle(agent: &Agent, cgroup: &str) -> Vec<Value> {
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

pub(crate) fn history(agent: &Agent, cgroup: &str) -> Vec<Value> {
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

pub(crate) fn names_function(value: &Value, function: &str) -> bool {
    value.to_string().contains(function)
}

/// Polls `probe` until it finds something, for `timeout` stretched by the slowdown.
pub(crate) fn poll<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
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
