//! Acceptance of unwinding without frame pointers: workloads built the way users build them
//! (`gcc -O2 -g`, `g++ -O2`, Rust's release profile), their leak's whole call chain down to
//! `main`, through glibc's and libstdc++'s own frames, from copies of the stack unwound with each
//! binary's unwind tables.

use memlens_tests::{
    assert_near, deep_leak_bin, has_chain, plugin_bins, stack_names, vector_leak_bin, workload_bin,
    Agent, TestCgroup, Workload, MIB,
};
use serde_json::Value;

fn leaks(agent: &Agent, cgroup: &TestCgroup) -> Value {
    agent.cgroup_leaks(&cgroup.path, &[])
}

fn show(entry: &Value) -> String {
    format!(
        "{} ({} bytes, unwound by {}, stop {})",
        stack_names(entry).join(" < "),
        entry["held_bytes"],
        entry["unwound_by"],
        entry["stack_stop"]
    )
}

/// Runs `program args` in a cgroup of its own until it says `leaked <bytes>`, then answers with
/// the agent's leaks of that cgroup and the bytes leaked.
fn leak_report(
    agent: &Agent,
    name: &str,
    program: &std::path::Path,
    args: &[&str],
) -> (Value, u64, Workload, TestCgroup) {
    let cgroup = TestCgroup::new(name);
    let mut leak = Workload::start_program(&cgroup, program, args);
    let line = leak.read_line();
    let leaked: u64 = line
        .strip_prefix("leaked ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} said {line:?}"));
    agent.wait_censuses(2);
    (leaks(agent, &cgroup), leaked, leak, cgroup)
}

