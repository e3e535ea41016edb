//! Debian's redis-server on jemalloc, filled by redis-benchmark.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use memlens_tests::{stack_names, Agent, TestCgroup, Workload};

use crate::{entries, trace, wait_attached};

/// Runs `redis-benchmark` against `port`: `count` SETs of 256-byte values under random keys (new
/// keys, so the server's memory grows); how long it took.
fn fill_redis(port: u16, count: u32) -> Duration {
    let started = Instant::now();
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-d",
            "256",
        ])
        .args(["-r", "100000000", "-n", &count.to_string(), "-c", "8", "-q"])
        .output()
        .expect("run redis-benchmark (Debian's redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

#[test]
fn a_trace_of_redis_names_its_key_insertion_path_through_jemalloc() {
    memlens_tests::require_root();
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::new("alloctrace-redis");
    // A port of our own on loopback; no persistence.
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut redis = Workload::start_program(
        &cgroup,
        Path::new("/usr/bin/redis-server"),
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let untraced = fill_redis(port, 20_000);
    let pid = redis.pid().to_string();
    let started = Instant::now();
    let (answer, traced) = std::thread::scope(|s| {
        let tracing = s.spawn(|| {
            trace(
                &agent,
                "20s",
                &["--pid", &pid, "--top", "10", "--budget", "2"],
            )
        });
        // Every SET traced: the fill starts once jemalloc's entry points carry the probes.
        wait_attached(redis.pid(), "/libjemalloc.so");
        let traced = fill_redis(port, 20_000);
        // Slowed 5-14x by the trace here: a slower host may need a longer window, not a lower bound.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the fill outlasted the trace's window: {:?}",
            started.elapsed()
        );
        (tracing.join().expect("the trace"), traced)
    });
    let status = &answer["trace"];
    eprintln!(
        "redis-benchmark, 20,000 SETs: {untraced:?} untraced, {traced:?} traced ({:.1}x); trace \
         cost {:.2} CPUs on average, {:.2} us per allocating call, {:.2} us per free",
        traced.as_secs_f64() / untraced.as_secs_f64(),
        status["mean_cost_cpus"].as_f64().unwrap_or(0.0),
        status["alloc_call_cost_us"].as_f64().unwrap_or(0.0),
        status["free_call_cost_us"].as_f64().unwrap_or(0.0),
    );
    assert_eq!(status["processes"][0]["allocator"], "jemalloc", "{status}");
    let first = stack_names(&entries(&answer)[0]);
    eprintln!("first: {first:?}");
    let insertion = [
        "createStringObject",
        "dbAdd",
        "setKey",
        "setGenericCommand",
        "dictAddRaw",
    ];
    assert!(
        first.iter().any(|n| insertion.contains(&n.as_str())),
        "the key insertion path first: {first:?}"
    );
    // 20,000 new keys of 256 bytes: their values alone are 5 MB, held by the server.
    let held = answer["allocations"]["processes"][0]["inuse_bytes"]
        .as_u64()
        .expect("inuse_bytes");
    eprintln!("held: {held}");
    assert!(held > 5_000_000, "{held}");
    redis.stop();
}
