//! The Kubernetes deployment in deploy/, checked offline: no cluster, no network, no root.
//!
//! - Every manifest validates, strictly (unknown fields are errors), against the schemas of a
//!   pinned Kubernetes version, with `kubernetes-validate` (PyPI; it bundles the schemas), which
//!   `cargo xtask setup` installs into `target/tools/kubernetes-validate/`. The ServiceMonitor is
//!   a custom resource those schemas lack: it is checked here, field by field, against the
//!   Service and the DaemonSet it must scrape.
//! - The DaemonSet and the image's default command run `memlens agent` with flags the binary
//!   has; the DaemonSet's args, with the ConfigMap's config file, get past the agent's argument
//!   and config checks (run as an unprivileged user, the agent stops at its root check).
//! - The Containerfile builds with the README's commands (`cargo xtask setup`, then the release
//!   build) and ships the `memlens` binary alone, its debug info stripped as the footprint
//!   benchmark measures it.
//! - The Grafana dashboard queries the series the agent exports, in PromQL that `promtool`
//!   parses, through the `${DS_PROMETHEUS}` data source variable.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The Kubernetes version the manifests must be valid for (the oldest one supported).
const KUBERNETES_VERSION: &str = "1.30.0";

/// API groups of custom resources (no schema in kubernetes-validate): checked in Rust instead.
const CUSTOM_RESOURCE_GROUPS: &[&str] = &["monitoring.coreos.com/"];

/// Series the dashboard must chart: the cAdvisor-compatible ones and memlens' own.
const DASHBOARD_SERIES: &[&str] = &[
    "container_memory_working_set_bytes",
    "container_memory_usage_bytes",
    "container_memory_cache",
    "container_memory_rss",
    "container_oom_events_total",
    "memlens_events_open",
    "memlens_file_cache_bytes",
    "memlens_stack_held_bytes",
    "memlens_oom_kills_total",
    "memlens_restarts_total",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is one level below the workspace root")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every YAML file under deploy/, sorted.
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    assert!(
        !out.is_empty(),
        "no manifests under {}",
        deploy_dir().display()
    );
    out
}

/// The YAML documents of a manifest (separated by `---` lines), as JSON values; documents
/// holding only comments are left out.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let doc: Value = serde_norway::from_str(current)
            .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
        if !doc.is_null() {
            assert!(
                doc.is_object(),
                "{}: a document is not a mapping: {doc}",
                path.display()
            );
            docs.push(doc);
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// Every document of every manifest, with the file it is in.
fn all_documents() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .flat_map(|path| {
            documents(&path)
                .into_iter()
                .map(move |doc| (path.clone(), doc))
        })
        .collect()
}

fn is_custom_resource(doc: &Value) -> bool {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    CUSTOM_RESOURCE_GROUPS
        .iter()
        .any(|group| api_version.starts_with(group))
}

/// The one document of this kind (and name, when given).
fn only<'a>(docs: &'a [(PathBuf, Value)], kind: &str, name: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"] == kind)
        .filter(|doc| name.is_none_or(|n| doc["metadata"]["name"] == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} {} in deploy/, found {}",
        name.unwrap_or_default(),
        found.len()
    );
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn array_of<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

/// The validator `cargo xtask setup` installs; a clear failure when it is missing.
fn kubernetes_validate() -> PathBuf {
    let bin = repo_root()
        .join("target")
        .join("tools")
        .join("kubernetes-validate")
        .join("bin")
        .join("kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (it installs kubernetes-validate into a \
         virtualenv there)",
        bin.display()
    );
    bin
}

