//! What one source knows, kept past its disappearance for [`crate::RETAIN`].

use std::{
    collections::{hash_map::Entry, HashMap},
    time::Instant,
};

use crate::RETAIN;

/// What a source lists for one pod now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodRecord {
    pub(crate) namespace: String,
    pub(crate) pod: String,
    /// Container id (64 hex, lower case) -> container name.
    pub(crate) containers: HashMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct PodEntry {
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) containers: HashMap<String, ContainerEntry>,
    /// When the source stopped listing the pod.
    pub(crate) gone_since: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct ContainerEntry {
    pub(crate) name: String,
    /// When the source stopped listing the container (a restart replaces its id).
    pub(crate) gone_since: Option<Instant>,
}

/// One source's pods by UID (dashes, lower case).
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) pods: HashMap<String, PodEntry>,
}

impl Table {
    /// `records` is everything the source lists now; pods it no longer lists are kept a while.
    pub(crate) fn replace_all(&mut self, records: HashMap<String, PodRecord>, now: Instant) {
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
    pub(crate) fn update(&mut self, uid: String, record: PodRecord, now: Instant) {
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

    #[cfg_attr(
        not(feature = "kube"),
        expect(
            dead_code,
            reason = "used by the Kubernetes API watch, which this build leaves out"
        )
    )]
    pub(crate) fn remove(&mut self, uid: &str, now: Instant) {
        if let Some(pod) = self.pods.get_mut(uid) {
            pod.gone_since.get_or_insert(now);
        }
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        self.pods.retain(|_, pod| kept(pod.gone_since, now));
    }

    /// Pods the source lists now.
    pub(crate) fn live(&self) -> usize {
        self.pods
            .values()
            .filter(|p| p.gone_since.is_none())
            .count()
    }
}

pub(crate) fn kept(gone_since: Option<Instant>, now: Instant) -> bool {
    gone_since.is_none_or(|since| now.saturating_duration_since(since) < RETAIN)
}

/// Pod UIDs as the API writes them: the systemd cgroup driver turns their dashes into `_`.
pub(crate) fn normalize_uid(uid: &str) -> String {
    uid.trim().replace('_', "-").to_ascii_lowercase()
}

/// Container ids as cgroup paths and log file names write them: the API's `containerID` is
/// `<runtime>://<id>` (`containerd://`, `cri-o://`, `docker://`).
pub(crate) fn normalize_container_id(id: &str) -> String {
    let id = id.trim();
    let id = id.split_once("://").map_or(id, |(_, id)| id);
    id.to_ascii_lowercase()
}

/// 36 characters for API-created pods (a UUID); 32 hex for static pods, whose UID is the hash of
/// their manifest.
pub(crate) fn is_uid(uid: &str) -> bool {
    (32..=36).contains(&uid.len()) && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

pub(crate) fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())
}
