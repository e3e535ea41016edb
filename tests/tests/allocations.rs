//! Allocation-level attribution from the processes' own profiles: a Go service's heap profile,
//! read from its memory without probes, names the function that holds the memory where the
//! page-level answer names whoever first touched the reused pages.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use memlens_tests::{
    assert_near, go_bin,
    pprof::{decode, inuse_in},
    stack_names, workload_bin, Agent, TestCgroup, Workload, MIB,
};
use serde_json::Value;

/// `memlens leaks --allocations --json <args>`: `{allocations, pages}`.
fn allocations(agent: &Agent, args: &[&str]) -> Value {
    let mut all = vec!["leaks", "--allocations", "--json"];
    all.extend_from_slice(args);
    agent.json(&all)
}

/// In-use bytes of the entries whose stack names `function`.
fn inuse_of(answer: &Value, function: &str) -> u64 {
    answer["allocations"]["by_inuse"]
        .as_array()
        .expect("by_inuse")
        .iter()
        .filter(|e| stack_names(e).iter().any(|n| n == function))
        .map(|e| e["inuse_bytes"].as_u64().expect("inuse_bytes"))
        .sum()
}

/// The process's own heap profile (`/debug/pprof/heap` on loopback `port`): in-use bytes of the
/// samples whose stack has `function`.
fn own_pprof_inuse(port: u16, function: &str) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the service");
    stream
        .write_all(b"GET /debug/pprof/heap HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    inuse_in(&decode(&response[body_at..]), function)
}

#[test]
fn a_go_services_own_heap_profile_names_the_function_holding_the_memory() {
    const SESSIONS: u64 = 400;
    const KIB: u64 = 256;
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("goheap");
    let mut service = Workload::start_program(
        &cgroup,
        &go_bin("goheap", false),
        &[&SESSIONS.to_string(), &KIB.to_string()],
    );
    let line = service.read_line();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (port, leaked): (u16, u64) = match fields.as_slice() {
        ["ready", port, "leaked", bytes] => {
            (port.parse().expect("port"), bytes.parse().expect("bytes"))
        }
        _ => panic!("goheap said {line:?}"),
    };
    assert_eq!(leaked, SESSIONS * KIB * 1024);
    let pid = service.pid().to_string();

    // The runtime publishes its profile at garbage collections (allocations two cycles after
    // they happen); the churn keeps collections coming. The sessions are all open: once two
    // answers a second apart agree, every session is in the published profile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    let answer = loop {
        let answer = allocations(&agent, &["--pid", &pid, "--top", "50"]);
        let now = inuse_of(&answer, "main.serveSession");
        if (now > 0 && now == last) || Instant::now() > deadline {
            break answer;
        }
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    };
    let process = &answer["allocations"]["processes"][0];
    assert_eq!(process["source"], "go_runtime", "{process:#}");
    assert_eq!(process["sample_rate_bytes"], 512 * 1024, "{process:#}");
    let first = &answer["allocations"]["by_inuse"][0];
    eprintln!(
        "first by bytes in use: {} ({} bytes)",
        stack_names(first).join(" < "),
        first["inuse_bytes"]
    );
    assert!(
        stack_names(first).iter().any(|n| n == "main.serveSession"),
        "{answer:#}"
    );

    // The same bytes as the process's own /debug/pprof/heap (the same samples, read from
    // outside), and near the truth (sampled: one in 512 KiB).
    let ours = inuse_of(&answer, "main.serveSession");
    let theirs = own_pprof_inuse(port, "main.serveSession");
    assert_near(
        "main.serveSession vs its /debug/pprof/heap",
        ours,
        theirs,
        0.10,
    );
    assert_near(
        "main.serveSession vs the sessions' buffers",
        ours,
        leaked,
        0.25,
    );
    let churn = inuse_of(&answer, "main.churn");
    eprintln!("main.churn: {:.1} MiB in use", churn as f64 / MIB as f64);
    assert!(churn * 10 < leaked, "the churn holds {churn} bytes");

    // By cgroup, as the shell names it, in the terminal, with a pprof profile (Go's four sample
    // types) and a flame graph.
    let dir = tempfile::tempdir().expect("tempdir");
    let (pprof_path, svg_path) = (dir.path().join("heap.pb.gz"), dir.path().join("heap.svg"));
    let text = agent.cli(&[
        "leaks",
        "--allocations",
        "--cgroup",
        &cgroup.path,
        "--pprof",
        pprof_path.to_str().expect("path"),
        "--flamegraph",
        svg_path.to_str().expect("path"),
    ]);
    let profile = decode(&std::fs::read(&pprof_path).expect("the profile"));
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| profile.string_table[t.ty as usize].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_near(
        "main.serveSession in the exported profile",
        inuse_in(&profile, "main.serveSession"),
        ours,
        0.10,
    );
    let svg = std::fs::read_to_string(&svg_path).expect("the flame graph");
    assert!(svg.contains("main.serveSession"), "{svg:.300}");
    let text = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("main.serveSession") && text.contains("Go runtime heap profile"),
        "{text}"
    );
    service.send("exit");
}

#[test]
fn processes_without_a_readable_profile_say_why() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("noprofile");
    let mut stripped = Workload::start_program(&cgroup, &go_bin("goheap", true), &["4", "64"]);
    assert!(stripped.read_line().starts_with("ready "));
    let mut native = Workload::start_program(&cgroup, &workload_bin(), &["deepleak", "4", "8"]);
    assert_eq!(native.read_line(), format!("leaked {}", 4 * MIB));
    let answer = allocations(&agent, &["--cgroup", &cgroup.path]);
    let processes = answer["allocations"]["processes"]
        .as_array()
        .expect("processes");
    let error_of = |pid: u32| -> String {
        processes
            .iter()
            .find(|p| p["pid"] == pid)
            .and_then(|p| p["error"].as_str())
            .unwrap_or_else(|| panic!("no error for {pid}: {answer:#}"))
            .to_string()
    };
    let why = error_of(stripped.pid());
    assert!(why.contains("stripped"), "{why}");
    let why = error_of(native.pid());
    assert!(why.contains("not a Go program"), "{why}");

    // Asking for nothing, or for two things, is a clear error.
    let out = agent.cli(&["leaks", "--allocations"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exactly one of pid, cgroup or pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stripped.send("exit");
    native.send("exit");
}
