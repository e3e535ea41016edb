//! Allocator traces: user probes on a native process's allocator, sampled by bytes, for a
//! bounded window. Where a leak and a churn share one heap, the page-level answer names the
//! code that first touched the reused pages; the trace names the code that holds the blocks.

use std::{
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use memlens_tests::{
    assert_near, go_bin, heap_reuse_bin,
    pprof::{decode, inuse_in},
    stack_names, static_stripped_bin, vector_leak_bin, Agent, TestCgroup, Workload, MIB,
};
use serde_json::Value;

mod lifetime;
mod python;
mod redis;

/// `memlens leaks --allocations --json --for <window> <args>`: `{allocations, pages, trace}`.
pub(crate) fn trace(agent: &Agent, window: &str, args: &[&str]) -> Value {
    let mut all = vec!["leaks", "--allocations", "--json", "--for", window];
    all.extend_from_slice(args);
    agent.json(&all)
}

/// The entries of the trace's answer, most held first.
pub(crate) fn entries(answer: &Value) -> &Vec<Value> {
    answer["allocations"]["by_inuse"]
        .as_array()
        .expect("by_inuse")
}

/// Bytes held (estimated) by the entries whose stack names `function`.
pub(crate) fn held_by(answer: &Value, function: &str) -> u64 {
    entries(answer)
        .iter()
        .filter(|e| {
            stack_names(e).iter().any(|n| {
                n == function
                    || n.starts_with(&format!("{function}("))
                    || n.ends_with(&format!("::{function}"))
            })
        })
        .map(|e| e["inuse_bytes"].as_u64().expect("inuse_bytes"))
        .sum()
}

/// The "leaked <bytes>" line a workload prints when done.
pub(crate) fn leaked(workload: &mut Workload) -> u64 {
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
    // 160 steps at 10 a second once the trace is attached: 40 MiB kept.
    let mut workload = Workload::start_program(&cgroup, &heap_reuse_bin(), &["160", "10", "wait"]);
    workload.expect_line("ready");
    let pid = workload.pid().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let pprof_path = dir.path().join("trace.pb.gz");
    let pprof_arg = pprof_path.display().to_string();
    let (answer, kept) = std::thread::scope(|s| {
        let tracing = s.spawn(|| {
            trace(
                &agent,
                "30s",
                &["--pid", &pid, "--top", "20", "--pprof", &pprof_arg],
            )
        });
        wait_attached(workload.pid(), "/libc.so");
        workload.send("go");
        let kept = leaked(&mut workload);
        (tracing.join().expect("the trace"), kept)
    });
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
    // The pprof export of the trace says the same.
    let profile = decode(&std::fs::read(&pprof_path).expect("the profile"));
    assert_eq!(
        inuse_in(&profile, "remember_request"),
        held_by(&answer, "remember_request")
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

/// The first entry of `answer` whose process is `pid`.
fn first_of(answer: &Value, pid: u32) -> &Value {
    entries(answer)
        .iter()
        .find(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("no entry of process {pid}: {answer:#}"))
}

#[test]
fn a_cgroup_trace_names_the_cpp_vector_and_the_rust_vec_that_leak() {
    memlens_tests::require_root();
    // The cgroup is made after the agent's first refresh and traced before another, as a user
    // traces one right after `mkdir`, by the path the shell shows.
    let agent = Agent::start(&["--refresh", "10m"]);
    let cgroup = TestCgroup::new("alloctrace-cpp-rust");
    let shell_path = cgroup.dir.display().to_string();
    // g++ -O2, no frame pointers: a std::vector that only grows (operator new -> malloc), 48 MiB
    // at 4 MiB/s; Rust's release profile: a Vec per request kept in a cache, 24 MiB at 2 MiB/s.
    let mut cpp = Workload::start_program(&cgroup, &vector_leak_bin(), &["48", "4"]);
    let mut rust = Workload::start(&cgroup, &["deepleak", "24", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let answer = trace(
        &agent,
        "14s",
        &["--cgroup", &shell_path, "--top", "50", "--budget", "2"],
    );
    let status = &answer["trace"];
    let traced: Vec<&Value> = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .collect();
    assert_eq!(traced.len(), 2, "{status}");
    assert!(traced.iter().all(|p| p["allocator"] == "glibc"), "{status}");

    let cpp_first = stack_names(first_of(&answer, cpp.pid()));
    eprintln!("C++: {cpp_first:?}");
    assert!(
        cpp_first.iter().any(|n| n.contains("record_event")),
        "the vector's owner first: {cpp_first:?}"
    );
    let rust_first = stack_names(first_of(&answer, rust.pid()));
    eprintln!("Rust: {rust_first:?}");
    assert!(
        rust_first.iter().any(|n| n.contains("cache_response")),
        "the cache first: {rust_first:?}"
    );
    let cpp_kept = leaked(&mut cpp);
    let rust_kept = leaked(&mut rust);
    // The vector holds one buffer, its last (the earlier ones were freed as it grew).
    let cpp_held = held_by(&answer, "record_event");
    eprintln!("C++ vector: {cpp_held} held by record_event, capacity {cpp_kept}");
    assert_near("the vector's buffer", cpp_held, cpp_kept, 0.15);
    let rust_held = held_by(&answer, "cache_response");
    eprintln!("Rust: {rust_held} held by cache_response of {rust_kept}");
    // The trace attached a moment after the program started: what it saw is most of it.
    assert!(
        rust_held > rust_kept / 2 && rust_held < rust_kept * 23 / 20,
        "{rust_held} of {rust_kept}"
    );
    cpp.send("exit");
    rust.send("exit");
}

/// Bytes of `pid`'s mapping of libc's code that differ from the file: the breakpoints the
/// kernel wrote for uprobes (0xcc), none when no probe is attached.
pub(crate) fn patched_libc_bytes(pid: u32) -> usize {
    patched_bytes(pid, "/libc.so")
}

/// Bytes of `pid`'s mapping of the code of `library` (a part of its path) that differ from the
/// file.
fn patched_bytes(pid: u32, library: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let line = maps
        .lines()
        .find(|l| l.contains("r-xp") && l.contains(library))
        .unwrap_or_else(|| panic!("no code mapping of {library} in {pid}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = fields[0].split_once('-').expect("range");
    let start = u64::from_str_radix(start, 16).expect("start");
    let end = u64::from_str_radix(end, 16).expect("end");
    let offset = u64::from_str_radix(fields[2], 16).expect("offset");
    let len = (end - start) as usize;
    let mut in_memory = vec![0u8; len];
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    mem.read_exact_at(&mut in_memory, start)
        .expect("read libc's code");
    let mut on_disk = vec![0u8; len];
    let file = std::fs::File::open(format!("/proc/{pid}/map_files/{}", fields[0])).expect("libc");
    file.read_exact_at(&mut on_disk, offset).expect("read libc");
    in_memory
        .iter()
        .zip(&on_disk)
        .filter(|(a, b)| a != b)
        .count()
}

/// Waits until a trace's breakpoints are in `pid`'s mapping of `library` (its allocator's probes
/// are attached).
pub(crate) fn wait_attached(pid: u32, library: &str) {
    let deadline = Instant::now() + memlens_tests::patience(Duration::from_secs(20));
    while patched_bytes(pid, library) == 0 {
        assert!(Instant::now() < deadline, "the trace never attached");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn trace_requests_that_cannot_run_say_why() {
    memlens_tests::require_root();
    let agent = Agent::start(&[]);
    let fails = |args: &[&str], wanted: &str| {
        let out = agent.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    };
    fails(
        &["leaks", "--allocations", "--pid", "1", "--for", "0s"],
        "between 1s and 10m",
    );
    fails(
        &[
            "leaks",
            "--allocations",
            "--pid",
            "1",
            "--for",
            "5s",
            "--budget=-1",
        ],
        "not a positive number of CPUs",
    );
    fails(&["leaks", "--for", "5s"], "--allocations");
    fails(
        &[
            "leaks",
            "--allocations",
            "--pid",
            "999999999",
            "--for",
            "5s",
        ],
        "no process 999999999",
    );
    // A static, stripped binary: its malloc cannot be found.
    let cgroup = TestCgroup::new("alloctrace-static");
    let mut stripped = Workload::start_program(&cgroup, &static_stripped_bin(), &["1", "10", "60"]);
    stripped.expect_line("ready");
    fails(
        &[
            "leaks",
            "--allocations",
            "--pid",
            &stripped.pid().to_string(),
            "--for",
            "5s",
        ],
        "defines malloc",
    );
    stripped.stop();
    // A Go program's runtime keeps a profile: `--for` answers from it at once, no trace.
    let mut go = Workload::start_program(&cgroup, &go_bin("goheap", false), &["1", "64"]);
    std::thread::sleep(Duration::from_millis(500));
    let answer = trace(&agent, "30s", &["--pid", &go.pid().to_string()]);
    assert!(answer["trace"].is_null(), "{answer}");
    assert_eq!(
        answer["allocations"]["processes"][0]["source"], "go_runtime",
        "{answer}"
    );
    go.stop();
    // One trace at a time.
    let mut first = Workload::start_program(&cgroup, &heap_reuse_bin(), &["600", "10", "0"]);
    first.expect_line("ready");
    let pid = first.pid().to_string();
    let mut running = agent.cli_child(&["leaks", "--allocations", "--pid", &pid, "--for", "20s"]);
    std::thread::sleep(Duration::from_secs(3));
    fails(
        &["leaks", "--allocations", "--pid", &pid, "--for", "5s"],
        "one trace at a time",
    );
    let _ = running.kill();
    let _ = running.wait();
    first.send("exit");
}
