//! Kubernetes names for cgroups. A cgroup path carries a pod's UID and a container's id, not
//! the names people know a workload by (namespace, pod, container), so this module keeps a
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

use std::{
    collections::{hash_map::Entry, HashMap},
    fmt,
    path::{Path, PathBuf},
    pin::pin,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::{runtime::Handle, task::AbortHandle};

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
        if let Some(task) = &self.api_task {
            task.abort();
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
    pub fn start(log_dirs: LogDirs, api: Option<Handle>) -> PodDirectory {
        PodDirectory::start_with(log_dirs, api, RESCAN)
    }

    fn start_with(log_dirs: LogDirs, api: Option<Handle>, rescan: Duration) -> PodDirectory {
        let names = Arc::new(Names::default());
        write(&names.logs).replace_all(scan(&log_dirs), Instant::now());
        let rescan = spawn_rescans(log_dirs, Arc::clone(&names), rescan);
        let api_task = api.and_then(|runtime| start_api(runtime, &names));
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
    #[cfg(test)]
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

// ---------------------------------------------------------------------------------------------
// What one source knows, kept past its disappearance for RETAIN.

/// What a source lists for one pod now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodRecord {
    namespace: String,
    pod: String,
    /// Container id (64 hex, lower case) -> container name.
    containers: HashMap<String, String>,
}

#[derive(Debug)]
struct PodEntry {
    namespace: String,
    pod: String,
    containers: HashMap<String, ContainerEntry>,
    /// When the source stopped listing the pod.
    gone_since: Option<Instant>,
}

#[derive(Debug)]
struct ContainerEntry {
    name: String,
    /// When the source stopped listing the container (a restart replaces its id).
    gone_since: Option<Instant>,
}

/// One source's pods by UID (dashes, lower case).
#[derive(Debug, Default)]
struct Table {
    pods: HashMap<String, PodEntry>,
}

impl Table {
    /// `records` is everything the source lists now; pods it no longer lists are kept a while.
    fn replace_all(&mut self, records: HashMap<String, PodRecord>, now: Instant) {
        for (uid, pod) in &mut self.pods {
            if !records.contains_key(uid) {
                pod.gone_since.get_or_insert(now);
            }
        }
        for (uid, record) in records {
            self.update(uid, record, now);
        }
        self.prune(now);
    }

    /// What the source lists now for one pod.
    fn update(&mut self, uid: String, record: PodRecord, now: Instant) {
        match self.pods.entry(uid) {
            Entry::Occupied(mut entry) => {
                let pod = entry.get_mut();
                pod.namespace = record.namespace;
                pod.pod = record.pod;
                pod.gone_since = None;
                for container in pod.containers.values_mut() {
                    container.gone_since.get_or_insert(now);
                }
                for (id, name) in record.containers {
                    pod.containers.insert(
                        id,
                        ContainerEntry {
                            name,
                            gone_since: None,
                        },
                    );
                }
                pod.containers.retain(|_, c| kept(c.gone_since, now));
            }
            Entry::Vacant(entry) => {
                entry.insert(PodEntry {
                    namespace: record.namespace,
                    pod: record.pod,
                    containers: record
                        .containers
                        .into_iter()
                        .map(|(id, name)| {
                            let container = ContainerEntry {
                                name,
                                gone_since: None,
                            };
                            (id, container)
                        })
                        .collect(),
                    gone_since: None,
                });
            }
        }
    }

    fn remove(&mut self, uid: &str, now: Instant) {
        if let Some(pod) = self.pods.get_mut(uid) {
            pod.gone_since.get_or_insert(now);
        }
    }

    fn prune(&mut self, now: Instant) {
        self.pods.retain(|_, pod| kept(pod.gone_since, now));
    }

    /// Pods the source lists now.
    fn live(&self) -> usize {
        self.pods
            .values()
            .filter(|p| p.gone_since.is_none())
            .count()
    }
}

fn kept(gone_since: Option<Instant>, now: Instant) -> bool {
    gone_since.is_none_or(|since| now.saturating_duration_since(since) < RETAIN)
}

/// Pod UIDs as the API writes them: the systemd cgroup driver turns their dashes into `_`.
fn normalize_uid(uid: &str) -> String {
    uid.trim().replace('_', "-").to_ascii_lowercase()
}

/// Container ids as cgroup paths and log file names write them: the API's `containerID` is
/// `<runtime>://<id>` (`containerd://`, `cri-o://`, `docker://`).
fn normalize_container_id(id: &str) -> String {
    let id = id.trim();
    let id = id.split_once("://").map_or(id, |(_, id)| id);
    id.to_ascii_lowercase()
}

/// 36 characters for API-created pods (a UUID); 32 hex for static pods, whose UID is the hash of
/// their manifest.
fn is_uid(uid: &str) -> bool {
    (32..=36).contains(&uid.len()) && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------------
// The kubelet's log directories.

/// Starts the thread that re-reads the log directories when a lookup misses. Without a thread
/// (none could be started) the names read at start stay; that is worth a warning, not a failure.
fn spawn_rescans(dirs: LogDirs, names: Arc<Names>, every: Duration) -> Option<SyncSender<()>> {
    let (asks, asked) = mpsc::sync_channel(1);
    match std::thread::Builder::new()
        .name("memlens-podnames".into())
        .spawn(move || rescan_loop(&dirs, &names, &asked, every))
    {
        Ok(_) => Some(asks),
        Err(e) => {
            tracing::warn!("cannot start the thread that re-reads the kubelet log directories ({e}): pods started from now on stay unnamed");
            None
        }
    }
}

/// Waits for a miss, then for `every` since the last read (misses meanwhile are answered by the
/// same read), reads, and so on until the directory is dropped.
fn rescan_loop(dirs: &LogDirs, names: &Names, asked: &Receiver<()>, every: Duration) {
    let mut last = Instant::now();
    while asked.recv().is_ok() {
        let due = last.checked_add(every).unwrap_or_else(Instant::now);
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            match asked.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let records = scan(dirs);
        last = Instant::now();
        write(&names.logs).replace_all(records, last);
    }
}

/// Reads both directories; absent or unreadable ones (a host without Kubernetes, a container
/// without the mounts) give no pods.
fn scan(dirs: &LogDirs) -> HashMap<String, PodRecord> {
    let mut pods: HashMap<String, PodRecord> = file_names(&dirs.pods)
        .filter_map(|(name, _)| parse_pod_dir(&name))
        .collect();
    // For symlinks whose target does not name the pod's directory: a pod name is reused by a
    // pod created again (StatefulSets), so only a name held by a single UID is trusted.
    let mut uids_by_name: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (uid, pod) in &pods {
        uids_by_name
            .entry((pod.namespace.clone(), pod.pod.clone()))
            .or_default()
            .push(uid.clone());
    }
    for (name, path) in file_names(&dirs.containers) {
        let Some(log) = parse_container_log(&name) else {
            continue;
        };
        let from_target = std::fs::read_link(&path)
            .ok()
            .and_then(|target| pod_of_log_target(&target))
            .filter(|(_, pod)| pod.namespace == log.namespace && pod.pod == log.pod);
        let uid = match from_target {
            Some((uid, _)) => uid,
            None => match uids_by_name
                .get(&(log.namespace.clone(), log.pod.clone()))
                .map(Vec::as_slice)
            {
                Some([uid]) => uid.clone(),
                _ => continue,
            },
        };
        pods.entry(uid)
            .or_insert_with(|| PodRecord {
                namespace: log.namespace,
                pod: log.pod,
                containers: HashMap::new(),
            })
            .containers
            .insert(log.id, log.container);
    }
    pods
}

/// Names (UTF-8 only: Kubernetes names are ASCII) and paths of the entries of `dir`.
fn file_names(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
}

/// `<namespace>_<pod>_<uid>`: UID and names.
fn parse_pod_dir(name: &str) -> Option<(String, PodRecord)> {
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let uid = normalize_uid(uid);
    if namespace.is_empty() || pod.is_empty() || !is_uid(&uid) {
        return None;
    }
    Some((
        uid,
        PodRecord {
            namespace: namespace.into(),
            pod: pod.into(),
            containers: HashMap::new(),
        },
    ))
}

/// `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`: the pod directory's UID and names.
fn pod_of_log_target(target: &Path) -> Option<(String, PodRecord)> {
    parse_pod_dir(target.parent()?.parent()?.file_name()?.to_str()?)
}

#[derive(Debug, PartialEq, Eq)]
struct ContainerLog {
    pod: String,
    namespace: String,
    container: String,
    id: String,
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log`.
fn parse_container_log(name: &str) -> Option<ContainerLog> {
    let (names, id) = name.strip_suffix(".log")?.rsplit_once('-')?;
    let mut parts = names.splitn(3, '_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    let id = id.to_ascii_lowercase();
    if pod.is_empty() || namespace.is_empty() || container.is_empty() || container.contains('_') {
        return None;
    }
    is_container_id(&id).then(|| ContainerLog {
        pod: pod.into(),
        namespace: namespace.into(),
        container: container.into(),
        id,
    })
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes API.

/// Spawns the watch of this node's pods on `runtime`; None when the node's name is unknown.
fn start_api(runtime: Handle, names: &Arc<Names>) -> Option<AbortHandle> {
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
fn node_name(env: Option<String>, hostname: Option<String>) -> Option<String> {
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
async fn connect() -> Result<kube::Client, String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("cannot make a Kubernetes client: {e}"))
}

/// Keeps `names.api` equal to this node's pods until aborted. The watcher re-lists and retries
/// with backoff by itself; an outage is warned about once, and its end is logged.
async fn watch_api(names: Arc<Names>, node: String) {
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
fn is_routine(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// A pod's UID and names, with every container id its status gives: current containers (init,
/// regular, ephemeral) and the previous instance of restarted ones, whose cgroup (an OOM-killed
/// container's, say) is what a memory profiler is often asked about.
fn record_from_pod(pod: &Pod) -> Option<(String, PodRecord)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
