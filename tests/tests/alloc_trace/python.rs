//! Allocator traces of Debian's python3: the hard case of page-level attribution, a leak of
//! 64 KiB bytearrays beside a churn of 1.6 KiB lists in the same malloc heap (the kept blocks
//! are carved from pages the churn touched first, so the page-level answer names the churn for
//! much of them); the trace names the Python function and line that holds the blocks.

use std::path::Path;

use memlens_tests::{assert_near, stack_names, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

use crate::{entries, leaked, trace, wait_attached};

const PYTHON: &str = "/usr/bin/python3";

/// Bytes held (estimated) by the entries whose stack has the Python frame `function` of the
/// workload at `line`.
fn held_at(answer: &Value, function: &str, line: u64) -> u64 {
    entries(answer)
        .iter()
        .filter(|e| {
            e["user_stack"].as_array().is_some_and(|frames| {
                frames.iter().any(|f| {
                    f["function"] == function
                        && f["line"] == line
                        && f["file"]
                            .as_str()
                            .is_some_and(|file| file.ends_with("pyleak.py"))
                })
            })
        })
        .map(|e| e["inuse_bytes"].as_u64().expect("inuse_bytes"))
        .sum()
}

#[test]
fn a_trace_names_the_python_leak_that_reuses_the_churns_heap() {
    memlens_tests::require_root();
    if !Path::new(PYTHON).exists() {
        eprintln!("{PYTHON} not installed: skipped");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/pyleak.py");
    let text = std::fs::read_to_string(&script).expect("pyleak.py");
    let leak_line = text
        .lines()
        .position(|l| l.trim_end().ends_with("# leak: bytearray"))
        .expect("the leak's line") as u64
        + 1;
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("pytrace");
    let mut workload = Workload::start_program(
        &cgroup,
        Path::new(PYTHON),
        &[script.to_str().expect("utf-8"), "heap", "48", "6", "wait"],
    );
    workload.expect_line("ready");
    let pid = workload.pid().to_string();
    let (answer, kept) = std::thread::scope(|s| {
        let tracing = s.spawn(|| trace(&agent, "15s", &["--pid", &pid, "--top", "20"]));
        wait_attached(workload.pid(), "/libc.so");
        workload.send("go");
        let kept = leaked(&mut workload);
        (tracing.join().expect("the trace"), kept)
    });
    assert_eq!(kept, 48 * MIB);
    let first = &entries(&answer)[0];
    let frames: Vec<String> = first["user_stack"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| format!("{}:{}", f["function"], f["line"]))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("first: {} held, {frames:?}", first["inuse_bytes"]);
    let names = stack_names(first);
    assert!(names.iter().any(|n| n == "remember"), "{frames:?}");
    assert!(names.iter().any(|n| n == "<module>"), "{frames:?}");
    assert_near(
        "bytes held by remember()",
        held_at(&answer, "remember", leak_line),
        kept,
        0.15,
    );
    // The page-level answer for the same process, for the record: the churn first touched
    // many of the pages the leak holds.
    for e in answer["pages"]["by_held"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .take(4)
    {
        let python: Vec<String> = stack_names(e)
            .into_iter()
            .filter(|n| ["remember", "churn", "handle_request"].contains(&n.as_str()))
            .collect();
        eprintln!("page-level: {} held, {python:?}", e["held_bytes"]);
    }
    workload.stop();
}
