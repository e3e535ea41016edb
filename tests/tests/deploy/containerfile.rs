//! The Containerfile builds with the README's commands and ships the `memlens` binary alone.

use super::{
    daemonset::{agent_flags, check_agent_args},
    *,
};

/// The Containerfile's instructions: (keyword, arguments), continuation lines joined,
/// comments left out.
fn containerfile() -> Vec<(String, String)> {
    let text = read(&deploy_dir().join("Containerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let joined = std::mem::take(&mut current);
                let (keyword, rest) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_string()));
            }
        }
    }
    instructions
}

fn exec_form(what: &str, value: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("{what} is not in exec form (a JSON list): {value}: {e}"));
    array_of(&v, what)
        .iter()
        .map(|a| str_of(a, what).to_string())
        .collect()
}

#[test]
fn containerfile_builds_with_the_readme_commands() {
    let instructions = containerfile();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(
        stages.len() >= 2,
        "a build stage and a runtime stage: {instructions:?}"
    );
    let (build_from, runtime_from) = (
        &instructions[stages[0]].1,
        &instructions[stages[stages.len() - 1]].1,
    );
    assert!(
        build_from == "debian:bookworm" || build_from.starts_with("debian:bookworm "),
        "the build stage is Debian 12 (the toolchain's packages are bookworm's): FROM {build_from}"
    );
    assert!(
        runtime_from.starts_with("debian:bookworm"),
        "the runtime stage has the build's C library: FROM {runtime_from}"
    );

    // The README's commands, in order, in the build stage.
    let readme = read(&repo_root().join("README.md"));
    assert!(
        readme.contains("cargo xtask setup"),
        "README names `cargo xtask setup`"
    );
    let build_stage = &instructions[stages[0]..stages[stages.len() - 1]];
    let runs: Vec<&str> = build_stage
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    let position = |what: &[&str]| {
        runs.iter()
            .position(|r| what.iter().any(|w| r.contains(w)))
            .unwrap_or_else(|| panic!("no RUN step runs `{}`: {runs:#?}", what[0]))
    };
    let setup = position(&["cargo xtask setup"]);
    // xtask's build_release (the build of `cargo xtask run` and `cargo xtask test`).
    let build = position(&[
        "cargo build --release --package memlens",
        "cargo build --release -p memlens",
    ]);
    assert!(
        setup < build,
        "`cargo xtask setup` must come before the build"
    );
    // The footprint `cargo xtask bench node` measures is the stripped binary's (xtask's
    // build_shipped): with its line tables the agent parses its own DWARF when it symbolizes.
    let strip = position(&["objcopy --strip-debug target/release/memlens"]);
    assert!(build < strip, "the binary is stripped after it is built");
    assert!(
        runs.iter().any(|r| r.contains("rustup")) || build_from.contains("rust"),
        "the build stage installs rustup's stable Rust, as the README expects"
    );

    // The runtime stage: the `memlens` binary alone, run as the entrypoint.
    let runtime = &instructions[stages[stages.len() - 1]..];
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "ADD")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(
        copies.len() == 1
            && copies[0].starts_with("--from=")
            && copies[0].contains("/target/release/memlens "),
        "the runtime stage copies only the release `memlens` binary: {copies:?}"
    );
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, r)| exec_form("ENTRYPOINT", r))
        .expect("no ENTRYPOINT in the runtime stage");
    assert_eq!(entrypoint, ["memlens"]);
    let cmd = runtime
        .iter()
        .find(|(k, _)| k == "CMD")
        .map(|(_, r)| exec_form("CMD", r))
        .expect("no CMD in the runtime stage");
    check_agent_args(&cmd, &agent_flags(), "the Containerfile's CMD");
}
