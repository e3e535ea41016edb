//! The values of `memlens agent`'s flags that are more than a number: their types and parsers,
//! which give the errors a user sees for a bad flag or config-file value.

use std::{path::PathBuf, time::Duration};

use serde::Serialize;

/// `--pin-dir`: a directory on a BPF file system, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct PinDir(pub Option<PathBuf>);

impl From<PinDir> for String {
    fn from(dir: PinDir) -> String {
        dir.0
            .map_or_else(|| "none".into(), |p| p.display().to_string())
    }
}

/// `none` or an absolute path.
pub(super) fn parse_pin_dir(text: &str) -> Result<PinDir, String> {
    if text == "none" {
        return Ok(PinDir(None));
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err("must be an absolute path (on a BPF file system) or none".into());
    }
    Ok(PinDir(Some(path)))
}

/// Longest `--kernel-stack-reuse`: well below the stack collector's interval, so a reused stack
/// id is never one the collector just deleted.
pub const MAX_KERNEL_STACK_REUSE: Duration = Duration::from_secs(1);

/// A duration up to `MAX_KERNEL_STACK_REUSE` (0 allowed).
pub(super) fn parse_reuse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 100ms, 0s)"))?;
    if d > MAX_KERNEL_STACK_REUSE {
        return Err("must be at most 1s".into());
    }
    Ok(d)
}

/// A power of two between 64 KiB and 256 MiB.
pub(super) fn parse_ring_size(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if !n.is_power_of_two() || !(1 << 16..=1 << 28).contains(&n) {
        return Err("must be a power of two between 65536 and 268435456".into());
    }
    Ok(n)
}

/// 0 or a multiple of 4096 up to the kernel program's maximum.
pub(super) fn parse_stack_copy(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|e| format!("{e}"))?;
    let max = memlens_common::stack_copy::STACK_COPY_MAX as u32;
    if !n.is_multiple_of(4096) || n > max {
        return Err(format!("must be 0 or a multiple of 4096 up to {max}"));
    }
    Ok(n)
}

/// A share of one core, 0 to 1.
pub(super) fn parse_cpu_budget(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|e| format!("{e} (examples: 0.02 for 2% of a core, 0 for no limit)"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err("must be between 0 and 1 (a share of one core)".into());
    }
    Ok(share)
}

/// A duration between 1 minute and 30 days.
pub(super) fn parse_retention(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 6h, 2d)"))?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(30 * 24 * 3600) {
        return Err("must be between 1m and 30d".into());
    }
    Ok(d)
}

/// A duration between 100 ms and 1 h.
pub(super) fn parse_refresh(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 2s, 500ms, 1m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("must be between 100ms and 1h".into());
    }
    Ok(d)
}

/// `--filemap-probe`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilemapProbeArg {
    Auto,
    Raw,
}

impl From<FilemapProbeArg> for memlens_kernel::loader::FilemapProbe {
    fn from(arg: FilemapProbeArg) -> Self {
        match arg {
            FilemapProbeArg::Auto => Self::Auto,
            FilemapProbeArg::Raw => Self::Raw,
        }
    }
}
