//! `memlens`: the agent and its CLI in one binary. This file only parses and dispatches.

mod agent;
mod api;
mod attribution;
mod cgroup;
mod cli;
mod collectors;
mod config;
mod engine;
mod exporters;
mod history;
mod loader;
mod model;
mod physmem;
mod status;
mod symbolize;
mod units;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command};

/// The config file, or the defaults; the retention must cover the detectors' windows.
fn agent_config(args: &cli::AgentArgs) -> anyhow::Result<config::Config> {
    let config = match &args.config {
        Some(path) => config::Config::load(path)?,
        None => config::Config::default().with_hostname(),
    };
    let needed = config
        .leak
        .lookback
        .max(config.restarts.window.saturating_mul(2));
    if needed > args.retention {
        anyhow::bail!(
            "--retention {} is shorter than the detectors need ({}: leak.lookback, or twice \
             restarts.window); raise --retention or shorten the windows",
            humantime::format_duration(args.retention),
            humantime::format_duration(needed)
        );
    }
    Ok(config)
}

/// The file's `[agent]` settings as flags, each checked by its flag's own parser.
fn checked_agent_settings(
    path: &std::path::Path,
    file: &config::Config,
) -> anyhow::Result<Vec<(&'static str, String, String)>> {
    let settings = file.agent.flags();
    for (key, flag, value) in &settings {
        if let Err(e) = Cli::try_parse_from(["memlens", "agent", flag.as_str(), value.as_str()]) {
            let why = e.to_string();
            let why = why
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            anyhow::bail!("{}: agent.{key}: {why}", path.display());
        }
    }
    Ok(settings)
}

/// The agent's flags with the config file's `[agent]` settings under them: a setting counts
/// unless its flag is given or its `MEMLENS_*` variable is set (flags > environment > file >
/// defaults). The file's values go through the flags' own parsers, and an error names the key.
fn with_file_settings(cli: Cli) -> anyhow::Result<Cli> {
    let Command::Agent(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = &args.config else {
        return Ok(cli);
    };
    let file = config::Config::load(path)?;
    let settings: Vec<_> = checked_agent_settings(path, &file)?
        .into_iter()
        .filter(|(key, _, _)| std::env::var_os(format!("MEMLENS_{}", key.to_uppercase())).is_none())
        .collect();
    if settings.is_empty() {
        return Ok(cli);
    }
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let at = argv
        .iter()
        .enumerate()
        .skip(1)
        .find(|(i, a)| *a == "agent" && argv[i - 1] != "--socket")
        .map_or(argv.len(), |(i, _)| i + 1);
    let file_flags = settings
        .into_iter()
        .flat_map(|(_, flag, value)| [flag.into(), value.into()]);
    argv.splice(at..at, file_flags);
    Ok(Cli::try_parse_from(argv)?)
}

fn main() -> ExitCode {
    let cli = match with_file_settings(Cli::parse()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("memlens: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let is_agent = matches!(cli.command, Command::Agent(_));
    init_logging(is_agent);
    let result = match &cli.command {
        Command::Agent(args) => agent_config(args).and_then(|config| {
            agent::run(&agent::AgentSettings {
                socket: cli.socket.clone(),
                load: loader::LoadOptions {
                    sample_shift: args.sample_shift,
                    max_sample_entries: args.max_sample_entries,
                    stack_entries: args.stack_entries,
                    kernel_stack_reuse_ns: u64::try_from(args.kernel_stack_reuse.as_nanos())
                        .unwrap_or(u64::MAX),
                    btf: args.btf.clone(),
                    file_entries: args.file_entries,
                    lifecycle_buffer: args.lifecycle_buffer,
                },
                refresh: args.refresh,
                max_cgroups: args.max_cgroups,
                max_stacks: args.max_stacks,
                db: args.db.clone(),
                history_interval: args.history_interval,
                retention: args.retention,
                config,
                metrics_addr: args.metrics_addr,
            })
        }),
        Command::Status(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::status::run(&cli.socket, args)))
        }
        Command::Top(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::top::run(&cli.socket, args)))
        }
        Command::Leaks(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::leaks::run(&cli.socket, args)))
        }
        Command::History(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::history::run(&cli.socket, args)))
        }
        Command::Lifecycle(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::lifecycle::run(&cli.socket, args)))
        }
        Command::Config(cli::ConfigCommand::Check(args)) => config::Config::load(&args.file)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                checked_agent_settings(&args.file, &config)?;
                let effective = toml::to_string(&config)?;
                println!(
                    "{} is valid; effective settings:\n\n{effective}",
                    args.file.display()
                );
                Ok(())
            }),
        Command::Events(command) => {
            client_runtime().and_then(|rt| rt.block_on(cli::events::run(&cli.socket, command)))
        }
        Command::Cache(args) => {
            client_runtime().and_then(|rt| rt.block_on(cli::cache::run(&cli.socket, args)))
        }
        Command::Debug(cli::DebugCommand::BenchSymbolize(args)) => {
            cli::debug::bench_symbolize(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memlens: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr; `RUST_LOG` overrides the default (info for the agent, warnings for the CLI).
fn init_logging(agent: bool) {
    // kube's client logs every failed request; the pod directory warns once itself.
    let default = if agent {
        "info,kube_client::client::builder=off"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
