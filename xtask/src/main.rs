//! Developer commands for memlens: `cargo xtask <command>`.
//!
//! `setup` installs what the build and the tests need (idempotent, quick when all is there); `run` and `test`
//! are the README's two commands and call `setup` first, so a fresh machine needs nothing else.

mod bench;
mod crate_graph;
mod ebpf_build;
mod setup;
mod util;
mod vm;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "memlens developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain the kernel programs need (Debian packages, bpf-linker).
    Setup,
    /// Build the kernel programs (ebpf/) for bpfel-unknown-none.
    BuildEbpf,
    /// Set up, build, start the agent and show live per-cgroup memory (`memlens top --watch`).
    Run {
        /// Extra arguments for `memlens agent`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Set up, build, then run lints, unit tests, the privileged integration tests, and their
    /// accuracy subset in the guests of `vm-test`.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the guests of `cargo xtask vm-test` (run after the host's tests otherwise).
        #[arg(long)]
        no_vm: bool,
        /// Only run integration tests whose name contains this (the guests are skipped then).
        filter: Option<String>,
    },
    /// The accuracy tests on other kernels and cgroup layouts, in virtme-ng guests, and here.
    VmTest {
        /// Machines to test: `6.12-v2`, `6.1-v2`, `6.1-hybrid`, `host`, or a kernel's name for
        /// all its layouts (default: all).
        targets: Vec<String>,
        /// Guests booted at once (one vCPU each; default: this host's cores, at most 2).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Benchmarks (not timed tests): overhead of the agent on workloads, side by side.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => {
            let object = ebpf_build::build(&root)?;
            println!("{}", object.display());
            Ok(())
        }
        Command::Run { agent_args } => {
            setup::setup()?;
            util::run_main_job(&root, &agent_args)
        }
        Command::Test {
            no_lint,
            no_vm,
            filter,
        } => {
            setup::setup()?;
            util::run_tests(&root, !no_lint, filter.as_deref())?;
            if no_vm || filter.is_some() {
                return Ok(());
            }
            vm::run(&root, &vm::guest_names(), vm::default_jobs())
        }
        Command::VmTest { targets, jobs } => {
            setup::setup()?;
            vm::run(&root, &targets, jobs.unwrap_or_else(vm::default_jobs))
        }
        Command::Bench { which } => {
            setup::setup()?;
            bench::run(&root, which)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .context("xtask lives one level below the workspace root")
}
