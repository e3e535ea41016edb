//! What a cgroup is, from its path alone: a Kubernetes pod or container (cgroupfs and systemd
//! drivers; containerd, CRI-O and Docker naming), a standalone container, a systemd unit, or a
//! plain cgroup.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Kubernetes QoS class, from the `kubepods` level of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Container runtime, from the container scope's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A 64-hex id under a pod (cgroupfs driver): the runtime is not in the path.
    Unknown,
}

/// What a cgroup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// A pod, or a container of a pod when `container_id` is set.
    Pod {
        pod_uid: String,
        qos: QosClass,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime: Option<Runtime>,
        /// CRI-O's `crio-conmon-<id>` monitor process, not the container itself.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        conmon: bool,
    },
    /// The QoS-level parent of pods (`kubepods`, `kubepods/burstable`, ...).
    PodsRoot {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qos: Option<QosClass>,
    },
    /// A container outside Kubernetes (docker, podman).
    Container {
        runtime: Runtime,
        container_id: String,
    },
    /// A systemd unit (`.service`, `.scope`, `.slice`).
    SystemdUnit { unit: String },
    /// Anything else.
    Cgroup,
}

impl Workload {
    /// Classifies the cgroup at hierarchy path `path` (e.g. `/kubepods/burstable/pod<uid>/<id>`).
    #[must_use]
    pub fn from_path(path: &str) -> Workload {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if let Some(start) = parts
            .iter()
            .position(|p| *p == "kubepods" || *p == "kubepods.slice")
        {
            return kubernetes(&parts[start..]);
        }
        let Some(last) = parts.last() else {
            return Workload::Cgroup;
        };
        if let Some((runtime, id, _)) = container_scope(last) {
            return Workload::Container {
                runtime,
                container_id: id.to_string(),
            };
        }
        if parts.len() >= 2 && (parts[parts.len() - 2] == "docker") && is_container_id(last) {
            return Workload::Container {
                runtime: Runtime::Docker,
                container_id: (*last).to_string(),
            };
        }
        if [".service", ".scope", ".slice"]
            .iter()
            .any(|s| last.ends_with(s))
        {
            return Workload::SystemdUnit {
                unit: (*last).to_string(),
            };
        }
        Workload::Cgroup
    }

    /// Short human label: `pod 1a2b3c4d/ctr 0123456789ab`, `nginx.service`, ...
    #[must_use]
    pub fn label(&self) -> Option<String> {
        match self {
            Workload::Pod {
                pod_uid,
                container_id,
                conmon,
                ..
            } => {
                let pod = format!("pod {}", short(pod_uid, 8));
                Some(match container_id {
                    Some(id) if *conmon => format!("{pod}/conmon {}", short(id, 12)),
                    Some(id) => format!("{pod}/ctr {}", short(id, 12)),
                    None => pod,
                })
            }
            Workload::PodsRoot { qos } => Some(match qos {
                Some(q) => format!("kubepods ({q})"),
                None => "kubepods".into(),
            }),
            Workload::Container {
                runtime,
                container_id,
            } => Some(format!("{runtime} {}", short(container_id, 12))),
            Workload::SystemdUnit { unit } => Some(unit.clone()),
            Workload::Cgroup => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "besteffort",
        })
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "container",
        })
    }
}

fn short(id: &str, n: usize) -> &str {
    id.get(..n).unwrap_or(id)
}

/// `parts` starts at `kubepods` or `kubepods.slice`.
fn kubernetes(parts: &[&str]) -> Workload {
    let mut qos = None;
    let mut pod_uid = None;
    let mut container = None;
    for part in &parts[1..] {
        if let Some(q) = qos_of(part) {
            qos = Some(q);
        } else if let Some(uid) = pod_uid_of(part) {
            pod_uid = Some(uid);
        } else if pod_uid.is_some() {
            if let Some((runtime, id, conmon)) = container_scope(part) {
                container = Some((Some(runtime), id.to_string(), conmon));
            } else if is_container_id(part) {
                container = Some((Some(Runtime::Unknown), (*part).to_string(), false));
            }
        }
    }
    match pod_uid {
        Some(pod_uid) => {
            let (runtime, container_id, conmon) = match container {
                Some((runtime, id, conmon)) => (runtime, Some(id), conmon),
                None => (None, None, false),
            };
            Workload::Pod {
                pod_uid,
                qos: qos.unwrap_or(QosClass::Guaranteed),
                container_id,
                runtime,
                conmon,
            }
        }
        None => Workload::PodsRoot { qos },
    }
}

