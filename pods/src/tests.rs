//! The pod directory against node-shaped log directories and API objects.

use std::{collections::HashMap, path::Path};

use super::*;
use crate::log_dirs::{parse_container_log, parse_pod_dir, pod_of_log_target, ContainerLog};

const COREDNS_UID: &str = "0f3c5c7e-8d1c-4c0e-9f5e-1a2b3c4d5e6f";
const COREDNS_POD: &str = "coredns-5d78c9869d-4xz7b";
const COREDNS_ID: &str = "3b8e2f1a9c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
const SIDECAR_ID: &str = "9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// A static pod: its UID is the hash of its manifest.
const APISERVER_UID: &str = "5d1d3b3e8f0c4a7b9e2d6c1a0f4b8e7d";
const APISERVER_ID: &str = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc";

/// A node's `/var/log/pods` and `/var/log/containers`.
struct Node {
    dir: tempfile::TempDir,
    dirs: LogDirs,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let dirs = LogDirs {
            pods: dir.path().join("pods"),
            containers: dir.path().join("containers"),
        };
        std::fs::create_dir(&dirs.pods).unwrap();
        std::fs::create_dir(&dirs.containers).unwrap();
        Node { dir, dirs }
    }

    /// A pod directory with one directory per container, as the kubelet makes them.
    fn pod(&self, namespace: &str, pod: &str, uid: &str, containers: &[&str]) {
        for container in containers {
            let dir = self
                .dirs
                .pods
                .join(format!("{namespace}_{pod}_{uid}/{container}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("0.log"), "").unwrap();
        }
    }

    /// The symlink the kubelet makes for a container's current log.
    fn container(&self, namespace: &str, pod: &str, uid: &str, container: &str, id: &str) {
        let target = self
            .dirs
            .pods
            .join(format!("{namespace}_{pod}_{uid}/{container}/0.log"));
        let link = self
            .dirs
            .containers
            .join(format!("{pod}_{namespace}_{container}-{id}.log"));
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    fn coredns(&self) {
        self.pod("kube-system", COREDNS_POD, COREDNS_UID, &["coredns"]);
        self.container(
            "kube-system",
            COREDNS_POD,
            COREDNS_UID,
            "coredns",
            COREDNS_ID,
        );
    }
}

fn meta(namespace: &str, pod: &str, container: Option<&str>) -> PodMeta {
    PodMeta {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.map(Into::into),
    }
}

#[test]
fn log_directories_name_pods_and_containers() {
    let node = Node::new();
    node.coredns();
    node.pod(
        "kube-system",
        "kube-apiserver-n1",
        APISERVER_UID,
        &["kube-apiserver"],
    );
    node.container(
        "kube-system",
        "kube-apiserver-n1",
        APISERVER_UID,
        "kube-apiserver",
        APISERVER_ID,
    );
    // Not the kubelet's: skipped.
    std::fs::create_dir(node.dirs.pods.join("not-a-pod")).unwrap();
    std::fs::write(node.dirs.containers.join("README.log"), "").unwrap();
    let names = PodDirectory::from_log_dirs(&node.dirs);

    let coredns = meta("kube-system", COREDNS_POD, Some("coredns"));
    assert_eq!(names.lookup(COREDNS_UID, Some(COREDNS_ID)), Some(coredns));
    // The systemd driver's UID, and the API's form of the id.
    let systemd_uid = COREDNS_UID.replace('-', "_");
    let api_id = format!("containerd://{COREDNS_ID}");
    assert_eq!(
        names
            .lookup(&systemd_uid, Some(&api_id))
            .unwrap()
            .to_string(),
        "kube-system/coredns-5d78c9869d-4xz7b/coredns"
    );
    // The pod's own cgroup, and a container the logs do not list (yet).
    let pod_only = meta("kube-system", COREDNS_POD, None);
    assert_eq!(names.lookup(COREDNS_UID, None), Some(pod_only.clone()));
    assert_eq!(names.lookup(COREDNS_UID, Some(SIDECAR_ID)), Some(pod_only));
    // Static pods' UIDs are 32 hex.
    assert_eq!(
        names.lookup(APISERVER_UID, Some(APISERVER_ID)),
        Some(meta(
            "kube-system",
            "kube-apiserver-n1",
            Some("kube-apiserver")
        ))
    );
    assert_eq!(
        names.lookup("6d1a2f5e-7b1c-4a8e-9f3d-2c4b5a6e7f80", None),
        None
    );
    assert_eq!(names.lookup("", Some(COREDNS_ID)), None);
    assert_eq!(names.source(), "kubelet log directories (2 pods)");
}

#[test]
fn symlinks_name_containers_without_or_despite_pod_directories() {
    let node = Node::new();
    // The pod directory is not mounted, but the symlink's target names it.
    node.container(
        "default",
        "web-0",
        COREDNS_UID,
        "nginx",
        COREDNS_ID.to_uppercase().as_str(),
    );
    // A symlink somewhere else: the only pod of that name holds it.
    node.pod("monitoring", "agent-7k2p9", APISERVER_UID, &["agent"]);
    std::os::unix::fs::symlink(
        "/var/lib/docker/containers/x/x-json.log",
        node.dirs
            .containers
            .join(format!("agent-7k2p9_monitoring_agent-{SIDECAR_ID}.log")),
    )
    .unwrap();
    let names = PodDirectory::from_log_dirs(&node.dirs);
    assert_eq!(
        names.lookup(COREDNS_UID, Some(COREDNS_ID)),
        Some(meta("default", "web-0", Some("nginx")))
    );
    assert_eq!(
        names.lookup(APISERVER_UID, Some(SIDECAR_ID)),
        Some(meta("monitoring", "agent-7k2p9", Some("agent")))
    );
}

#[test]
fn hosts_without_kubernetes_have_no_pods() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = LogDirs {
        pods: dir.path().join("absent"),
        containers: dir.path().join("absent-too"),
    };
    let names = PodDirectory::from_log_dirs(&dirs);
    assert_eq!(names.lookup(COREDNS_UID, Some(COREDNS_ID)), None);
    assert_eq!(names.source(), "no Kubernetes pods on this host");
    assert_eq!(
        LogDirs::default().containers,
        Path::new("/var/log/containers")
    );
}

#[test]
fn a_miss_rereads_the_log_directories() {
    let node = Node::new();
    let names = PodDirectory::start_with(node.dirs.clone(), None, Duration::ZERO);
    assert_eq!(names.lookup(COREDNS_UID, Some(COREDNS_ID)), None);
    node.coredns();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match names.lookup(COREDNS_UID, Some(COREDNS_ID)) {
            Some(found) if found.container.is_some() => break found,
            _ if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => panic!("not re-read: {}", names.source()),
        }
    };
    assert_eq!(found, meta("kube-system", COREDNS_POD, Some("coredns")));

    // Deleted pods stay named for a while.
    std::fs::remove_dir_all(node.dir.path().join("pods")).unwrap();
    std::fs::remove_dir_all(node.dir.path().join("containers")).unwrap();
    let mut logs = write(&names.inner.names.logs);
    let now = Instant::now();
    logs.replace_all(scan(&node.dirs), now);
    assert_eq!(logs.live(), 0);
    assert!(logs.pods.contains_key(COREDNS_UID));
    logs.replace_all(HashMap::new(), now + RETAIN);
    assert!(logs.pods.is_empty());
}