/// Runs kubernetes-validate, strictly, on `files`; returns (success, stdout and stderr).
fn validate(files: &[&Path]) -> (bool, String) {
    let bin = kubernetes_validate();
    let out = Command::new(&bin)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run `cargo xtask setup` to reinstall it",
                bin.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_are_valid_for_the_pinned_kubernetes_version() {
    let mut files = Vec::new();
    for path in manifests() {
        let docs = documents(&path);
        let custom = docs.iter().filter(|d| is_custom_resource(d)).count();
        if custom == 0 {
            files.push((path, docs.len()));
        } else {
            // Checked by service_monitor_scrapes_the_agents_metrics_port.
            assert_eq!(
                custom,
                docs.len(),
                "{}: keep custom resources in a file of their own, so the built-in kinds are \
                 all validated",
                path.display()
            );
        }
    }
    assert!(!files.is_empty(), "no built-in Kubernetes manifests");
    let paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
    let (ok, output) = validate(&paths);
    // A kind without a schema (a typo, a CRD) is only a warning to kubernetes-validate, with
    // exit status 0: every document must say "passed".
    let unexpected: Vec<&str> = output
        .lines()
        .filter(|l| !(l.starts_with("INFO ") && l.contains(" passed for resource ")))
        .collect();
    assert!(
        ok && unexpected.is_empty(),
        "kubernetes-validate --strict for Kubernetes {KUBERNETES_VERSION} failed:\n{output}"
    );
    for (path, count) in &files {
        let prefix = format!("INFO {} passed for resource ", path.display());
        let passed = output.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(
            passed,
            *count,
            "{}: {count} documents but {passed} validated:\n{output}",
            path.display()
        );
    }

    // The validator itself: strict, and a failure is a failure (an unknown field in a pod).
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  hostPIDD: true\n  \
         containers:\n    - name: x\n      image: x\n",
    )
    .expect("write");
    let (ok, output) = validate(&[&bad]);
    assert!(
        !ok && output.contains("hostPIDD"),
        "kubernetes-validate --strict accepted an unknown field:\n{output}"
    );
}

