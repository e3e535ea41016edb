//! The kubelet's log directories: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` and
//! `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    table::{is_container_id, is_uid, normalize_uid, PodRecord},
    write, LogDirs, Names,
};

/// Starts the thread that re-reads the log directories when a lookup misses. Without a thread
/// (none could be started) the names read at start stay; that is worth a warning, not a failure.
pub(crate) fn spawn_rescans(
    dirs: LogDirs,
    names: Arc<Names>,
    every: Duration,
) -> Option<SyncSender<()>> {
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
pub(crate) fn rescan_loop(dirs: &LogDirs, names: &Names, asked: &Receiver<()>, every: Duration) {
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
pub(crate) fn scan(dirs: &LogDirs) -> HashMap<String, PodRecord> {
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
pub(crate) fn file_names(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
}

/// `<namespace>_<pod>_<uid>`: UID and names.
pub(crate) fn parse_pod_dir(name: &str) -> Option<(String, PodRecord)> {
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
pub(crate) fn pod_of_log_target(target: &Path) -> Option<(String, PodRecord)> {
    parse_pod_dir(target.parent()?.parent()?.file_name()?.to_str()?)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ContainerLog {
    pub(crate) pod: String,
    pub(crate) namespace: String,
    pub(crate) container: String,
    pub(crate) id: String,
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log`.
pub(crate) fn parse_container_log(name: &str) -> Option<ContainerLog> {
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
