//! `memlens`: the agent and its CLI in one binary. This file only parses and dispatches.

mod api;
mod cli;
mod debug;
mod health;
mod profiles;
mod run;
mod settings;
mod status;
mod traces;
mod workers;

use std::process::ExitCode;

use cli::{Command, ConfigCommand, DebugCommand};
use memlens_cli::Client;

fn main() -> ExitCode {
    let (cli, config) = match settings::parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("memlens: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(matches!(cli.command, Command::Agent(_)));
    let client = Client::new(&cli.socket);
    let result = match &cli.command {
        Command::Agent(args) => run::run(
            cli.socket.clone(),
            args,
            config.unwrap_or_else(|| settings::with_hostname(memlens_engine::Config::default())),
        ),
        Command::Status(args) => ask(memlens_cli::status::run(&client, args)),
        Command::Top(args) => ask(memlens_cli::top::run(&client, args)),
        Command::Leaks(args) => ask(memlens_cli::leaks::run(&client, args)),
        Command::History(args) => ask(memlens_cli::history::run(&client, args)),
        Command::Lifecycle(args) => ask(memlens_cli::lifecycle::run(&client, args)),
        Command::Events(command) => ask(memlens_cli::events::run(&client, command)),
        Command::Cache(args) => ask(memlens_cli::cache::run(&client, args)),
        Command::Config(ConfigCommand::Check(args)) => {
            settings::check(&args.file).map(|effective| {
                println!(
                    "{} is valid; effective settings:\n\n{effective}",
                    args.file.display()
                );
            })
        }
        Command::Unload(args) => unload(&args.pin_dir),
        Command::Debug(DebugCommand::BenchSymbolize(args)) => debug::bench_symbolize(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memlens: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `memlens unload`: removes the pins under `dir`.
fn unload(dir: &std::path::Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("memlens unload needs root (it removes pins from a BPF file system)");
    }
    if memlens_kernel::loader::pinning::unload(dir)? {
        println!(
            "removed {}: the programs a stopped agent left attached are detached and its maps freed",
            dir.display()
        );
    } else {
        println!("nothing pinned at {}", dir.display());
    }
    Ok(())
}

/// Runs one client command on a runtime of its own.
fn ask(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
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
