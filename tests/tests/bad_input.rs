//! Bad input gets a clear one-line error and a non-zero exit, never a panic.

use std::{
    io::{Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use memlens_tests::{memlens_bin, Agent};

fn assert_clean_failure(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic: {stderr}"
    );
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn unknown_subcommand_and_bad_flags_are_usage_errors() {
    let out = Command::new(memlens_bin())
        .arg("frobnicate")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_clean_failure(&out, "unrecognized subcommand 'frobnicate'");
    let out = Command::new(memlens_bin())
        .args(["agent", "--sample-shift", "99"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_clean_failure(&out, "--sample-shift");
}

#[test]
fn clients_without_an_agent_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    for cmd in [&["top"][..], &["status"]] {
        let out = Command::new(memlens_bin())
            .arg("--socket")
            .arg(&socket)
            .args(cmd)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1));
        assert_clean_failure(&out, "the memlens agent is not running");
    }
}

#[test]
fn agent_refuses_to_run_without_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let out = Command::new(memlens_bin())
        .arg("--socket")
        .arg(dir.path().join("a.sock"))
        .arg("agent")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert_clean_failure(&out, "needs root");
}

#[test]
fn agent_without_btf_says_what_to_do() {
    memlens_tests::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(memlens_bin())
        .arg("--socket")
        .arg(dir.path().join("a.sock"))
        .args(["agent", "--btf", "/nonexistent/vmlinux.btf"])
        .output()
        .expect("run agent");
    assert_clean_failure(&out, "the BTF file /nonexistent/vmlinux.btf does not exist");
    let garbage = dir.path().join("garbage.btf");
    std::fs::write(&garbage, b"not btf").expect("write");
    let out = Command::new(memlens_bin())
        .arg("--socket")
        .arg(dir.path().join("b.sock"))
        .arg("agent")
        .arg("--btf")
        .arg(&garbage)
        .output()
        .expect("run agent");
    assert_clean_failure(&out, "cannot parse BTF from");
}

#[test]
fn a_second_agent_on_the_same_socket_is_refused() {
    let agent = Agent::start(&[]);
    let out = Command::new(memlens_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .arg("agent")
        .output()
        .expect("run second agent");
    assert_clean_failure(&out, "another memlens agent is already running");
    // The first one is unharmed.
    assert!(agent.cli(&["status"]).status.success(), "{}", agent.log());
}

fn raw_request(socket: &std::path::Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn malformed_api_requests_get_http_errors() {
    let agent = Agent::start(&[]);
    let bad_query = raw_request(
        &agent.socket,
        b"GET /v1/top?limit=lots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(bad_query.starts_with("HTTP/1.1 400"), "{bad_query}");
    assert!(bad_query.contains("\"error\""), "{bad_query}");
    let unknown_key = raw_request(
        &agent.socket,
        b"GET /v1/top?colour=red HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(unknown_key.starts_with("HTTP/1.1 400"), "{unknown_key}");
    let missing = raw_request(
        &agent.socket,
        b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let no_cgroup = raw_request(
        &agent.socket,
        b"GET /v1/top?cgroup=/no/such HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(no_cgroup.starts_with("HTTP/1.1 404"), "{no_cgroup}");
    let garbage = raw_request(&agent.socket, b"\x00\x01 not http at all\r\n\r\n");
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    for request in [
        &b"GET /v1/events?status=closed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /v1/events?kind=meltdown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/events/seven HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/lifecycle?since=yesterday HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/leaks?since=soon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/top?cgroup= HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations?pid=abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations?pid=1&pod=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations?pid=1&top=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations?trace=1&pid=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        // Traces: validated before anything is attached.
        b"POST /v1/traces?pid=abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?seconds=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=1&seconds=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=1&seconds=900 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=1&budget_cpus=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=1&sample_bytes=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=1&colour=red HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/traces/seven HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces/seven/stop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_request(&agent.socket, request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let no_event = raw_request(
        &agent.socket,
        b"GET /v1/events/999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(no_event.starts_with("HTTP/1.1 404"), "{no_event}");
    let no_process = raw_request(
        &agent.socket,
        b"GET /v1/allocations?pid=4294967295 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(no_process.starts_with("HTTP/1.1 404"), "{no_process}");
    for request in [
        &b"GET /v1/traces/999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST /v1/traces/999999/stop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/allocations?trace=999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/traces?pid=4294967295 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_request(&agent.socket, request);
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
    // Starting a trace is a POST.
    let get_traces = raw_request(
        &agent.socket,
        b"GET /v1/traces?pid=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(get_traces.starts_with("HTTP/1.1 405"), "{get_traces}");
    // Still serving after all that.
    assert!(agent.cli(&["status"]).status.success(), "{}", agent.log());
    assert_clean_failure(&agent.cli(&["events", "show", "999999"]), "no event 999999");
    let out = agent.cli(&["top", "--cgroup", "/no/such"]);
    assert_clean_failure(&out, "no memory cgroup matches");
}

#[test]
fn a_cgroup_made_after_the_last_census_is_named_as_such() {
    // Refreshes are paced (up to a minute apart on a busy node): a cgroup made since the last
    // one is not "no such cgroup".
    let agent = Agent::start(&["--refresh", "10m"]);
    let cgroup = memlens_tests::TestCgroup::new("after-census");
    let shell_path = cgroup.dir.display().to_string();
    for command in ["top", "leaks"] {
        let out = agent.cli(&[command, "--cgroup", &shell_path]);
        assert_clean_failure(&out, "was made after the agent's last census");
    }
    let out = agent.cli(&["top", "--cgroup", &format!("{shell_path}-not-made")]);
    assert_clean_failure(&out, "no memory cgroup matches");
}

#[test]
fn status_has_one_line_per_capability() {
    let agent = Agent::start(&[]);
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for capability in [
        "page probe",
        "struct offsets",
        "cgroup layout",
        "sampling",
        "page census",
        "drops",
        "lifecycle",
        "events",
        "pod names",
        "allocator traces",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(capability)),
            "no {capability:?} line in:\n{text}"
        );
    }
    let json = agent.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    assert!(v["counters"]["sampled_frames"].is_u64(), "{v}");
}

#[test]
fn a_bad_config_file_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, needle) in [
        ("[leak]\nlokback = \"6h\"\n", "leak.lokback"),
        (
            "[restarts]\nmin_restarts = \"two\"\n",
            "restarts.min_restarts",
        ),
        ("[leak]\nlookback = \"-1h\"\n", "leak.lookback"),
        ("[events]\nsilence = 30\n", "events.silence"),
        ("colour = \"red\"\n", "colour"),
        ("[agent]\nsample_shift = 40\n", "agent.sample_shift"),
        ("[agent]\nrefresh = \"soon\"\n", "agent.refresh"),
    ] {
        let config = dir.path().join("memlens.toml");
        std::fs::write(&config, text).expect("write config");
        let out = Command::new(memlens_bin())
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .args(["agent", "--db"])
            .arg(dir.path().join("h.db"))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run agent");
        assert_clean_failure(&out, needle);
        assert!(
            !dir.path().join("s.sock").exists(),
            "the agent started on a bad config"
        );
        let checked = Command::new(memlens_bin())
            .args(["config", "check"])
            .arg(&config)
            .output()
            .expect("run config check");
        assert_clean_failure(&checked, needle);
        assert_clean_failure(&checked, "memlens.toml:");
    }
    let out = Command::new(memlens_bin())
        .args(["agent", "--config", "/nonexistent/memlens.toml"])
        .output()
        .expect("run agent");
    assert_clean_failure(&out, "/nonexistent/memlens.toml");
}