#[test]
fn c_without_frame_pointers_names_the_whole_chain_to_main() {
    let agent = Agent::start(&[]);
    let (report, leaked, mut leak, cgroup) =
        leak_report(&agent, "deepleak", &deep_leak_bin(), &["160", "40"]);
    assert_eq!(leaked, 160 * MIB);
    let chain = [
        "alloc_node",
        "build_index",
        "parse_request",
        "main",
        "__libc_start_call_main",
    ];
    let by_growth = report["by_growth"].as_array().expect("by_growth");
    let first = by_growth
        .first()
        .unwrap_or_else(|| panic!("no stacks: {report}"));
    eprintln!("first by growth: {}", show(first));
    assert!(has_chain(first, &chain), "{first:#}");
    assert_eq!(first["truncated"], false, "{first:#}");
    assert_eq!(first["unwound_by"], "unwind_tables", "{first:#}");

    // Of the leak's held bytes (every stack through alloc_node), at least 90% in whole stacks.
    let by_held = report["by_held"].as_array().expect("by_held");
    let leak_entries: Vec<&Value> = by_held
        .iter()
        .filter(|e| stack_names(e).iter().any(|n| n == "alloc_node"))
        .collect();
    let held = |entries: &[&Value]| -> u64 {
        entries
            .iter()
            .map(|e| e["held_bytes"].as_u64().expect("held"))
            .sum()
    };
    let total = held(&leak_entries);
    let whole: Vec<&Value> = leak_entries
        .iter()
        .copied()
        .filter(|e| has_chain(e, &chain) && e["truncated"] == false)
        .collect();
    let whole_bytes = held(&whole);
    for e in &leak_entries {
        eprintln!("  {}", show(e));
    }
    eprintln!(
        "{:.1}% of the leak's held bytes in whole stacks",
        100.0 * whole_bytes as f64 / total.max(1) as f64
    );
    assert_near("leak", total, leaked, 0.15);
    assert!(whole_bytes * 10 >= total * 9, "{whole_bytes} of {total}");

    // glibc's own frames are followed to the user's caller.
    let glibc: Vec<&Value> = by_held
        .iter()
        .filter(|e| {
            stack_names(e)
                .iter()
                .any(|n| n.contains("sysmalloc") || n.contains("_int_malloc"))
        })
        .collect();
    assert!(
        !glibc.is_empty(),
        "no stack through glibc's malloc: {report:#}"
    );
    for e in glibc {
        eprintln!("  {}", show(e));
        assert!(
            has_chain(e, &["build_index", "parse_request", "main"])
                || has_chain(e, &["scratch_pass", "parse_request", "main"]),
            "glibc's frames not followed to the caller: {}",
            show(e)
        );
    }
    // The churn beside it is not a leak.
    let leak_growth = first["growth_bytes"].as_i64().expect("growth");
    for e in report["by_growth"].as_array().expect("by_growth") {
        if stack_names(e).iter().any(|n| n == "scratch_pass") {
            let growth = e["growth_bytes"].as_i64().expect("growth");
            assert!(growth * 20 < leak_growth, "the churn grows: {}", show(e));
        }
    }
    // The terminal output says the same.
    let text = agent.cli(&["leaks", "--cgroup", &cgroup.path, "--since", "60s"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("build_index") && text.contains("parse_request"),
        "{text}"
    );
    leak.send("exit");
}

#[test]
fn cpp_vector_growth_names_the_chain_through_libstdcxx_and_glibc() {
    let agent = Agent::start(&[]);
    let (report, leaked, mut leak, _cgroup) =
        leak_report(&agent, "vecleak", &vector_leak_bin(), &["128", "64"]);
    assert!(leaked >= 128 * MIB, "{leaked}");
    let by_growth = report["by_growth"].as_array().expect("by_growth");
    let first = by_growth
        .first()
        .unwrap_or_else(|| panic!("no stacks: {report}"));
    for e in by_growth.iter().take(5) {
        eprintln!("  {}", show(e));
    }
    let chain = ["record_event", "handle_batch", "main"];
    assert!(has_chain(first, &chain), "{first:#}");
    assert_eq!(first["truncated"], false, "{first:#}");
    // Some of its pages are first touched in libstdc++ or glibc (the vector's reallocation), and
    // those stacks reach main too.
    let through_libraries: Vec<&Value> = report["by_held"]
        .as_array()
        .expect("by_held")
        .iter()
        .filter(|e| {
            e["user_stack"][0]["module"]
                .as_str()
                .is_some_and(|m| m.contains("libc.so") || m.contains("libstdc++"))
        })
        .collect();
    assert!(!through_libraries.is_empty(), "{report:#}");
    for e in through_libraries {
        if stack_names(e).iter().any(|n| n.contains("record_event")) {
            assert!(has_chain(e, &chain), "{}", show(e));
        }
    }
    leak.send("exit");
}

#[test]
fn rust_release_build_names_the_chain_to_main() {
    let agent = Agent::start(&[]);
    let (report, leaked, mut leak, _cgroup) = leak_report(
        &agent,
        "rustleak",
        &workload_bin(),
        &["deepleak", "96", "48"],
    );
    assert_eq!(leaked, 96 * MIB);
    let first = &report["by_growth"][0];
    eprintln!("first by growth: {}", show(first));
    assert!(
        has_chain(
            first,
            &["cache_response", "handle_request", "serve_requests", "main"]
        ),
        "{first:#}"
    );
    assert_eq!(first["truncated"], false, "{first:#}");
    leak.send("exit");
}

#[test]
fn code_loaded_after_the_process_started_is_unwound_and_named() {
    let agent = Agent::start(&[]);
    let (host, plugin) = plugin_bins();
    let cgroup = TestCgroup::new("plugin");
    let mut leak = Workload::start_program(
        &cgroup,
        &host,
        &[plugin.to_str().expect("plugin path"), "64"],
    );
    assert_eq!(leak.read_line(), "ready");
    // The agent sees the host and its mappings before the plugin exists.
    agent.wait_censuses(2);
    leak.send("load");
    let line = leak.read_line();
    assert_eq!(line, format!("leaked {}", 64 * MIB));
    agent.wait_censuses(2);
    let report = leaks(&agent, &cgroup);
    let first = &report["by_growth"][0];
    eprintln!("first by growth: {}", show(first));
    assert!(
        has_chain(first, &["plugin_fill", "plugin_leak", "main"]),
        "{first:#}"
    );
    assert_eq!(first["truncated"], false, "{first:#}");
    leak.send("exit");
}

/// A pool of processes of one binary, each started on its own (as a supervisor or a shell loop
/// starts workers, so the loader places each at other addresses), leaking through the same code
/// path: one stack, holding what they all hold, ranked by that sum, beside another program's
/// larger single leak.
#[test]
fn the_same_stack_in_a_pool_of_processes_is_one_entry() {
    const WORKERS: usize = 6;
    const EACH_MIB: u64 = 10;
    // 1 in 16 pages: 60 MiB is 960 samples (3% standard error).
    let agent = Agent::start(&["--sample-shift", "4"]);
    let cgroup = TestCgroup::new("pool");
    let mut workers: Vec<Workload> = (0..WORKERS)
        .map(|_| Workload::start_program(&cgroup, &deep_leak_bin(), &["10", "20"]))
        .collect();
    let mut single = Workload::start_program(&cgroup, &workload_bin(), &["deepleak", "30", "30"]);
    for w in workers.iter_mut() {
        assert_eq!(w.read_line(), format!("leaked {}", EACH_MIB * MIB));
    }
    assert_eq!(single.read_line(), format!("leaked {}", 30 * MIB));
    agent.wait_censuses(2);
    let chain = ["alloc_node", "build_index", "parse_request", "main"];

    // The code path holding the most is the workers' (60 MiB over six processes), not the
    // single process's 30 MiB, even when only the first stack is asked for.
    let top = agent.leaks(&["--cgroup", &cgroup.path, "--since", "60s", "--top", "1"]);
    let first = &top["by_held"][0];
    eprintln!(
        "first by held: {} in {} processes",
        show(first),
        first["process_count"]
    );
    assert!(has_chain(first, &chain), "{top:#}");
    assert_eq!(first["process_count"], WORKERS, "{first:#}");
    let pids: Vec<u64> = workers.iter().map(|w| u64::from(w.pid())).collect();
    for p in first["processes"].as_array().expect("processes") {
        assert!(pids.contains(&p["pid"].as_u64().expect("pid")), "{p}");
    }

    // All of the workers' leak is there, within 15%.
    let all = leaks(&agent, &cgroup);
    let held: u64 = all["by_held"]
        .as_array()
        .expect("by_held")
        .iter()
        .filter(|e| has_chain(e, &["alloc_node", "build_index"]))
        .map(|e| e["held_bytes"].as_u64().expect("held"))
        .sum();
    assert_near("workers' leak", held, WORKERS as u64 * EACH_MIB * MIB, 0.15);

    // Asked per process, each worker has its own entry, its code placed at its own address
    // (the frame's address minus its offset in the binary differs between workers).
    let apart = agent.cgroup_leaks(&cgroup.path, &["--per-process"]);
    let mut placed: Vec<(u64, u64)> = apart["by_held"]
        .as_array()
        .expect("by_held")
        .iter()
        .filter(|e| has_chain(e, &chain))
        .filter_map(|e| {
            let frame = e["user_stack"]
                .as_array()?
                .iter()
                .find(|f| f["function"] == "alloc_node")?;
            let bias = frame["addr"].as_u64()? - frame["module_offset"].as_u64()?;
            Some((e["pid"].as_u64()?, bias))
        })
        .collect();
    placed.sort_unstable();
    placed.dedup();
    assert_eq!(
        placed.len(),
        WORKERS,
        "one placement per worker: {placed:x?}"
    );
    assert!(
        placed.iter().any(|p| p.1 != placed[0].1),
        "the loader placed every worker at the same address: {placed:x?}"
    );
    for w in workers.iter_mut() {
        w.send("exit");
    }
    single.send("exit");
}
