//! The command line: one binary, the agent and its client subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use memlens_cli::args::{
    CacheArgs, EventsCommand, HistoryArgs, LeaksArgs, LifecycleArgs, StatusArgs, TopArgs,
};
use memlens_types::api::DEFAULT_SOCKET;

use crate::settings::AgentArgs;

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
    /// Detach the kernel programs and free the maps a stopped agent left pinned to outlive it
    /// (after an uninstall; needs root). A running agent keeps its own until it stops.
    Unload(UnloadArgs),
    /// Measurements used by `cargo xtask bench`.
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
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

#[derive(Args, Debug)]
pub struct UnloadArgs {
    /// The agent's `--pin-dir`.
    #[arg(long, env = "MEMLENS_PIN_DIR", default_value = memlens_kernel::loader::pinning::DEFAULT_ROOT)]
    pub pin_dir: PathBuf,
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
            &["memlens", "top", "--cgroup", ""],
            &["memlens", "events", "list", "--kind", "leak"],
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
