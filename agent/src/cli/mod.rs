//! Command-line interface: argument definitions and one module per client subcommand.

pub mod cache;
pub mod chart;
pub mod debug;
pub mod events;
pub mod history;
pub mod leaks;
pub mod lifecycle;
pub mod status;
pub mod top;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::api::DEFAULT_SOCKET;

#[derive(Parser, Debug)]
#[command(
    name = "memlens",
    version,
    about = "eBPF memory profiler: where a cgroup's memory is, and who holds it"
)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "MEMLENS_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: load the kernel programs and serve the API (needs root).
    #[command(args_override_self = true)]
    Agent(AgentArgs),
    /// One line per capability of the running agent: probes, offsets, layout, sampling, drops.
    Status(StatusArgs),
    /// Memory cgroups by usage, with the kernel's counters and the eBPF held-page estimate.
    Top(TopArgs),
    /// Which code paths hold memory and which keep growing: stacks by growth and by held bytes.
    Leaks(LeaksArgs),
    /// A cgroup's recorded memory history.
    History(HistoryArgs),
    /// The working set explained, and which files' page cache each cgroup holds.
    Cache(CacheArgs),
    /// Process exits, OOM kills and cgroups created and removed, as the kernel reported them.
    Lifecycle(LifecycleArgs),
    /// Events of the engine: leaks suspected, file-cache pressure, abnormal restarts.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The agent's config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measurements used by `cargo xtask bench`.
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Symbolization throughput on this binary, cold and warm (JSON).
    BenchSymbolize(BenchSymbolizeArgs),
}

