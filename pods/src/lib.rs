//! Kubernetes names for cgroups. A cgroup path carries a pod's UID and a container's id, not
//! the names people know a workload by (namespace, pod, container), so this crate keeps a
//! directory of them for this node, filled by two sources that give the same answer:
//!
//! - the kubelet's log directories, readable on any node without credentials or network:
//!   `/var/log/pods/<namespace>_<pod>_<uid>/` names each pod, and each symlink
//!   `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` names a container (its target,
//!   `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`, gives the pod's UID);
//! - in a cluster, a watch of this node's pods through the Kubernetes API, which knows a
//!   container as soon as it starts and does not depend on log directories being mounted.
//!
//! Namespaces, pod names and container names cannot contain `_`, so both file name layouts
//! split exactly. Lookups read in-memory maps only: the profiler's sampling loop must never wait
//! on the filesystem or the network. Names outlive their pods for [`RETAIN`], so the last samples
//! of a deleted pod, and the cgroups the kernel keeps for a while after it, are still named.

#[cfg(feature = "kube")]
mod api;
mod log_dirs;
mod table;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    path::PathBuf,
    sync::{mpsc::SyncSender, Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

pub use memlens_types::pod::PodMeta;
use memlens_types::pod::PodNames;

use crate::{
    log_dirs::{scan, spawn_rescans},
    table::{normalize_container_id, normalize_uid, Table},
};

/// The async runtime the Kubernetes API watch runs on.
#[cfg(feature = "kube")]
pub type Runtime = tokio::runtime::Handle;
/// Without the `kube` feature there is no API watch, and so no runtime to give it.
#[cfg(not(feature = "kube"))]
pub type Runtime = std::convert::Infallible;

/// Environment variable with this node's name, as the DaemonSet sets it from the downward API
/// (`spec.nodeName`); without it the hostname is used, as the kubelet does by default.
pub const NODE_NAME_ENV: &str = "MEMLENS_NODE_NAME";

/// Shortest time between two reads of the log directories by [`PodDirectory::start`]. They are
/// re-read only when a lookup misses (a pod or container started since the last read), so a
/// steady node costs nothing, and a burst of new pods costs one read per period.
pub const RESCAN: Duration = Duration::from_secs(30);

/// How long names stay known after their source stopped listing them: a deleted pod's last
/// samples are taken, and its cgroups may linger, after the API and the kubelet forget it.
pub const RETAIN: Duration = Duration::from_secs(10 * 60);

/// Where the kubelet keeps its log directories (other paths when the host's `/var/log` is
/// mounted elsewhere in the agent's container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDirs {
    /// `<namespace>_<pod>_<uid>/<container>/<n>.log`.
    pub pods: PathBuf,
    /// `<pod>_<namespace>_<container>-<id>.log` symlinks into `pods`.
    pub containers: PathBuf,
}

impl Default for LogDirs {
    fn default() -> LogDirs {
        LogDirs {
            pods: PathBuf::from("/var/log/pods"),
            containers: PathBuf::from("/var/log/containers"),
        }
    }
}

/// Names for pods and containers on this node; cheap to clone; lookups never block on I/O.
#[derive(Clone)]
pub struct PodDirectory {
    inner: Arc<Inner>,
}

/// Shared by the clones of one [`PodDirectory`]; dropping the last clone stops its sources.
struct Inner {
    names: Arc<Names>,
    /// Asks the rescan thread for a read of the log directories; the thread ends when this is
    /// dropped. None when nothing re-reads them ([`PodDirectory::from_log_dirs`]).
    rescan: Option<SyncSender<()>>,
    api_task: Option<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        #[cfg(feature = "kube")]
        if let Some(task) = &self.api_task {
            task.abort();
        }
        #[cfg(not(feature = "kube"))]
        if let Some(never) = &self.api_task {
            match *never {}
        }
    }
}

/// What the two sources know; each behind its own lock so neither source waits on the other.
#[derive(Default)]
struct Names {
    logs: RwLock<Table>,
    api: RwLock<ApiView>,
}

#[derive(Default)]
struct ApiView {
    state: ApiState,
    node: String,
    table: Table,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "kube"),
    expect(
        dead_code,
        reason = "set by the Kubernetes API watch, which this build leaves out"
    )
)]
enum ApiState {
    /// Not asked for.
    #[default]
    Off,
    /// Waiting for the first complete list of this node's pods.
    Connecting,
    /// The table holds every pod of the node.
    Ready,
    /// No configuration, or the watch fails (it is retried): the reason, for `memlens status`.
    Failing(String),
}

impl PodDirectory {
    /// Starts the sources: the log directories, read now and then again when a lookup misses
    /// (at most every [`RESCAN`], on a thread of their own), and, when `api` is given, a watch of
    /// this node's pods through the Kubernetes API on that runtime. A missing configuration or an
    /// unreachable API is logged once and leaves the log directories as the source: never an
    /// error, since names only decorate what the profiler measures anyway.
    #[must_use]
    pub fn start(log_dirs: LogDirs, api: Option<Runtime>) -> PodDirectory {
        PodDirectory::start_with(log_dirs, api, RESCAN)
    }

