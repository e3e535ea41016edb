//! Acceptance of Python frames in memory stacks: Debian's `python3` (3.11, the interpreter
//! linked into the executable) running a service that leaks, its leak named by the Python
//! function and line that keeps the memory, with the callers up to the module level, in place
//! of the interpreter's evaluation loop.

use std::path::{Path, PathBuf};

use memlens_tests::{
    assert_near,
    pprof::{decode, inuse_in},
    stack_names, Agent, BpfMount, TestCgroup, Workload, MIB,
};
use serde_json::Value;

/// Debian's interpreter (not one on `PATH`, which may be another build).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/pyleak.py")
}

/// The line of `script()` whose text ends with `marker`.
fn line_of(marker: &str) -> u32 {
    let text = std::fs::read_to_string(script()).expect("pyleak.py");
    let at = text
        .lines()
        .position(|l| l.trim_end().ends_with(marker))
        .unwrap_or_else(|| panic!("no line ends with {marker:?}"));
    u32::try_from(at + 1).expect("line")
}

fn frames(entry: &Value) -> Vec<Value> {
    entry["user_stack"].as_array().cloned().unwrap_or_default()
}

/// The position of the first frame named `function` whose file is the script.
fn python_frame(entry: &Value, function: &str) -> Option<(usize, Value)> {
    frames(entry).into_iter().enumerate().find(|(_, f)| {
        f["function"] == function
            && f["file"]
                .as_str()
                .is_some_and(|file| file.ends_with("pyleak.py"))
    })
}

fn show(entry: &Value) -> String {
    frames(entry)
        .iter()
        .map(|f| match (f["function"].as_str(), f["line"].as_u64()) {
            (Some(name), Some(line)) => format!("{name}:{line}"),
            (Some(name), None) => name.to_string(),
            _ => format!("[{}]", f["module"].as_str().unwrap_or("?")),
        })
        .collect::<Vec<_>>()
        .join(" < ")
}

/// Runs the script leaking `mib` MiB the `kind` way in a cgroup of its own, and answers with
/// the agent's leaks of that cgroup once two censuses saw it all.
fn leak_report(
    agent: &Agent,
    kind: &str,
    mib: u64,
    seconds: u32,
) -> (Value, u64, Workload, TestCgroup) {
    let cgroup = TestCgroup::new(&format!("pyleak-{kind}"));
    let script = script();
    let (mib, seconds) = (mib.to_string(), seconds.to_string());
    let mut leak = Workload::start_program(
        &cgroup,
        Path::new(PYTHON),
        &[script.to_str().expect("utf-8 path"), kind, &mib, &seconds],
    );
    let line = leak.read_line();
    let leaked: u64 = line
        .strip_prefix("leaked ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pyleak said {line:?}"));
    agent.wait_censuses(2);
    (agent.cgroup_leaks(&cgroup.path, &[]), leaked, leak, cgroup)
}

