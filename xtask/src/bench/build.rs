//! Build times a developer lives with: a clean release build of the binary, and a one-line
//! change in the event engine until its unit tests are green (the engine's crate needs neither
//! the BPF toolchain nor the agent's 300 dependencies).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{ebpf_build, util};

/// Runs `cmd` and returns how long it took (it must succeed).
fn timed(cmd: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    util::run(cmd)?;
    Ok(started.elapsed())
}

/// `cargo xtask bench build`.
pub fn build(root: &Path, edits: usize) -> Result<()> {
    let target = tempfile_dir(root)?;
    // A clean build: no target directory, and the kernel programs built again too.
    let _ = std::fs::remove_dir_all(ebpf_build::ebpf_dir(root).join("target"));
    let clean = timed(
        Command::new("cargo")
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--package", "memlens"]),
    )?;
    let _ = std::fs::remove_dir_all(&target);
    println!(
        "clean release build of memlens: {:.0} s",
        clean.as_secs_f64()
    );

    // One line changed in the engine, then its tests (warm: everything else is built).
    let file = root.join("engine/src/trend.rs");
    let original = std::fs::read_to_string(&file).context("engine/src/trend.rs")?;
    let test = |crate_name: &str| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root)
            .args(["test", "--package", crate_name, "--quiet"]);
        cmd
    };
    let result = (|| -> Result<Vec<(String, Vec<Duration>)>> {
        let mut figures = Vec::new();
        for krate in ["memlens-engine", "memlens"] {
            util::run(&mut test(krate))?;
            let mut times = Vec::new();
            for n in 0..edits {
                std::fs::write(
                    &file,
                    format!("{original}\n/// Edited by `cargo xtask bench build` ({n}).\nconst _EDITED: u32 = {n};\n"),
                )?;
                times.push(timed(&mut test(krate))?);
            }
            figures.push((krate.to_string(), times));
        }
        Ok(figures)
    })();
    std::fs::write(&file, &original).context("restoring engine/src/trend.rs")?;
    for (krate, mut times) in result? {
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "one-line engine change to green `cargo test -p {krate}`: median {:.1} s, fastest {:.1} s ({} edits)",
            median.as_secs_f64(),
            times[0].as_secs_f64(),
            times.len()
        );
    }
    Ok(())
}

/// A fresh target directory for the clean build, beside the workspace's own.
fn tempfile_dir(root: &Path) -> Result<std::path::PathBuf> {
    let dir = root.join("target").join("bench-clean-build");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(dir)
}
