//! Allocator traces: user probes on a native process's allocator, sampled by bytes, for a
//! bounded window. Where a leak and a churn share one heap, the page-level answer names the
//! code that first touched the reused pages; the trace names the code that holds the blocks.

use memlens_tests::{assert_near, heap_reuse_bin, stack_names, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

/// `memlens leaks --allocations --json --for <window> <args>`: `{allocations, pages, trace}`.
fn trace(agent: &Agent, window: &str, args: &[&str]) -> Value {
    let mut all = vec!["leaks", "--allocations", "--json", "--for", window];
    all.extend_from_slice(args);
    agent.json(&all)
}

/// The entries of the trace's answer, most held first.
fn entries(answer: &Value) -> &Vec<Value> {
    answer["allocations"]["by_inuse"]
        .as_array()
        .expect("by_inuse")
}

/// Bytes held (estimated) by the entries whose stack names `function`.
fn held_by(answer: &Value, function: &str) -> u64 {
    entries(answer)
        .iter()
        .filter(|e| stack_names(e).iter().any(|n| n == function))
        .map(|e| e["inuse_bytes"].as_u64().expect("inuse_bytes"))
        .sum()
}

/// The "leaked <bytes>" line a workload prints when done.
fn leaked(workload: &mut Workload) -> u64 {
    let line = workload.read_line();
    line.strip_prefix("leaked ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected 'leaked <bytes>', got {line:?}"))
}

#[test]
fn a_trace_names_the_leak_that_reuses_the_churns_heap() {
    memlens_tests::require_root();
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("alloctrace");
    // 2 s of pause for the trace to attach, then 160 steps at 10 a second: 40 MiB kept.
    let mut workload = Workload::start_program(&cgroup, &heap_reuse_bin(), &["160", "10", "2"]);
    workload.expect_line("ready");
    let pid = workload.pid().to_string();
    let answer = trace(&agent, "25s", &["--pid", &pid, "--top", "20"]);
    let kept = leaked(&mut workload);

    let status = &answer["trace"];
    eprintln!(
        "trace: {} s, {} alloc calls, {} free calls, {} samples, cost {:.3} CPUs mean, \
         {:.2} us/alloc, {:.2} us/free",
        status["elapsed_seconds"],
        status["alloc_calls"],
        status["free_calls"],
        status["samples"],
        status["mean_cost_cpus"].as_f64().unwrap_or(0.0),
        status["alloc_call_cost_us"].as_f64().unwrap_or(0.0),
        status["free_call_cost_us"].as_f64().unwrap_or(0.0),
    );
    assert_eq!(status["end"], "completed", "{status}");
    assert_eq!(status["processes"][0]["allocator"], "glibc", "{status}");
    let first = &entries(&answer)[0];
    let names = stack_names(first);
    eprintln!("first: {} held, {names:?}", first["inuse_bytes"]);
    assert!(
        names.iter().any(|n| n == "remember_request"),
        "the leak first: {names:?}\n{answer:#}"
    );
    assert!(
        names.iter().any(|n| n == "main"),
        "a whole stack: {names:?}"
    );
    assert_near(
        "the leak's held bytes",
        held_by(&answer, "remember_request"),
        kept,
        0.15,
    );
    let churn = held_by(&answer, "render_response");
    eprintln!("churn holds {churn} of {kept} kept");
    assert!(churn < kept / 50, "the churn holds {churn} bytes");
    // The churn was traced too: it allocated several times what the leak kept, and freed it.
    let process = &answer["allocations"]["processes"][0];
    let allocated = process["alloc_bytes"].as_u64().expect("alloc_bytes");
    eprintln!("allocated in the window: {allocated}");
    assert!(allocated > 4 * kept, "{process}");

    // What the page-level answer says about the same process, for the record.
    for (i, e) in answer["pages"]["by_held"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        eprintln!(
            "page-level #{}: {} held, {:?}",
            i + 1,
            e["held_bytes"],
            stack_names(e).into_iter().take(6).collect::<Vec<_>>()
        );
    }
    assert!(kept >= 39 * MIB, "the workload kept {kept}");
    workload.send("exit");
}
