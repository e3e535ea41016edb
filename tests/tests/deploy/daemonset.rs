//! The DaemonSet runs the agent with flags and a config file the agent accepts.

use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};

use super::*;

pub(crate) fn agent_container(daemonset: &Value) -> &Value {
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
pub(crate) fn agent_flags() -> Vec<String> {
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
pub(crate) fn check_agent_args(args: &[String], known: &[String], what: &str) -> Vec<String> {
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
