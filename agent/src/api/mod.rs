//! The agent's HTTP API: axum on the root-only Unix socket, and `/metrics` with `/healthz` on an
//! optional TCP listener. Routes, queries and answers are the types of [`memlens_types::api`],
//! which the CLI's client sends.

mod allocations;
mod cache;
mod events;
mod leaks;
pub mod metrics;
pub mod server;
mod traces;

pub(crate) use traces::DEFAULT_SAMPLE_BYTES;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
};

use anyhow::{Context as _, Result};
use memlens_attribution::{query::LeakSources, view::View, Views};
use memlens_runtimes::go_heap::GoHeapReader;
use memlens_types::{pod::PodMeta, selector::CgroupSelector, unix_ms, Workload};

use crate::{health::Health, status::StatusSource, workers::engine::CheckRequest};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub views: Arc<Views>,
    /// The history database, read per query.
    pub db: PathBuf,
    pub status: Arc<StatusSource>,
    pub leaks: LeakSources,
    /// On-demand runs of the event engine.
    pub checks: mpsc::Sender<CheckRequest>,
    pub metrics: metrics::MetricsSources,
    pub health: Health,
    /// Where the memory cgroups are mounted (`/sys/fs/cgroup/memory` on v1).
    pub memory_root: PathBuf,
    /// Go processes' heap profiles, read on demand.
    pub go_heap: Arc<Mutex<GoHeapReader>>,
    /// Allocator traces, started on demand.
    pub traces: Arc<crate::traces::Traces>,
    /// Bytes of stack a trace copies per sample.
    pub stack_copy_bytes: u32,
}

impl AppState {
    /// The hierarchy path of the cgroup `wanted` names when `view` does not list it but the
    /// cgroup file system has it: made since `view`'s census (refreshes are paced, up to a
    /// minute apart on a busy node).
    fn unlisted_cgroup(&self, view: &View, wanted: &CgroupSelector) -> Option<String> {
        wanted
            .hierarchy_path(&view.mounts)
            .filter(|p| self.memory_root.join(p.trim_start_matches('/')).is_dir())
    }

    /// Kubernetes names of the pod (and container) a cgroup of `workload` runs, when known.
    fn pod_of(&self, workload: &Workload) -> Option<PodMeta> {
        match workload {
            Workload::Pod {
                pod_uid,
                container_id,
                ..
            } => self.metrics.pods.lookup(pod_uid, container_id.as_deref()),
            _ => None,
        }
    }

    /// Why `wanted` names no cgroup of `view`: none by that name, or one made since its census.
    fn no_cgroup(&self, view: &View, wanted: &CgroupSelector) -> String {
        match self.unlisted_cgroup(view, wanted) {
            Some(path) => format!(
                "memory cgroup {path} was made after the agent's last census ({} s ago): it is \
                 listed from the next one",
                unix_ms().saturating_sub(view.snapshot.taken_at_unix_ms) / 1000
            ),
            None => format!("no memory cgroup matches {:?}", wanted.to_string()),
        }
    }
}

/// Serves the API on `socket` (and `/metrics` on `metrics_addr`) until SIGTERM or SIGINT.
pub async fn serve(socket: &Path, metrics_addr: Option<SocketAddr>, state: AppState) -> Result<()> {
    let listener = server::bind(socket)?;
    tracing::info!("API on {}", socket.display());
    if let Some(addr) = metrics_addr {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let router = server::metrics_router(state.clone());
        tokio::spawn(metrics::prebuild(state.clone()));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, router).await {
                tracing::warn!("metrics listener failed: {e}");
            }
        });
    }
    axum::serve(listener, server::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server failed")?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping");
}