#[derive(Args, Debug)]
pub struct BenchSymbolizeArgs {
    #[arg(long, default_value_t = 10_000)]
    pub stacks: usize,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=127))]
    pub depth: u64,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Sample one page frame in 2^N (0..=16; default 1 in 64). Lower is more precise and costs
    /// more: see docs/benchmarks.md.
    #[arg(long, env = "MEMLENS_SAMPLE_SHIFT", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub sample_shift: u32,
    /// Upper bound on sampled-frame records (56 bytes each); the shift is raised to fit.
    #[arg(long, env = "MEMLENS_MAX_SAMPLE_ENTRIES", default_value_t = 524_288, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub max_sample_entries: u64,
    /// Distinct stacks kept in the kernel (about 1 KiB each).
    #[arg(long, env = "MEMLENS_STACK_ENTRIES", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub stack_entries: u32,
    /// Reuse a CPU's last kernel stack for the same user stack within this long instead of
    /// walking it again (the walk is the costliest part of a sample); 0s walks every time.
    #[arg(long, env = "MEMLENS_KERNEL_STACK_REUSE", default_value = "100ms", value_parser = parse_reuse)]
    pub kernel_stack_reuse: Duration,
    /// How often to refresh the cgroup counters and the page census (e.g. 2s, 500ms).
    #[arg(long, env = "MEMLENS_REFRESH", default_value = "2s", value_parser = parse_refresh)]
    pub refresh: Duration,
    /// Distinct (memory cgroup, file) pairs whose page cache is counted (about 64 bytes each);
    /// events for further pairs are counted as lost.
    #[arg(long, env = "MEMLENS_FILE_ENTRIES", default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub file_entries: u32,
    /// Bytes of the ring buffer carrying process exits, OOM kills and cgroup changes (a power of
    /// two); events beyond it between two reads are counted as lost.
    #[arg(long, env = "MEMLENS_LIFECYCLE_BUFFER", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    pub lifecycle_buffer: u32,
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux (e.g. from BTFHub).
    #[arg(long, env = "MEMLENS_BTF", value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Most memory cgroups listed.
    #[arg(long, env = "MEMLENS_MAX_CGROUPS", default_value_t = 10_000)]
    pub max_cgroups: usize,
    /// The history database (SQLite).
    #[arg(
        long,
        env = "MEMLENS_DB",
        default_value = "/var/lib/memlens/history.db"
    )]
    pub db: PathBuf,
    /// How often a sample of every cgroup goes into the history (e.g. 30s).
    #[arg(long, env = "MEMLENS_HISTORY_INTERVAL", default_value = "30s", value_parser = parse_refresh)]
    pub history_interval: Duration,
    /// How long history is kept (at least the leak detector's lookback).
    #[arg(long, env = "MEMLENS_RETENTION", default_value = "6h", value_parser = parse_retention)]
    pub retention: Duration,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/healthz`) over TCP on this
    /// address, e.g. 127.0.0.1:9464 (off by default; the API stays on the Unix socket).
    #[arg(long, value_name = "ADDR", env = "MEMLENS_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The event engine's config file (TOML: detector windows, schedules, silence, filters);
    /// default: the built-in defaults.
    #[arg(long, env = "MEMLENS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Most distinct stacks attributed per census; the smallest beyond it merge into their
    /// cgroup's "other stacks" entry.
    #[arg(long, env = "MEMLENS_MAX_STACKS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_stacks: u64,
}

#[derive(Args, Debug)]
pub struct LifecycleArgs {
    /// Only this memory cgroup path and its descendants.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// How far back (e.g. 30m, 1h).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Most records, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file: errors name the key and the line; prints the effective settings
    /// (defaults filled in) as TOML.
    Check(ConfigCheckArgs),
}

#[derive(Args, Debug)]
pub struct ConfigCheckArgs {
    /// The config file (TOML).
    pub file: PathBuf,
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
    #[arg(long, value_parser = ["open", "recovered"])]
    pub status: Option<String>,
    #[arg(long, value_parser = ["leak_suspected", "file_cache_pressure", "abnormal_restarts"])]
    pub kind: Option<String>,
    /// Most events.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
    /// The memory cgroup (id, path or end of path).
    #[arg(long)]
    pub cgroup: String,
    /// How far back (e.g. 1h).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Most samples shown (evenly thinned).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// This memory cgroup (id, path or end of path); default: the 10 with the most page cache.
    #[arg(long)]
    pub cgroup: Option<String>,
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
    /// Only this memory cgroup (id, path or end of path) and its descendants.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Only this pod (UID or its beginning).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Growth window (e.g. 30s, 10m, 2h).
    #[arg(long, default_value = "10m")]
    pub since: String,
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
    #[arg(long, default_value = "2s", value_parser = parse_refresh)]
    pub interval: Duration,
    /// Show at most N cgroups (0: all the agent returns).
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    /// Only this cgroup: its id, its path, or the end of its path.
    #[arg(long)]
    pub cgroup: Option<String>,
}

/// Longest `--kernel-stack-reuse`: well below the stack collector's interval, so a reused stack
/// id is never one the collector just deleted.
pub const MAX_KERNEL_STACK_REUSE: Duration = Duration::from_secs(1);

/// A duration up to `MAX_KERNEL_STACK_REUSE` (0 allowed).
fn parse_reuse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 100ms, 0s)"))?;
    if d > MAX_KERNEL_STACK_REUSE {
        return Err("must be at most 1s".into());
    }
    Ok(d)
}

/// A power of two between 64 KiB and 256 MiB.
fn parse_ring_size(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if !n.is_power_of_two() || !(1 << 16..=1 << 28).contains(&n) {
        return Err("must be a power of two between 65536 and 268435456".into());
    }
    Ok(n)
}

/// A duration between 1 minute and 30 days.
fn parse_retention(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 6h, 2d)"))?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(30 * 24 * 3600) {
        return Err("must be between 1m and 30d".into());
    }
    Ok(d)
}

/// A duration between 100 ms and 1 h.
fn parse_refresh(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 2s, 500ms, 1m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("must be between 100ms and 1h".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        for args in [
            &["memlens", "frobnicate"][..],
            &["memlens", "agent", "--sample-shift", "40"],
            &["memlens", "top", "--interval", "soon"],
            &["memlens", "top", "--interval", "1ns"],
            &["memlens", "top", "--limit", "-3"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_ne!(err.exit_code(), 0, "{args:?}");
        }
        let ok = Cli::try_parse_from(["memlens", "top", "--json", "--cgroup", "/a/b"]).unwrap();
        assert!(matches!(
            ok.command,
            Command::Top(TopArgs { json: true, .. })
        ));
    }
}