/// `burstable`, `besteffort` (cgroupfs) or `kubepods-burstable.slice` (systemd).
fn qos_of(part: &str) -> Option<QosClass> {
    match part {
        "burstable" | "kubepods-burstable.slice" => Some(QosClass::Burstable),
        "besteffort" | "kubepods-besteffort.slice" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid with _>.slice` (systemd).
fn pod_uid_of(part: &str) -> Option<String> {
    if let Some(uid) = part.strip_prefix("pod") {
        return is_uid(uid).then(|| uid.to_string());
    }
    let stem = part.strip_suffix(".slice")?;
    let (_, uid) = stem.rsplit_once("-pod")?;
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A pod UID: 36 characters with dashes, or 32 hex digits (static pods' UIDs are a hash of
/// their manifest, e.g. kube-apiserver's and etcd's).
fn is_uid(s: &str) -> bool {
    (s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        || (s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>.scope`: runtime, id, and whether it is CRI-O's conmon.
fn container_scope(part: &str) -> Option<(Runtime, &str, bool)> {
    let stem = part.strip_suffix(".scope")?;
    let (runtime, id, conmon) = if let Some(id) = stem.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id, false)
    } else if let Some(id) = stem.strip_prefix("crio-conmon-") {
        (Runtime::CriO, id, true)
    } else if let Some(id) = stem.strip_prefix("crio-") {
        (Runtime::CriO, id, false)
    } else if let Some(id) = stem.strip_prefix("docker-") {
        (Runtime::Docker, id, false)
    } else if let Some(id) = stem.strip_prefix("libpod-") {
        (Runtime::Podman, id, false)
    } else {
        return None;
    };
    is_container_id(id).then_some((runtime, id, conmon))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6d1a2f5e-7b1c-4a8e-9f3d-2c4b5a6e7f80";
    const UID_: &str = "6d1a2f5e_7b1c_4a8e_9f3d_2c4b5a6e7f80";
    const CID: &str = "0f3c8a1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn pod(qos: QosClass, runtime: Option<Runtime>, container: bool) -> Workload {
        Workload::Pod {
            pod_uid: UID.into(),
            qos,
            container_id: container.then(|| CID.into()),
            runtime,
            conmon: false,
        }
    }

    #[test]
    fn static_pods_have_32_hex_uids() {
        let uid = "3a1f0e9c2b7d4e8f9a0b1c2d3e4f5a6b";
        assert!(matches!(
            Workload::from_path(&format!("/kubepods/burstable/pod{uid}/{CID}")),
            Workload::Pod { pod_uid, container_id: Some(_), .. } if pod_uid == uid
        ));
    }

    #[test]
    fn cgroupfs_driver_paths() {
        assert_eq!(
            Workload::from_path(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            pod(QosClass::Burstable, Some(Runtime::Unknown), true)
        );
        assert_eq!(
            Workload::from_path(&format!("/kubepods/pod{UID}/{CID}")),
            pod(QosClass::Guaranteed, Some(Runtime::Unknown), true)
        );
        assert_eq!(
            Workload::from_path(&format!("/kubepods/besteffort/pod{UID}")),
            pod(QosClass::BestEffort, None, false)
        );
        assert_eq!(
            Workload::from_path("/kubepods/burstable"),
            Workload::PodsRoot {
                qos: Some(QosClass::Burstable)
            }
        );
    }

    #[test]
    fn systemd_driver_paths_for_each_runtime() {
        let base =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(
            Workload::from_path(&format!("{base}/cri-containerd-{CID}.scope")),
            pod(QosClass::Burstable, Some(Runtime::Containerd), true)
        );
        assert_eq!(
            Workload::from_path(&format!("{base}/crio-{CID}.scope")),
            pod(QosClass::Burstable, Some(Runtime::CriO), true)
        );
        assert_eq!(
            Workload::from_path(&format!("{base}/docker-{CID}.scope")),
            pod(QosClass::Burstable, Some(Runtime::Docker), true)
        );
        let conmon = Workload::from_path(&format!("{base}/crio-conmon-{CID}.scope"));
        assert!(
            matches!(conmon, Workload::Pod { conmon: true, .. }),
            "{conmon:?}"
        );
        assert_eq!(
            Workload::from_path(&format!("/kubepods.slice/kubepods-pod{UID_}.slice")),
            pod(QosClass::Guaranteed, None, false)
        );
    }

    #[test]
    fn standalone_containers_units_and_plain_cgroups() {
        assert_eq!(
            Workload::from_path(&format!("/system.slice/docker-{CID}.scope")),
            Workload::Container {
                runtime: Runtime::Docker,
                container_id: CID.into()
            }
        );
        assert_eq!(
            Workload::from_path(&format!("/docker/{CID}")),
            Workload::Container {
                runtime: Runtime::Docker,
                container_id: CID.into()
            }
        );
        assert_eq!(
            Workload::from_path(&format!("/machine.slice/libpod-{CID}.scope")),
            Workload::Container {
                runtime: Runtime::Podman,
                container_id: CID.into()
            }
        );
        assert_eq!(
            Workload::from_path("/system.slice/nginx.service"),
            Workload::SystemdUnit {
                unit: "nginx.service".into()
            }
        );
        assert_eq!(
            Workload::from_path("/process_api/4e67e69224401c5281b8ed0bd26150c4"),
            Workload::Cgroup
        );
        assert_eq!(Workload::from_path("/"), Workload::Cgroup);
    }

    #[test]
    fn labels_are_short() {
        let label = pod(QosClass::Burstable, Some(Runtime::Containerd), true)
            .label()
            .unwrap();
        assert_eq!(label, "pod 6d1a2f5e/ctr 0f3c8a1b2d4e");
        assert_eq!(Workload::Cgroup.label(), None);
    }
}