#[test]
fn service_monitor_scrapes_the_agents_metrics_port() {
    let docs = all_documents();
    let (file, monitor) = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ServiceMonitor")
        .expect("no ServiceMonitor under deploy/");
    assert_eq!(
        file,
        &deploy_dir().join("servicemonitor.yaml"),
        "the ServiceMonitor (a CRD) belongs in deploy/servicemonitor.yaml"
    );
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let namespace = str_of(
        &monitor["metadata"]["namespace"],
        "ServiceMonitor namespace",
    );

    // The selector picks exactly the agents' Service, in a namespace it looks in.
    let match_labels = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .filter(|m| !m.is_empty())
        .expect("ServiceMonitor spec.selector.matchLabels is missing or empty");
    let watched: Vec<&str> = match monitor["spec"]["namespaceSelector"]["matchNames"].as_array() {
        Some(names) => names.iter().filter_map(Value::as_str).collect(),
        None => vec![namespace],
    };
    let selected: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "Service")
        .filter(|d| {
            d["metadata"]["namespace"]
                .as_str()
                .is_some_and(|ns| watched.contains(&ns))
        })
        .filter(|d| {
            match_labels
                .iter()
                .all(|(k, v)| &d["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(
        selected.len(),
        1,
        "the ServiceMonitor's selector {match_labels:?} in {watched:?} must match exactly one \
         Service"
    );
    let service = selected[0];

    // Each endpoint scrapes the Service's port `metrics`, keeping the workload's labels.
    let endpoints = array_of(&monitor["spec"]["endpoints"], "ServiceMonitor endpoints");
    assert!(!endpoints.is_empty(), "the ServiceMonitor has no endpoints");
    for endpoint in endpoints {
        assert_eq!(endpoint["port"], "metrics", "endpoint {endpoint}");
        if !endpoint["path"].is_null() {
            assert_eq!(endpoint["path"], "/metrics", "endpoint {endpoint}");
        }
        assert_eq!(
            endpoint["honorLabels"], true,
            "without honorLabels Prometheus renames the cAdvisor-compatible series' namespace, \
             pod and container labels to exported_*"
        );
    }
    let ports = array_of(&service["spec"]["ports"], "Service ports");
    let port = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("the Service has no port named `metrics`");
    assert_eq!(port["port"], 9464, "Service port `metrics`");

    // And the Service reaches the agents: its selector matches the DaemonSet's pods, and its
    // target port is the container's metrics port.
    let daemonset = only(&docs, "DaemonSet", Some("memlens"));
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())
        .expect("the Service has no selector");
    for (k, v) in selector {
        assert_eq!(
            &pod_labels[k], v,
            "the Service's selector {k}={v} does not match the DaemonSet's pods"
        );
    }
    let container = agent_container(daemonset);
    let container_ports = array_of(&container["ports"], "container ports");
    let target = &port["targetPort"];
    assert!(
        container_ports
            .iter()
            .any(|p| &p["name"] == target || &p["containerPort"] == target),
        "the Service's targetPort {target} is none of the container's ports"
    );
}

fn agent_container(daemonset: &Value) -> &Value {
    let containers = array_of(
        &daemonset["spec"]["template"]["spec"]["containers"],
        "DaemonSet containers",
    );
    containers
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the DaemonSet has no container named `agent`")
}

/// The long flags `memlens agent --help` lists.
fn agent_flags() -> Vec<String> {
    let bin = memlens_tests::memlens_bin();
    let out = Command::new(&bin)
        .args(["agent", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} agent --help: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        flags.iter().any(|f| f == "--db"),
        "cannot read the flags from `memlens agent --help`:\n{help}"
    );
    flags
}

/// Checks that `args` (`agent` then flags and values) use only flags the agent has; returns them.
fn check_agent_args(args: &[String], known: &[String], what: &str) -> Vec<String> {
    assert_eq!(
        args.first().map(String::as_str),
        Some("agent"),
        "{what} must start with the `agent` subcommand: {args:?}"
    );
    let unknown: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| !known.iter().any(|k| k == flag))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what}: flags that `memlens agent --help` does not list: {unknown:?}"
    );
    args.to_vec()
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn daemonset_runs_the_agent_with_flags_and_config_it_accepts() {
    let docs = all_documents();
    let daemonset = only(&docs, "DaemonSet", Some("memlens"));
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = agent_container(daemonset);
    assert!(
        container["command"].is_null(),
        "the image's ENTRYPOINT (memlens) runs the args; no `command`"
    );
    assert_eq!(pod["hostPID"], true, "the agent needs the host's PIDs");
    let args: Vec<String> = array_of(&container["args"], "agent container args")
        .iter()
        .map(|a| str_of(a, "an arg").to_string())
        .collect();
    let known = agent_flags();
    let runnable = check_agent_args(&args, &known, "the DaemonSet's args");

    // The metrics address is the port the container exposes and the probes ask.
    let metrics_addr = flag_value(&args, "--metrics-addr").expect("--metrics-addr in the args");
    let metrics_port: u64 = metrics_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("--metrics-addr {metrics_addr} has no port"));
    assert!(
        array_of(&container["ports"], "container ports")
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == metrics_port),
        "no container port `metrics` = {metrics_port}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == metrics_port || get["port"] == "metrics",
            "{probe} asks port {}, the agent serves {metrics_port}",
            get["port"]
        );
    }
    let node_name = array_of(&container["env"], "container env")
        .iter()
        .find(|e| e["name"] == "MEMLENS_NODE_NAME")
        .expect("env MEMLENS_NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // --config and --db are on mounted volumes: the config file is a key of the ConfigMap.
    let mounts = array_of(&container["volumeMounts"], "volumeMounts");
    let volumes = array_of(&pod["volumes"], "volumes");
    let mount_of = |path: &str| -> (&Value, &Value) {
        let mount = mounts
            .iter()
            .filter(|m| Path::new(path).starts_with(str_of(&m["mountPath"], "mountPath")))
            .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
            .unwrap_or_else(|| panic!("{path} is on no volume mount"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        (mount, volume)
    };
    let config_path = flag_value(&args, "--config").expect("--config in the args");
    let (mount, volume) = mount_of(config_path);
    let config_map = only(
        &docs,
        "ConfigMap",
        Some(str_of(
            &volume["configMap"]["name"],
            "the config volume's ConfigMap",
        )),
    );
    let key = Path::new(config_path)
        .strip_prefix(str_of(&mount["mountPath"], "mountPath"))
        .expect("under the mount")
        .to_string_lossy()
        .into_owned();
    let config = str_of(&config_map["data"][&key], "the ConfigMap's config file");
    let db = flag_value(&args, "--db").expect("--db in the args");
    let (mount, volume) = mount_of(db);
    assert!(
        !volume["hostPath"].is_null() && mount["readOnly"] != true,
        "--db {db} must be on a writable hostPath volume (history survives the pod)"
    );
    // The pins (the agent's default --pin-dir) live on the host's BPF file system.
    let pin_dir = flag_value(&args, "--pin-dir").unwrap_or("/sys/fs/bpf/memlens");
    let (mount, volume) = mount_of(pin_dir);
    assert!(
        volume["hostPath"]["path"] == "/sys/fs/bpf"
            && mount["readOnly"] != true
            && mount["mountPropagation"] == "Bidirectional",
        "--pin-dir {pin_dir} must be on the host's /sys/fs/bpf, writable, with Bidirectional \
         propagation (kernel records outlive the pod): {mount} {volume}"
    );

    // The real parser accepts the args and the config: run the agent as an unprivileged user
    // with the ConfigMap's file, and it gets as far as its root check (it parses its arguments
    // and loads the config before that).
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let config_file = dir.path().join("memlens.toml");
    fs::write(&config_file, config).expect("write config");
    fs::set_permissions(&config_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut runnable = runnable;
    let mut replace = |flag: &str, value: &Path| {
        let i = runnable
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in the args"));
        runnable[i + 1] = value.to_string_lossy().into_owned();
    };
    replace("--config", &config_file);
    replace("--db", &dir.path().join("history.db"));
    let bin = memlens_tests::memlens_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(&runnable)
        .arg("--socket")
        .arg(dir.path().join("memlens.sock"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // nobody: the agent must never really start here.
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} as nobody: {e} (it must be readable and executable by all)",
            bin.display()
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs root"),
        "`memlens {}` with the ConfigMap's config should stop only at the root check; it \
         said:\n{stderr}",
        runnable.join(" ")
    );
}

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

#[test]
fn grafana_dashboard_queries_the_exported_series() {
    let path = deploy_dir().join("grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let variables = array_of(&dashboard["templating"]["list"], "templating.list");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no data source variable DS_PROMETHEUS"
    );
    let mut exprs = Vec::new();
    for panel in array_of(&dashboard["panels"], "panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = &panel["title"];
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title}: data source"
        );
        for target in array_of(&panel["targets"], "targets") {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title}: a query's data source"
            );
            exprs.push(str_of(&target["expr"], "expr").to_string());
        }
    }
    for series in DASHBOARD_SERIES {
        assert!(
            exprs.iter().any(|e| e.contains(series)),
            "no panel charts {series}"
        );
    }

    // Valid PromQL: promtool (Debian's prometheus package, installed by `cargo xtask setup`)
    // checks them as recording rules. Grafana's own variable is replaced by a duration; the
    // dashboard's variables only appear inside label matchers' strings.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_file = dir.path().join("dashboard-rules.yaml");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = Value::String(expr.replace("$__rate_interval", "5m"));
        rules.push_str(&format!(
            "      - record: panel_query_{i}\n        expr: {expr}\n"
        ));
    }
    fs::write(&rules_file, &rules).expect("write rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool: {e}; run `cargo xtask setup` (Debian's prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool rejects the dashboard's queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
