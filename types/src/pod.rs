//! Kubernetes names of a pod and its containers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Kubernetes names of a pod, and of one of its containers when the container is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub namespace: String,
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl fmt::Display for PodMeta {
    /// `namespace/pod` or `namespace/pod/container`, as `kubectl` users read them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)?;
        match &self.container {
            Some(container) => write!(f, "/{container}"),
            None => Ok(()),
        }
    }
}

/// Who knows pod and container names (the Kubernetes API, the kubelet's log directories).
pub trait PodNames {
    /// The names of pod `pod_uid`, and of its container `container_id` when given.
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta>;
}
