//! Arguments of the client subcommands.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use memlens_types::{
    event::{EventKind, Status},
    CgroupSelector,
};

#[derive(Args, Debug)]
pub struct LifecycleArgs {
    /// Only this memory cgroup (id, path, path under /sys/fs/cgroup, or end of path) and its
    /// descendants.
    #[arg(long)]
    pub cgroup: Option<CgroupSelector>,
    /// How far back (e.g. 30m, 1h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Most records, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Events, newest first.
    List(EventsListArgs),
    /// One event: its evidence, and a chart of the usage with the forecast and the limit.
    Show(EventShowArgs),
    /// One event, or all, as JSON on standard output.
    Export(EventExportArgs),
    /// Run the detectors now and print what they raised and what recovered.
    Check(EventCheckArgs),
}

#[derive(Args, Debug)]
pub struct EventsListArgs {
    /// `open` or `recovered`.
    #[arg(long)]
    pub status: Option<Status>,
    /// `leak_suspected`, `file_cache_pressure` or `abnormal_restarts`.
    #[arg(long)]
    pub kind: Option<EventKind>,
    /// Most events.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Show cgroups by their path, not by pod and container name.
    #[arg(long)]
    pub paths: bool,
}

#[derive(Args, Debug)]
pub struct EventShowArgs {
    /// The event's id (see `memlens events list`).
    pub id: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EventExportArgs {
    /// The event's id; all events when left out.
    pub id: Option<u64>,
}

#[derive(Args, Debug)]
pub struct EventCheckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The memory cgroup (id, path, path under /sys/fs/cgroup, or end of path).
    #[arg(long)]
    pub cgroup: CgroupSelector,
    /// How far back (e.g. 1h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Most samples shown (evenly thinned).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// This memory cgroup (id, path, path under /sys/fs/cgroup, or end of path); default: the
    /// 10 with the most page cache.
    #[arg(long)]
    pub cgroup: Option<CgroupSelector>,
    /// This pod (UID or its beginning).
    #[arg(long)]
    pub pod: Option<String>,
    /// Files per cgroup.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub top: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LeaksArgs {
    /// Only this memory cgroup (id, path, path under /sys/fs/cgroup, or end of path) and its
    /// descendants.
    #[arg(long)]
    pub cgroup: Option<CgroupSelector>,
    /// Only this pod (UID or its beginning).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Show each process's stacks apart (by default the same stack in several processes of one
    /// binary, such as a pool of workers, is one entry naming them all).
    #[arg(long)]
    pub per_process: bool,
    /// Which code holds memory according to the allocations themselves, beside the page-level
    /// answer; needs --pid, --cgroup or --pod. Go programs: their runtime's heap profile, at
    /// once. Native programs: trace their allocator with --for.
    #[arg(long)]
    pub allocations: bool,
    /// With --allocations: trace the processes' allocator (malloc, free, ...) for this long
    /// (e.g. 30s; at most 10m). Every allocator call traps into the kernel while traced: the
    /// measured cost is shown as it runs, and the trace stops itself past --budget.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_trace_window, requires = "allocations")]
    pub trace_for: Option<Duration>,
    /// With --allocations: the results of an earlier trace (its id, as `memlens events show` or
    /// a trace's first line names it).
    #[arg(long = "trace", value_name = "ID", requires = "allocations", conflicts_with_all = ["trace_for", "pid", "cgroup", "pod"])]
    pub trace_id: Option<u64>,
    /// Mean bytes allocated between two samples of a trace.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..), requires = "trace_for")]
    pub sample_bytes: u64,
    /// CPUs a trace may cost the traced processes (calls per second x cost per call, over all
    /// their threads) before it stops itself, e.g. 0.5 or 50%.
    #[arg(long, default_value = "0.5", value_parser = parse_cpus, requires = "trace_for")]
    pub budget: f64,
    /// Growth window (e.g. 30s, 10m, 2h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Stacks per list.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the matching stacks as a gzip'd pprof profile to FILE.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Also write a flame graph SVG of the matching stacks to FILE.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,
    /// Show cgroups by their path, not by pod and container name.
    #[arg(long)]
    pub paths: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Print JSON (all fields, bytes as integers) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every --interval until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Redraw interval for --watch (e.g. 2s).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Show at most N cgroups (0: all the agent returns).
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    /// Only this cgroup: its id, its path (as in the hierarchy or under /sys/fs/cgroup), or the
    /// end of its path.
    #[arg(long)]
    pub cgroup: Option<CgroupSelector>,
    /// Show cgroups by their path, not by pod and container name.
    #[arg(long)]
    pub paths: bool,
}

/// A trace window between 1 s and 10 min.
fn parse_trace_window(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        return Err("a trace lasts between 1s and 10m".into());
    }
    Ok(d)
}

/// CPUs as a number (0.5) or a percentage of one CPU (50%).
fn parse_cpus(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * scale),
        _ => Err(format!(
            "{text:?} is not a positive number of CPUs (e.g. 0.5 or 50%)"
        )),
    }
}

/// A redraw interval between 100 ms and 1 h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 2s, 500ms, 1m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("must be between 100ms and 1h".into());
    }
    Ok(d)
}
