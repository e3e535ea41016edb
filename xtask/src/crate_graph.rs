//! The workspace's crate graph is the agent's data flow (`docs/design.md`): kernel maps ->
//! collectors -> model -> attribution and engine -> API, CLI and exporters. Cargo refuses cycles;
//! this test refuses the rest of the back edges, and keeps the kernel (and its BPF toolchain)
//! out of every crate but the kernel crate and the binary.

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        process::Command,
    };

    /// Each workspace crate and the workspace crates it may depend on (directly).
    const ALLOWED: &[(&str, &[&str])] = &[
        ("memlens-common", &[]),
        ("memlens-types", &[]),
        ("memlens-cgroup", &["memlens-types"]),
        ("memlens-procfs", &["memlens-types"]),
        ("memlens-pods", &["memlens-types"]),
        ("memlens-store", &["memlens-types"]),
        ("memlens-engine", &["memlens-types"]),
        ("memlens-exporters", &["memlens-types"]),
        ("memlens-cli", &["memlens-types"]),
        (
            "memlens-model",
            &["memlens-common", "memlens-types", "memlens-cgroup"],
        ),
        (
            "memlens-symbolize",
            &["memlens-common", "memlens-types", "memlens-procfs"],
        ),
        (
            "memlens-runtimes",
            &["memlens-common", "memlens-model", "memlens-procfs"],
        ),
        (
            "memlens-unwind",
            &[
                "memlens-model",
                "memlens-procfs",
                "memlens-symbolize",
                "memlens-runtimes",
            ],
        ),
        (
            "memlens-kernel",
            &[
                "memlens-common",
                "memlens-types",
                "memlens-model",
                "memlens-procfs",
            ],
        ),
        (
            "memlens-attribution",
            &[
                "memlens-types",
                "memlens-cgroup",
                "memlens-model",
                "memlens-procfs",
                "memlens-symbolize",
            ],
        ),
        (
            "memlens",
            &[
                "memlens-common",
                "memlens-types",
                "memlens-cgroup",
                "memlens-procfs",
                "memlens-pods",
                "memlens-store",
                "memlens-engine",
                "memlens-exporters",
                "memlens-cli",
                "memlens-model",
                "memlens-symbolize",
                "memlens-kernel",
                "memlens-unwind",
                "memlens-runtimes",
                "memlens-attribution",
            ],
        ),
        // Black-box tests drive the binary; developer commands build it.
        ("memlens-tests", &[]),
        ("xtask", &[]),
    ];

    /// `cargo metadata` of the workspace: each member's workspace dependencies, and which
    /// members have a build script.
    fn workspace() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata failed");
        let metadata: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        let packages = metadata["packages"].as_array().expect("packages");
        let members: BTreeSet<String> = packages
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        let mut deps = BTreeMap::new();
        let mut build_scripts = BTreeSet::new();
        for p in packages {
            let name = p["name"].as_str().expect("name").to_string();
            let on: BTreeSet<String> = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|d| members.contains(*d))
                .map(str::to_string)
                .collect();
            let builds = p["targets"].as_array().expect("targets").iter().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "custom-build"))
            });
            if builds {
                build_scripts.insert(name.clone());
            }
            deps.insert(name, on);
        }
        (deps, build_scripts)
    }

    #[test]
    fn crates_depend_only_on_crates_upstream_of_them() {
        let (deps, build_scripts) = workspace();
        let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
            .iter()
            .map(|(c, on)| (*c, on.iter().copied().collect()))
            .collect();
        for (krate, on) in &deps {
            let Some(may) = allowed.get(krate.as_str()) else {
                panic!("{krate} has no place in the crate graph: add it to ALLOWED (and docs/design.md)");
            };
            for dep in on {
                assert!(
                    may.contains(dep.as_str()),
                    "{krate} depends on {dep}, against the data flow (see docs/design.md)"
                );
            }
        }
        assert_eq!(
            build_scripts,
            BTreeSet::from(["memlens-kernel".to_string()]),
            "only the kernel crate builds the BPF programs"
        );
    }
}