    fn start_with(log_dirs: LogDirs, api: Option<Runtime>, rescan: Duration) -> PodDirectory {
        let names = Arc::new(Names::default());
        write(&names.logs).replace_all(scan(&log_dirs), Instant::now());
        let rescan = spawn_rescans(log_dirs, Arc::clone(&names), rescan);
        let api_task = api.and_then(|runtime| api_source(runtime, &names));
        PodDirectory {
            inner: Arc::new(Inner {
                names,
                rescan,
                api_task,
            }),
        }
    }

    /// For tests and hosts without Kubernetes: only the given log directories, read now.
    #[must_use]
    pub fn from_log_dirs(log_dirs: &LogDirs) -> PodDirectory {
        let names = Names::default();
        write(&names.logs).replace_all(scan(log_dirs), Instant::now());
        PodDirectory {
            inner: Arc::new(Inner {
                names: Arc::new(names),
                rescan: None,
                api_task: None,
            }),
        }
    }

    /// Names of pod `pod_uid` (dashes or underscores, as the cgroup drivers write it) and of its
    /// container `container_id` (64 hex, with or without a `containerd://`-style prefix). The
    /// API's answer is preferred; the container's name comes from whichever source knows the id.
    /// None for a pod neither source knows. A miss asks for a re-read of the log directories, so
    /// a pod that just started is named at a later lookup.
    #[must_use]
    pub fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let uid = normalize_uid(pod_uid);
        let id = container_id.map(normalize_container_id);
        let found = {
            let api = read(&self.inner.names.api);
            let logs = read(&self.inner.names.logs);
            let sources = [api.table.pods.get(&uid), logs.pods.get(&uid)];
            sources.iter().flatten().next().map(|pod| PodMeta {
                namespace: pod.namespace.clone(),
                pod: pod.pod.clone(),
                container: id.as_deref().and_then(|id| {
                    sources
                        .iter()
                        .flatten()
                        .find_map(|p| p.containers.get(id))
                        .map(|c| c.name.clone())
                }),
            })
        };
        let complete = matches!(&found, Some(meta) if id.is_none() || meta.container.is_some());
        if !complete {
            if let Some(rescan) = &self.inner.rescan {
                // Full: a read is already asked for, and will answer this miss too.
                let _ = rescan.try_send(());
            }
        }
        found
    }

    /// Where names come from now, for `memlens status`.
    #[must_use]
    pub fn source(&self) -> String {
        let api = read(&self.inner.names.api);
        let api_pods = api.table.live();
        let log_pods = read(&self.inner.names.logs).live();
        match &api.state {
            ApiState::Ready if api_pods > 0 || log_pods == 0 => {
                return format!(
                    "Kubernetes API (node {}, {})",
                    api.node,
                    count_pods(api_pods)
                );
            }
            ApiState::Failing(reason) if api_pods > 0 => {
                return format!(
                    "Kubernetes API (node {}, {}; watch failing, retrying: {reason})",
                    api.node,
                    count_pods(api_pods)
                );
            }
            _ => {}
        }
        if log_pods == 0 {
            return "no Kubernetes pods on this host".into();
        }
        let api_note = match &api.state {
            ApiState::Off => String::new(),
            ApiState::Connecting => "; Kubernetes API: connecting".into(),
            ApiState::Ready => format!(
                "; the Kubernetes API lists no pods on node {}: is {NODE_NAME_ENV} set?",
                api.node
            ),
            ApiState::Failing(reason) => format!("; Kubernetes API unavailable: {reason}"),
        };
        format!(
            "kubelet log directories ({}{api_note})",
            count_pods(log_pods)
        )
    }
}

impl fmt::Debug for PodDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodDirectory")
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

fn count_pods(n: usize) -> String {
    if n == 1 {
        "1 pod".into()
    } else {
        format!("{n} pods")
    }
}

/// A poisoned lock only means a writer panicked mid-update; the names are still worth reading.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl PodNames for PodDirectory {
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        PodDirectory::lookup(self, pod_uid, container_id)
    }
}

/// Starts the API watch, when this build has the Kubernetes client.
#[cfg(feature = "kube")]
fn api_source(runtime: Runtime, names: &Arc<Names>) -> Option<tokio::task::AbortHandle> {
    api::start_api(runtime, names)
}

#[cfg(not(feature = "kube"))]
fn api_source(runtime: Runtime, _names: &Arc<Names>) -> Option<AbortHandle> {
    match runtime {}
}

/// Stops the API watch when the directory is dropped.
#[cfg(not(feature = "kube"))]
type AbortHandle = std::convert::Infallible;
#[cfg(feature = "kube")]
type AbortHandle = tokio::task::AbortHandle;