#[test]
fn file_names_split_exactly() {
    assert_eq!(
        parse_container_log(&format!(
            "coredns-5d78c9869d-4xz7b_kube-system_coredns-{COREDNS_ID}.log"
        )),
        Some(ContainerLog {
            pod: COREDNS_POD.into(),
            namespace: "kube-system".into(),
            container: "coredns".into(),
            id: COREDNS_ID.into(),
        })
    );
    for bad in [
        format!("coredns_kube-system_coredns-{}.log", &COREDNS_ID[1..]),
        format!("coredns_kube-system_core_dns-{COREDNS_ID}.log"),
        format!("_kube-system_coredns-{COREDNS_ID}.log"),
        format!("coredns_kube-system_coredns-{COREDNS_ID}"),
        "coredns.log".into(),
    ] {
        assert_eq!(parse_container_log(&bad), None, "{bad}");
    }
    assert!(parse_pod_dir("kube-system_coredns_not-a-uid").is_none());
    assert!(parse_pod_dir("kube-system_coredns").is_none());
    assert_eq!(
        pod_of_log_target(Path::new(&format!(
            "/var/log/pods/kube-system_{COREDNS_POD}_{COREDNS_UID}/coredns/3.log"
        )))
        .map(|(uid, pod)| (uid, pod.pod)),
        Some((COREDNS_UID.into(), COREDNS_POD.into()))
    );
}

#[test]
fn container_ids_lose_their_runtime_prefix() {
    for prefix in ["containerd://", "cri-o://", "docker://", ""] {
        assert_eq!(
            normalize_container_id(&format!("{prefix}{}", COREDNS_ID.to_uppercase())),
            COREDNS_ID
        );
    }
    assert_eq!(
        normalize_uid(" 0F3C5C7E_8D1C_4C0E_9F5E_1A2B3C4D5E6F\n"),
        COREDNS_UID
    );
}