#[test]
fn a_python_leak_is_named_by_its_function_and_line_with_its_callers() {
    if !Path::new(PYTHON).exists() {
        eprintln!("{PYTHON} not installed: skipped");
        return;
    }
    let agent = Agent::start(&[]);
    let (report, leaked, mut leak, cgroup) = leak_report(&agent, "bytearray", 96, 6);
    assert_eq!(leaked, 96 * MIB);
    let by_growth = report["by_growth"].as_array().expect("by_growth");
    let first = by_growth
        .first()
        .unwrap_or_else(|| panic!("no stacks: {report}"));
    eprintln!("first by growth: {}", show(first));
    for e in report["by_held"].as_array().expect("by_held") {
        eprintln!("held {}: {}", e["held_bytes"], show(e));
    }
    let (at, remember) =
        python_frame(first, "remember").unwrap_or_else(|| panic!("{}", show(first)));
    assert_eq!(
        remember["line"],
        line_of("# leak: bytearray"),
        "{}",
        show(first)
    );
    // The callers up to the module level, in order, after the leaking function.
    let (_, handle) = python_frame(first, "handle_request").expect("handle_request");
    let (_, main) = python_frame(first, "main").expect("main");
    let (_, module) = python_frame(first, "<module>").expect("<module>");
    let position = |f: &Value| {
        frames(first)
            .iter()
            .position(|g| g == f)
            .expect("in the stack")
    };
    assert!(
        at < position(&handle) && position(&handle) < position(&main),
        "{}",
        show(first)
    );
    assert!(position(&main) < position(&module), "{}", show(first));
    // Native frames inside: what touched the pages (the copy into the new bytearray).
    assert!(at > 0, "{}", show(first));
    // No evaluation loop frame is left where Python frames took its place.
    assert!(
        !stack_names(first)
            .iter()
            .any(|n| n == "_PyEval_EvalFrameDefault"),
        "{}",
        show(first)
    );

    // Held bytes of every stack through `remember`, against what the script kept.
    let by_held = report["by_held"].as_array().expect("by_held");
    let held: u64 = by_held
        .iter()
        .filter(|e| python_frame(e, "remember").is_some())
        .map(|e| e["held_bytes"].as_u64().expect("held"))
        .sum();
    assert_near("bytes held through remember()", held, leaked, 0.15);

    // The same frames in the pprof profile (with their file) and the flame graph.
    let dir = tempfile::tempdir().expect("tempdir");
    let (pprof_path, svg_path) = (dir.path().join("py.pb.gz"), dir.path().join("py.svg"));
    let exported = agent.leaks(&[
        "--cgroup",
        &cgroup.path,
        "--pprof",
        pprof_path.to_str().expect("path"),
        "--flamegraph",
        svg_path.to_str().expect("path"),
    ]);
    assert!(exported["by_held"].is_array(), "{exported}");
    let profile = decode(&std::fs::read(&pprof_path).expect("the profile"));
    assert_near(
        "pprof in-use bytes through remember()",
        inuse_in(&profile, "remember"),
        leaked,
        0.15,
    );
    let strings = &profile.string_table;
    assert!(
        profile
            .function
            .iter()
            .any(|f| strings[f.name as usize] == "remember"
                && strings[f.filename as usize].ends_with("pyleak.py")),
        "no remember() of pyleak.py among the profile's functions"
    );
    let svg = std::fs::read_to_string(&svg_path).expect("the flame graph");
    assert!(
        svg.contains("remember"),
        "the flame graph has no remember()"
    );

    // `memlens status` says what was read.
    let status = agent.json(&["status", "--json"]);
    let line = status["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .find(|c| c["name"] == "python frames")
        .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no python frames line: {status:#}"));
    eprintln!("status: {line}");
    assert!(line.contains(": 1 processes read"), "{line}");
    leak.stop();
}

#[test]
fn a_c_extension_allocating_for_python_reads_python_caller_then_extension() {
    if !Path::new(PYTHON).exists() {
        eprintln!("{PYTHON} not installed: skipped");
        return;
    }
    let agent = Agent::start(&[]);
    let (report, _, mut leak, _cgroup) = leak_report(&agent, "zlib", 48, 4);
    let by_held = report["by_held"].as_array().expect("by_held");
    let entry = by_held
        .iter()
        .find(|e| python_frame(e, "compress_all").is_some())
        .unwrap_or_else(|| {
            let all: Vec<String> = by_held.iter().map(show).collect();
            panic!("no stack through compress_all:\n{}", all.join("\n"))
        });
    eprintln!("through compress_all: {}", show(entry));
    let (at, compress) = python_frame(entry, "compress_all").expect("compress_all");
    assert_eq!(compress["line"], line_of("# leak: zlib"), "{}", show(entry));
    // Inside the Python caller: native frames of the extension and what it called.
    let inner = &frames(entry)[..at];
    assert!(
        inner
            .iter()
            .all(|f| f["file"].as_str().is_none_or(|file| !file.ends_with(".py"))),
        "{}",
        show(entry)
    );
    assert!(
        inner.iter().any(|f| f["module"]
            .as_str()
            .is_some_and(|m| m.starts_with("libz") || m.starts_with("python3"))),
        "{}",
        show(entry)
    );
    assert!(python_frame(entry, "<module>").is_some(), "{}", show(entry));
    leak.stop();
}

/// CPython builds beside Debian's, with the interpreter in `libpython3.x.so` (pyenv's, built
/// with `--enable-shared`), when this machine has them: 3.12 from the table of layouts, 3.13
/// from the offsets the runtime publishes, and a version before 3.11 saying it is not read.
fn other_interpreters() -> Vec<(String, PathBuf)> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))
        .map(|r| r.join("versions"));
    let Some(Ok(dir)) = root.map(std::fs::read_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().into_owned();
            let python = e.path().join("bin/python3");
            let wanted = ["3.10.", "3.12.", "3.13.", "3.14."]
                .iter()
                .any(|p| version.starts_with(p));
            (wanted && python.exists()).then_some((version, python))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn other_versions_and_libpython_are_read_or_say_why_not() {
    let interpreters = other_interpreters();
    if interpreters.is_empty() {
        eprintln!("no other CPython builds (pyenv) here: skipped");
        return;
    }
    let agent = Agent::start(&[]);
    let script = script();
    let runs: Vec<(String, Workload, TestCgroup)> = interpreters
        .iter()
        .map(|(version, python)| {
            let cgroup = TestCgroup::new(&format!("pyleak-{}", version.replace('.', "-")));
            let leak = Workload::start_program(
                &cgroup,
                python,
                &[script.to_str().expect("utf-8 path"), "bytearray", "32", "3"],
            );
            (version.clone(), leak, cgroup)
        })
        .collect();
    let mut runs: Vec<(String, Workload, TestCgroup)> = runs
        .into_iter()
        .map(|(version, mut leak, cgroup)| {
            let line = leak.read_line();
            assert!(line.starts_with("leaked "), "{version}: {line:?}");
            (version, leak, cgroup)
        })
        .collect();
    agent.wait_censuses(2);
    for (version, leak, cgroup) in &mut runs {
        let report = agent.cgroup_leaks(&cgroup.path, &[]);
        let by_held = report["by_held"].as_array().expect("by_held");
        let shown: Vec<String> = by_held.iter().take(5).map(show).collect();
        eprintln!("{version}:\n  {}", shown.join("\n  "));
        if version.starts_with("3.10.") {
            assert!(
                by_held.iter().any(|e| stack_names(e)
                    .iter()
                    .any(|n| n.contains("CPython 3.10") && n.contains("read from 3.11 on"))),
                "{version}: no frame saying why"
            );
        } else {
            let entry = by_held
                .iter()
                .find(|e| python_frame(e, "remember").is_some())
                .unwrap_or_else(|| panic!("{version}: no stack through remember"));
            let (_, remember) = python_frame(entry, "remember").expect("remember");
            assert_eq!(remember["line"], line_of("# leak: bytearray"), "{version}");
            assert!(
                python_frame(entry, "main").is_some(),
                "{version}: {}",
                show(entry)
            );
            assert!(
                python_frame(entry, "<module>").is_some(),
                "{version}: {}",
                show(entry)
            );
        }
        leak.stop();
    }
}

#[test]
fn python_frames_outlive_an_agent_restart() {
    if !Path::new(PYTHON).exists() {
        eprintln!("{PYTHON} not installed: skipped");
        return;
    }
    let pins = BpfMount::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pin_dir = pins.pin_dir().display().to_string();
    let db = dir.path().join("history.db").display().to_string();
    let args = ["--pin-dir", pin_dir.as_str(), "--db", db.as_str()];
    let first = Agent::start(&args);
    let (report, leaked, mut leak, cgroup) = leak_report(&first, "bytearray", 48, 6);
    let held = |report: &Value| -> u64 {
        report["by_held"]
            .as_array()
            .expect("by_held")
            .iter()
            .filter(|e| {
                python_frame(e, "remember")
                    .is_some_and(|(_, f)| f["line"] == line_of("# leak: bytearray"))
            })
            .map(|e| e["held_bytes"].as_u64().expect("held"))
            .sum()
    };
    // What this test checks is that the names survive; how much of the leak they cover (the
    // samples before the process was found have none) is the first test's.
    let before = held(&report);
    eprintln!("first agent: {} MiB through remember()", before / MIB);
    assert!(
        before > leaked / 2,
        "{} MiB of {}",
        before / MIB,
        leaked / MIB
    );
    first.stop();

    // The stacks were unwound and their Python frames resolved by the first agent; the second
    // reads them back from its database.
    let second = Agent::start(&args);
    second.wait_censuses(2);
    let after = held(&second.cgroup_leaks(&cgroup.path, &[]));
    assert_near(
        "held through remember(), after the restart",
        after,
        before,
        0.1,
    );
    leak.stop();
}
