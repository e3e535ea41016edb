//! `memlens debug ...`: measurements for `cargo xtask bench` (hidden from `--help`).

use std::time::Instant;

use anyhow::{Context as _, Result};

use memlens_procfs::maps as procmaps;
use memlens_symbolize::{StackAddr, Symbolizer};

use crate::cli::BenchSymbolizeArgs;

/// Symbolizes `stacks` stacks of `depth` addresses drawn from this very binary's code (a
/// realistic binary: tens of MiB with DWARF), first with a new symbolizer (cold: it parses the
/// binary) then again (warm), and prints the throughputs as JSON.
pub fn bench_symbolize(args: &BenchSymbolizeArgs) -> Result<()> {
    let pid = std::process::id();
    let maps = procmaps::read_maps(pid).context("reading own maps")?;
    let exe = std::fs::read_link("/proc/self/exe").context("/proc/self/exe")?;
    let text = maps
        .iter()
        .find(|m| m.executable && std::path::Path::new(m.path.as_str()) == exe)
        .context("own executable mapping not found")?;
    // A deterministic xorshift generator: the same addresses every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let span = text.end - text.start;
    let stacks: Vec<Vec<StackAddr>> = (0..args.stacks)
        .map(|_| {
            (0..args.depth)
                .map(|i| StackAddr {
                    addr: text.start + next() % span,
                    return_address: i > 0,
                    recovered: false,
                })
                .collect()
        })
        .collect();
    let mut symbolizer = Symbolizer::new();
    let mut run = || {
        let started = Instant::now();
        let mut named = 0usize;
        for stack in &stacks {
            named += symbolizer
                .user_stack(pid, true, &maps, stack)
                .iter()
                .flatten()
                .filter(|f| f.function.is_some())
                .count();
        }
        (started.elapsed().as_secs_f64(), named)
    };
    let (cold, named) = run();
    let (warm, _) = run();
    println!(
        "{}",
        serde_json::json!({
            "binary": exe.display().to_string(),
            "binary_bytes": std::fs::metadata(&exe).map(|m| m.len()).unwrap_or(0),
            "stacks": args.stacks,
            "depth": args.depth,
            "frames_named": named,
            "cold_seconds": cold,
            "warm_seconds": warm,
            "cold_stacks_per_second": args.stacks as f64 / cold,
            "warm_stacks_per_second": args.stacks as f64 / warm,
        })
    );
    Ok(())
}