/// Pods as the Kubernetes API serves them.
#[cfg(feature = "kube")]
mod api {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::{
        api::{node_name, record_from_pod},
        table::PodRecord,
    };

    fn coredns_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": COREDNS_POD,
                "namespace": "kube-system",
                "uid": COREDNS_UID,
            },
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "coredns"}, {"name": "sidecar"}],
            },
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{
                    "name": "init-config",
                    "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{APISERVER_ID}"),
                }],
                "containerStatuses": [
                    {
                        "name": "coredns",
                        "image": "coredns", "imageID": "", "ready": true, "restartCount": 1,
                        "containerID": format!("containerd://{COREDNS_ID}"),
                        "lastState": {"terminated": {
                            "exitCode": 137, "reason": "OOMKilled",
                            "containerID": format!("containerd://{SIDECAR_ID}"),
                        }},
                    },
                    // Not started yet: no id.
                    {
                        "name": "sidecar",
                        "image": "envoy", "imageID": "", "ready": false, "restartCount": 0,
                    },
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn api_pods_become_records() {
        let (uid, record) = record_from_pod(&coredns_pod()).unwrap();
        assert_eq!(uid, COREDNS_UID);
        assert_eq!(
            record,
            PodRecord {
                namespace: "kube-system".into(),
                pod: COREDNS_POD.into(),
                containers: HashMap::from([
                    (COREDNS_ID.to_string(), "coredns".to_string()),
                    (SIDECAR_ID.to_string(), "coredns".to_string()),
                    (APISERVER_ID.to_string(), "init-config".to_string()),
                ]),
            }
        );
        assert!(record_from_pod(&Pod::default()).is_none());
    }

    #[test]
    fn api_names_are_preferred_and_log_directories_fill_in() {
        let node = Node::new();
        node.coredns();
        // The logs know a container the API's status does not list yet.
        node.container(
            "kube-system",
            COREDNS_POD,
            COREDNS_UID,
            "sidecar",
            "ab".repeat(32).as_str(),
        );
        let names = PodDirectory::from_log_dirs(&node.dirs);
        {
            let mut api = write(&names.inner.names.api);
            let (uid, mut record) = record_from_pod(&coredns_pod()).unwrap();
            record.pod = "renamed-by-api".into();
            api.table.update(uid, record, Instant::now());
            api.node = "n1".into();
            api.state = ApiState::Connecting;
        }
        assert_eq!(
            names.source(),
            "kubelet log directories (1 pod; Kubernetes API: connecting)"
        );
        write(&names.inner.names.api).state = ApiState::Ready;
        assert_eq!(names.source(), "Kubernetes API (node n1, 1 pod)");
        assert_eq!(
            names.lookup(COREDNS_UID, Some(SIDECAR_ID)),
            Some(meta("kube-system", "renamed-by-api", Some("coredns")))
        );
        assert_eq!(
            names.lookup(COREDNS_UID, Some(&"ab".repeat(32))),
            Some(meta("kube-system", "renamed-by-api", Some("sidecar")))
        );

        // A restart: the new status lists other ids; the old ones stay named for a while.
        let now = Instant::now();
        let mut api = write(&names.inner.names.api);
        let record = PodRecord {
            namespace: "kube-system".into(),
            pod: COREDNS_POD.into(),
            containers: HashMap::from([("cd".repeat(32), "coredns".into())]),
        };
        api.table.update(COREDNS_UID.into(), record.clone(), now);
        assert_eq!(api.table.pods[COREDNS_UID].containers.len(), 4);
        api.table
            .update(COREDNS_UID.into(), record.clone(), now + RETAIN);
        assert_eq!(api.table.pods[COREDNS_UID].containers.len(), 1);
        api.table.remove(COREDNS_UID, now);
        assert_eq!(api.table.live(), 0);
        drop(api);
        assert_eq!(
            names.source(),
            "kubelet log directories (1 pod; the Kubernetes API lists no pods on node n1: is MEMLENS_NODE_NAME set?)"
        );
        write(&names.inner.names.api).state = ApiState::Failing("connection refused".into());
        assert_eq!(
            names.source(),
            "kubelet log directories (1 pod; Kubernetes API unavailable: connection refused)"
        );
    }

    #[test]
    fn node_name_from_env_or_hostname() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(node_name(some("n1"), some("Host")), some("n1"));
        assert_eq!(node_name(some(" "), some("Worker-1\n")), some("worker-1"));
        assert_eq!(node_name(None, some("\n")), None);
    }
}
