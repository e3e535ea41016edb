//! Pod names and namespaces, which cgroup paths do not carry: the kubelet names each pod's log
//! directory `/var/log/pods/<namespace>_<name>_<uid>`, readable on the node without API access.

use std::{collections::HashMap, path::Path};

/// The kubelet's pod log directory.
pub const POD_LOG_DIR: &str = "/var/log/pods";

/// Namespace and name of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Pods by UID (dashes, lower case).
#[derive(Clone, Debug, Default)]
pub struct PodNames(HashMap<String, PodName>);

impl PodNames {
    /// Reads `dir` (an absent directory: no pods known, as on a host without Kubernetes).
    #[must_use]
    pub fn scan(dir: &Path) -> PodNames {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return PodNames::default();
        };
        PodNames(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| parse(&e.file_name().to_string_lossy()))
                .collect(),
        )
    }

    #[must_use]
    pub fn get(&self, uid: &str) -> Option<&PodName> {
        self.0.get(&uid.replace('_', "-").to_ascii_lowercase())
    }
}

/// `<namespace>_<name>_<uid>`: namespaces and names cannot hold `_`, so the split is exact.
fn parse(dir_name: &str) -> Option<(String, PodName)> {
    let mut parts = dir_name.splitn(3, '_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || name.is_empty() || uid.len() < 32 {
        return None;
    }
    Some((
        uid.to_ascii_lowercase(),
        PodName {
            namespace: namespace.into(),
            name: name.into(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_log_directories_name_pods() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "kube-system_coredns-5d78c9869d-4xz7b_0f3c5c7e-8d1c-4c0e-9f5e-1a2b3c4d5e6f",
            "not-a-pod",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let pods = PodNames::scan(dir.path());
        let pod = pods.get("0f3c5c7e_8d1c_4c0e_9f5e_1a2b3c4d5e6f").unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("kube-system", "coredns-5d78c9869d-4xz7b")
        );
        assert!(PodNames::scan(Path::new("/nonexistent")).get("x").is_none());
    }
}
