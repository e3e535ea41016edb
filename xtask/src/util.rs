//! Running commands, and the README's two jobs.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd`, inheriting stdio; fails with the command line if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the release binary (which embeds the kernel programs) and returns its path.
pub fn build_release(root: &Path) -> Result<std::path::PathBuf> {
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "memlens",
    ]))?;
    Ok(root.join("target").join("release").join("memlens"))
}

/// The release binary as deploy/Containerfile ships it: debug info stripped (symbols kept, so
/// the agent's own frames keep their names). Benchmarks of the agent's footprint measure this:
/// with its line tables the agent maps and parses ~160 MB of its own DWARF whenever it
/// symbolizes a stack of its own or of a `memlens` CLI process.
pub fn build_shipped(root: &Path) -> Result<std::path::PathBuf> {
    let built = build_release(root)?;
    let shipped = root.join("target").join("release").join("memlens-shipped");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&shipped))?;
    Ok(shipped)
}

/// `cargo xtask run`: starts the agent, then `memlens top --watch` in this terminal; stopping
/// the view (Ctrl-C or `q`) stops the agent too.
pub fn run_main_job(root: &Path, agent_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the agent loads kernel programs and needs root: run `sudo -E cargo xtask run`");
    }
    // The binary as shipped: the unstripped build's agent, symbolizing its own frames, parses
    // its own ~160 MB of line tables (about twice the shipped agent's memory on a busy node).
    let memlens = build_shipped(root)?;
    let log_path = root.join("target").join("memlens-agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    // The view stops the agent and leaves nothing attached, unless told where to keep it.
    let keep_nothing: &[&str] = if agent_args.iter().any(|a| a.starts_with("--pin-dir")) {
        &[]
    } else {
        &["--pin-dir", "none"]
    };
    let mut agent = Command::new(&memlens)
        .arg("agent")
        .args(keep_nothing)
        .args(agent_args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start memlens agent")?;
    eprintln!(
        "xtask: agent started (pid {}), log in {}",
        agent.id(),
        log_path.display()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("memlens agent exited ({status}):\n{log}");
        }
        let ready = Command::new(&memlens)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!(
                "memlens agent did not answer within 30 s; see {}",
                log_path.display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    // Ctrl-C reaches the whole foreground group: the view and the agent stop on it; this process
    // must outlive them to clean up, so it only notes the signal.
    extern "C" fn note_interrupt(_: libc::c_int) {}
    // SAFETY: installing a handler that does nothing (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            note_interrupt as *const () as libc::sighandler_t,
        )
    };
    let view = Command::new(&memlens).args(["top", "--watch"]).status();
    // SAFETY: plain kill(2) of the child we started, by pid.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    view.context("cannot run memlens top")?;
    Ok(())
}

/// `cargo xtask test`: lints, unit tests, then the integration tests (root, real kernel).
pub fn run_tests(root: &Path, lint: bool, filter: Option<&str>) -> Result<()> {
    if lint {
        run(Command::new("cargo")
            .current_dir(root)
            .args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
        run(Command::new("cargo").current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The binary without the Kubernetes client (`--no-default-features`) builds too.
        run(Command::new("cargo").current_dir(root).args([
            "clippy",
            "--package",
            "memlens",
            "--no-default-features",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Release everywhere: the dependencies are then compiled once for the unit tests, the agent
    // binary and the integration tests alike.
    run(Command::new("cargo").current_dir(root).args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "memlens-tests",
    ]))?;
    if !is_root() {
        bail!("the integration tests load kernel programs and create cgroups: run them as root");
    }
    // The tests build C and C++ workloads with gcc and g++, Go ones with golang-go, and read
    // pprof profiles back with `go tool pprof`; an allocator trace is tested on Debian's
    // redis-server (jemalloc), filled by redis-benchmark.
    crate::setup::install_packages(&["gcc", "g++", "golang-go", "redis-server", "redis-tools"])?;
    let memlens = build_release(root)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env("MEMLENS_BIN", &memlens)
        .args(["test", "--release", "--package", "memlens-tests", "--"])
        // One at a time: they measure memory and timing on a 2-core machine.
        .args(["--test-threads", "1"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    run(&mut cmd)
}
