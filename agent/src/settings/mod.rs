//! The agent's settings, defined once: each field of [`AgentArgs`] is a flag, its `MEMLENS_*`
//! variable, and a key of the config file's `[agent]` table (the flag's name in snake case).
//! A flag beats its variable, which beats the file, which beats the default: the file's values
//! become the flags' defaults (clap's own layering), parsed by the flags' own parsers, so a
//! value means the same wherever it is written and a mistake is reported naming the key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, CommandFactory as _, FromArgMatches as _};
use memlens_engine::config::{Config, ConfigError};
use serde::Serialize;

use crate::cli::{Cli, Command};

mod values;

use values::{
    parse_cpu_budget, parse_pin_dir, parse_refresh, parse_retention, parse_reuse, parse_ring_size,
    parse_stack_copy,
};
pub use values::{FilemapProbeArg, PinDir};

/// `memlens agent`'s flags.
#[derive(Args, Clone, Debug, Serialize)]
pub struct AgentArgs {
    /// Sample one page frame in 2^N (0..=16; default 1 in 128). Lower is more precise and costs
    /// more: see docs/benchmarks.md.
    #[arg(long, env = "MEMLENS_SAMPLE_SHIFT", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub sample_shift: u32,
    /// Which frame of each block of 2^N is sampled comes from this seed (default: this boot's
    /// id, the same for every agent until the next boot). Kept records were sampled with the
    /// seed of their time: another seed starts them afresh.
    #[arg(long, env = "MEMLENS_SAMPLE_SEED")]
    pub sample_seed: Option<u64>,
    /// Upper bound on sampled-frame records (136 bytes each); the shift is raised to fit.
    #[arg(long, env = "MEMLENS_MAX_SAMPLE_ENTRIES", default_value_t = 524_288, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub max_sample_entries: u64,
    /// Most sampled frames the page census reads per refresh (about half a microsecond each):
    /// past it, each census reads the frames allocated again since their last read and sweeps
    /// on through the rest, so a frame's state is at most one sweep old. The default reads
    /// every frame each refresh on hosts up to 64 GiB at 1 in 128.
    #[arg(long, env = "MEMLENS_CENSUS_FRAMES", default_value_t = 131_072, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub census_frames: u64,
    /// Distinct stacks kept in the kernel (about 1 KiB each).
    #[arg(long, env = "MEMLENS_STACK_ENTRIES", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub stack_entries: u32,
    /// Reuse a CPU's last kernel stack for the same user stack within this long instead of
    /// walking it again (the walk is the costliest part of a sample); 0s walks every time.
    #[arg(long, env = "MEMLENS_KERNEL_STACK_REUSE", default_value = "100ms", value_parser = parse_reuse)]
    #[serde(with = "humantime_serde")]
    pub kernel_stack_reuse: Duration,
    /// How often to refresh the cgroup counters and the page census (e.g. 2s, 500ms).
    #[arg(long, env = "MEMLENS_REFRESH", default_value = "2s", value_parser = parse_refresh)]
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Share of one core the agent aims to stay within (0.02: 2%): on a busy node the refresh
    /// comes later than --refresh, up to a minute apart, when a cycle costs more; 0: never later.
    #[arg(long, env = "MEMLENS_CPU_BUDGET", default_value_t = 0.02, value_parser = parse_cpu_budget)]
    pub cpu_budget: f64,
    /// Distinct (memory cgroup, file) pairs whose page cache is counted (96 bytes of kernel
    /// memory each); events for further pairs are counted as lost.
    #[arg(long, env = "MEMLENS_FILE_ENTRIES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub file_entries: u32,
    /// Bytes of the ring buffer carrying process exits, OOM kills and cgroup changes (a power of
    /// two); events beyond it between two reads are counted as lost.
    #[arg(long, env = "MEMLENS_LIFECYCLE_BUFFER", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    pub lifecycle_buffer: u32,
    /// Bytes of user stack copied at each sampled allocation and unwound with the binary's own
    /// unwind tables (code built without frame pointers); 0 keeps frame-pointer stacks only.
    #[arg(long, env = "MEMLENS_STACK_COPY", default_value_t = 16_384, value_parser = parse_stack_copy)]
    pub stack_copy: u32,
    /// Bytes of the ring buffer carrying stack copies to the unwinder (a power of two); copies
    /// beyond it are counted as lost and keep their frame-pointer stack.
    #[arg(long, env = "MEMLENS_STACK_COPY_BUFFER", default_value_t = 1 << 22, value_parser = parse_ring_size)]
    pub stack_copy_buffer: u32,
    /// How the page-cache programs attach: `auto` uses the classic filemap tracepoints where
    /// their record carries the inode, device and order (one probe read per event), else the raw
    /// ones; `raw` always the raw ones (seven probe reads per event).
    #[arg(long, env = "MEMLENS_FILEMAP_PROBE", value_enum, default_value_t = FilemapProbeArg::Auto)]
    pub filemap_probe: FilemapProbeArg,
    /// Where the kernel maps and program links are pinned (a BPF file system) so that what the
    /// programs record outlives the agent: they stay attached while it restarts, and the next
    /// agent reads on. `none`: everything goes with the agent. `memlens unload` removes them.
    #[arg(long, env = "MEMLENS_PIN_DIR", default_value = memlens_kernel::loader::pinning::DEFAULT_ROOT, value_parser = parse_pin_dir)]
    pub pin_dir: PinDir,
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux (e.g. from BTFHub).
    #[arg(long, env = "MEMLENS_BTF", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
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
    #[serde(with = "humantime_serde")]
    pub history_interval: Duration,
    /// How long history is kept (at least the leak detector's lookback).
    #[arg(long, env = "MEMLENS_RETENTION", default_value = "6h", value_parser = parse_retention)]
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/healthz`) over TCP on this
    /// address, e.g. 127.0.0.1:9464 (off by default; the API stays on the Unix socket).
    #[arg(long, value_name = "ADDR", env = "MEMLENS_METRICS_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// The config file (TOML: the event engine's windows, schedules, silence and filters, and
    /// these settings under `[agent]`); default: the built-in defaults.
    #[arg(long, env = "MEMLENS_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Most distinct stacks attributed per census; the smallest beyond it merge into their
    /// cgroup's "other stacks" entry.
    #[arg(long, env = "MEMLENS_MAX_STACKS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_stacks: u64,
    /// Where the kubelet keeps its `pods` and `containers` log directories, which name pods and
    /// containers when the Kubernetes API is out of reach (mounted elsewhere in a container).
    #[arg(
        long,
        env = "MEMLENS_KUBELET_LOGS",
        value_name = "DIR",
        default_value = "/var/log"
    )]
    pub kubelet_logs: PathBuf,
}

/// Reads, parses and validates the config file at `path`, then fills `host` with this node's
/// name when the file leaves it out.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(with_hostname(Config::parse(&text, Some(path))?))
}

/// Fills `host` with this node's name when it is not set.
#[must_use]
pub fn with_hostname(mut config: Config) -> Config {
    if config.host.is_none() {
        config.host = hostname();
    }
    config
}

/// The node's name (`MEMLENS_NODE_NAME`), else the machine's hostname; `None` when neither is known.
fn hostname() -> Option<String> {
    // In a DaemonSet the pod's hostname is the pod's name: the node's comes from the downward API.
    if let Some(node) = std::env::var(memlens_pods::NODE_NAME_ENV)
        .ok()
        .filter(|n| !n.is_empty())
    {
        return Some(node);
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The `[agent]` table's values as the `agent` subcommand's defaults; each value checked by its
/// flag's own parser, and an unknown key or a bad value reported naming the file and the key.
fn with_file_defaults(
    mut command: clap::Command,
    path: &Path,
    table: &toml::Table,
) -> Result<clap::Command> {
    let Some(agent) = command.find_subcommand_mut("agent") else {
        bail!("the agent subcommand is missing from the command line definition");
    };
    let settable: Vec<String> = agent
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| FILE_SETTINGS.contains(&id.as_str()))
        .collect();
    for (key, value) in table {
        if !settable.contains(key) {
            bail!(
                "{}: agent.{key}: unknown key (expected one of: {})",
                path.display(),
                settable.join(", ")
            );
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "{}: agent.{key}: expected a string or a number, found {}",
                path.display(),
                other.type_str()
            ),
        };
        let Some(flag) = agent
            .get_arguments()
            .find(|a| a.get_id() == key.as_str())
            .and_then(clap::Arg::get_long)
            .map(|long| format!("--{long}"))
        else {
            continue;
        };
        // The flag's own parser, through clap: the value means what it means on the command line.
        let parsed = agent
            .clone()
            .no_binary_name(true)
            .try_get_matches_from([flag.as_str(), text.as_str()])
            .map(drop);
        if let Err(e) = parsed {
            let why = e.to_string();
            let why = why
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            bail!("{}: agent.{key}: {why}", path.display());
        }
        *agent = std::mem::take(agent).mut_arg(key.as_str(), |a| a.default_value(text));
    }
    Ok(command)
}

/// The keys the config file's `[agent]` table may set: every flag but `--config` itself.
const FILE_SETTINGS: &[&str] = &[
    "sample_shift",
    "sample_seed",
    "max_sample_entries",
    "census_frames",
    "stack_entries",
    "kernel_stack_reuse",
    "refresh",
    "cpu_budget",
    "file_entries",
    "lifecycle_buffer",
    "stack_copy",
    "stack_copy_buffer",
    "filemap_probe",
    "pin_dir",
    "btf",
    "max_cgroups",
    "db",
    "history_interval",
    "retention",
    "metrics_addr",
    "kubelet_logs",
    "max_stacks",
];

/// Parses the command line, with the config file's `[agent]` settings under the agent's flags
/// and variables. Returns the engine's config too (the defaults without a file).
pub fn parse() -> Result<(Cli, Option<Config>)> {
    // `--help`, `--version` and mistakes end the process here, as clap does.
    let cli = <Cli as clap::Parser>::parse();
    let Command::Agent(args) = &cli.command else {
        return Ok((cli, None));
    };
    let Some(path) = args.config.clone() else {
        return Ok((cli, Some(with_hostname(Config::default()))));
    };
    let config = load_config(&path)?;
    if config.agent.is_empty() {
        return Ok((cli, Some(config)));
    }
    let command = with_file_defaults(Cli::command(), &path, &config.agent)?;
    let matches = command.get_matches();
    let cli = Cli::from_arg_matches(&matches).context("reading the command line")?;
    Ok((cli, Some(config)))
}

/// `memlens config check FILE`: the file's effective settings, every default filled in, as
/// TOML; or what is wrong with it.
pub fn check(path: &Path) -> Result<String> {
    let config = load_config(path)?;
    let command = with_file_defaults(Cli::command(), path, &config.agent)?;
    let matches = command
        .try_get_matches_from(["memlens", "agent"])
        .with_context(|| format!("{}: the [agent] settings", path.display()))?;
    let Command::Agent(agent) = Cli::from_arg_matches(&matches)?.command else {
        bail!("the agent subcommand was not chosen");
    };
    #[derive(Serialize)]
    struct Effective<'a> {
        #[serde(flatten)]
        engine: &'a Config,
        agent: &'a AgentArgs,
    }
    let mut engine = config.clone();
    engine.agent = toml::Table::new();
    Ok(toml::to_string(&Effective {
        engine: &engine,
        agent: &agent,
    })?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use memlens_common::page::PageAlloc;

    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("memlens.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn agent(command: clap::Command, argv: &[&str]) -> AgentArgs {
        let matches = command.try_get_matches_from(argv).unwrap();
        match Cli::from_arg_matches(&matches).unwrap().command {
            Command::Agent(a) => a,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn file_settings_sit_under_flags_and_are_checked_by_the_flags_parsers() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[agent]\nsample_shift = 5\nrefresh = \"500ms\"\n");
        let config = load_config(&path).unwrap();
        let from_file = || with_file_defaults(Cli::command(), &path, &config.agent).unwrap();
        let a = agent(from_file(), &["memlens", "agent"]);
        assert_eq!((a.sample_shift, a.refresh), (5, Duration::from_millis(500)));
        let a = agent(from_file(), &["memlens", "agent", "--sample-shift", "9"]);
        assert_eq!((a.sample_shift, a.refresh), (9, Duration::from_millis(500)));
        for (text, expected) in [
            (
                "[agent]\nsample_shift = 40\n",
                "agent.sample_shift: invalid value '40'",
            ),
            (
                "[agent]\nrefresh = \"soon\"\n",
                "agent.refresh: invalid value 'soon'",
            ),
            (
                "[agent]\ncolour = 1\n",
                "agent.colour: unknown key (expected one of: sample_shift,",
            ),
            ("[agent]\nconfig = \"/x\"\n", "agent.config: unknown key"),
            (
                "[agent]\nretention = [1]\n",
                "agent.retention: expected a string or a number, found array",
            ),
        ] {
            let path = write(&dir, text);
            let config = load_config(&path).unwrap();
            let e = with_file_defaults(Cli::command(), &path, &config.agent)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{}: {expected}", path.display())),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn check_prints_every_effective_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "cluster = \"c\"\n[agent]\nsample_shift = 6\n");
        let text = check(&path).unwrap();
        assert!(text.contains("cluster = \"c\""), "{text}");
        assert!(text.contains("sample_shift = 6"), "{text}");
        assert!(text.contains("refresh = \"2s\""), "{text}");
        assert!(text.contains("[leak]"), "{text}");
    }

    #[test]
    fn load_names_the_file_and_fills_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "cluster = \"c\"\n\n[leak]\nhorizon = \"-2h\"\n");
        let e = load_config(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}:4: leak.horizon: invalid duration \"-2h\": must be a positive duration such as 30m or 6h", path.display()));
        let path = write(&dir, "[leak]\nthreshold = 2.0\n");
        let e = load_config(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: leak.threshold: must be in (0, 1], found 2",
                path.display()
            )
        );
        let path = write(&dir, "cluster = \"c\"\n");
        assert_eq!(load_config(&path).unwrap().host, hostname());
        assert!(matches!(
            load_config(&dir.path().join("nope")),
            Err(ConfigError::Read { .. })
        ));
    }

    /// Bytes of one sampled-frame record, as `--max-sample-entries`' help states them.
    const SAMPLE_RECORD_BYTES: usize = size_of::<PageAlloc>();

    #[test]
    fn the_record_size_in_the_help_is_the_records() {
        let help = Cli::command()
            .find_subcommand("agent")
            .and_then(|a| {
                a.get_arguments()
                    .find(|a| a.get_id() == "max_sample_entries")
                    .and_then(|a| a.get_help().map(ToString::to_string))
            })
            .unwrap();
        assert!(
            help.contains(&format!("({SAMPLE_RECORD_BYTES} bytes each)")),
            "{help}"
        );
        let help = Cli::command()
            .find_subcommand("agent")
            .and_then(|a| {
                a.get_arguments()
                    .find(|a| a.get_id() == "sample_shift")
                    .map(|a| {
                        (
                            a.get_help().map(ToString::to_string),
                            a.get_default_values().to_vec(),
                        )
                    })
            })
            .unwrap();
        let shift: u32 = help.1[0].to_str().unwrap().parse().unwrap();
        assert!(
            help.0
                .unwrap()
                .contains(&format!("default 1 in {}", 1u32 << shift)),
            "the help states the default rate"
        );
    }
}
