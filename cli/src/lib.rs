//! The command line's client side: each subcommand that asks the running agent (`top`, `leaks`,
//! `cache`, `history`, `lifecycle`, `events`, `status`) as clap arguments, a typed request
//! through [`client::Client`], and the terminal rendering of the answer. Knows the API's types
//! and nothing of the agent's insides.

pub mod allocations;
pub mod args;
pub mod cache;
pub mod chart;
pub mod client;
pub mod events;
pub mod history;
pub mod leaks;
pub mod lifecycle;
pub mod status;
pub mod top;

pub use client::{Client, ClientError};

use memlens_types::{pod::PodMeta, text::printable};

/// What users call a cgroup: `namespace/pod/container` when the agent knows its pod, else
/// `label` (a unit, a container runtime's id, or the path); with `paths`, its `path` always.
fn workload_name(pod: Option<&PodMeta>, label: &str, path: &str, paths: bool) -> String {
    match pod {
        _ if paths => printable(path).into_owned(),
        Some(pod) => printable(&pod.to_string()).into_owned(),
        None => printable(label).into_owned(),
    }
}
