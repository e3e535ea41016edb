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
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

mod containerfile;
mod daemonset;
mod dashboard;

use daemonset::agent_container;

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
