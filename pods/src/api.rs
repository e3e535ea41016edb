//! The Kubernetes API: a watch of the pods on this node.

use std::{collections::HashMap, pin::pin, sync::Arc, time::Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::{runtime::Handle, task::AbortHandle};

use crate::{
    count_pods,
    table::{normalize_container_id, normalize_uid, PodRecord},
    write, ApiState, Names, NODE_NAME_ENV,
};

// The Kubernetes API.

/// Spawns the watch of this node's pods on `runtime`; None when the node's name is unknown.
pub(crate) fn start_api(runtime: Handle, names: &Arc<Names>) -> Option<AbortHandle> {
    let node = node_name(
        std::env::var(NODE_NAME_ENV).ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
    );
    let mut api = write(&names.api);
    let Some(node) = node else {
        let reason = format!("this node's name is unknown (set {NODE_NAME_ENV})");
        tracing::warn!("pod names come from the kubelet log directories only: {reason}");
        api.state = ApiState::Failing(reason);
        return None;
    };
    api.node.clone_from(&node);
    api.state = ApiState::Connecting;
    drop(api);
    let task = runtime.spawn(watch_api(Arc::clone(names), node));
    Some(task.abort_handle())
}

/// `MEMLENS_NODE_NAME` when set, else the hostname lower-cased as the kubelet does for its
/// default node name. Inside a pod without host networking the hostname is the pod's: the
/// field selector then matches nothing, and [`PodDirectory::source`] says to set the variable.
pub(crate) fn node_name(env: Option<String>, hostname: Option<String>) -> Option<String> {
    env.map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            hostname
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
        })
}

/// `kubeconfig` when there is one (an agent run by hand on a node), else the in-cluster
/// service account (the DaemonSet).
pub(crate) async fn connect() -> Result<kube::Client, String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("cannot make a Kubernetes client: {e}"))
}

/// Keeps `names.api` equal to this node's pods until aborted. The watcher re-lists and retries
/// with backoff by itself; an outage is warned about once, and its end is logged.
pub(crate) async fn watch_api(names: Arc<Names>, node: String) {
    let client = match connect().await {
        Ok(client) => client,
        Err(reason) => {
            tracing::warn!("pod names come from the kubelet log directories only: {reason}");
            write(&names.api).state = ApiState::Failing(reason);
            return;
        }
    };
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = pin!(watcher(pods, config).default_backoff());
    // A (re-)list, complete at InitDone: pods it does not hold were deleted meanwhile.
    let mut listing: HashMap<String, PodRecord> = HashMap::new();
    let mut listed_once = false;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let reason = e.to_string();
                if failing || is_routine(&e) {
                    tracing::debug!(node, "Kubernetes API watch of pods: {reason}");
                } else {
                    tracing::warn!(node, "cannot watch this node's pods through the Kubernetes API (retrying; names from the kubelet log directories meanwhile): {reason}");
                    failing = true;
                }
                if failing {
                    write(&names.api).state = ApiState::Failing(reason);
                }
                continue;
            }
        };
        let mut api = write(&names.api);
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(pod) => listing.extend(record_from_pod(&pod)),
            watcher::Event::InitDone => {
                api.table.replace_all(std::mem::take(&mut listing), now);
                if !listed_once {
                    tracing::info!(
                        node,
                        "pod names from the Kubernetes API: {}",
                        count_pods(api.table.live())
                    );
                }
                listed_once = true;
            }
            watcher::Event::Apply(pod) => {
                if let Some((uid, record)) = record_from_pod(&pod) {
                    api.table.update(uid, record, now);
                }
                api.table.prune(now);
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    api.table.remove(&normalize_uid(uid), now);
                }
                api.table.prune(now);
            }
        }
        if listed_once && api.state != ApiState::Ready {
            if failing {
                tracing::info!(node, "Kubernetes API watch of pods works again");
            }
            failing = false;
            api.state = ApiState::Ready;
        }
    }
    let reason = "the Kubernetes API watch ended".to_string();
    tracing::warn!(
        node,
        "{reason}: names from the kubelet log directories from now on"
    );
    write(&names.api).state = ApiState::Failing(reason);
}

/// A watch whose resource version expired (410 Gone) is re-listed by the watcher: not an outage.
pub(crate) fn is_routine(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// A pod's UID and names, with every container id its status gives: current containers (init,
/// regular, ephemeral) and the previous instance of restarted ones, whose cgroup (an OOM-killed
/// container's, say) is what a memory profiler is often asked about.
pub(crate) fn record_from_pod(pod: &Pod) -> Option<(String, PodRecord)> {
    let meta = &pod.metadata;
    let uid = normalize_uid(meta.uid.as_deref()?);
    let record = PodRecord {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        pod: meta.name.clone()?,
        containers: pod
            .status
            .iter()
            .flat_map(|status| {
                [
                    &status.init_container_statuses,
                    &status.container_statuses,
                    &status.ephemeral_container_statuses,
                ]
            })
            .flatten()
            .flatten()
            .flat_map(|status| {
                let previous = status
                    .last_state
                    .as_ref()
                    .and_then(|state| state.terminated.as_ref())
                    .and_then(|terminated| terminated.container_id.as_deref());
                previous
                    .into_iter()
                    .chain(status.container_id.as_deref())
                    .map(normalize_container_id)
                    .filter(|id| !id.is_empty())
                    .map(|id| (id, status.name.clone()))
            })
            .collect(),
    };
    Some((uid, record))
}
