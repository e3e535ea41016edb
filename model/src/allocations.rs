//! Allocation-level profiles: what a process's allocator (or its language runtime) has sampled of
//! its allocations, by stack. Page-level attribution names the code that first touched a page;
//! an allocator that reuses freed memory hands a leak pages someone else touched, and only the
//! allocations themselves say who holds them.

/// Sampled allocations of one stack, as recorded (not yet scaled to estimates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledStack {
    /// Return addresses, innermost first.
    pub pcs: Vec<u64>,
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

/// One process's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationProfile {
    pub pid: u32,
    /// Average bytes allocated between two samples (Go's `runtime.MemProfileRate`).
    pub sample_rate_bytes: u64,
    pub stacks: Vec<SampledStack>,
    /// Stacks left out by the reader's bound.
    pub dropped_stacks: u64,
    /// The first address of each stack is where the allocator was entered (a probe's
    /// instruction pointer), not a return address (the runtime's stacks hold only callers).
    pub leaf_is_ip: bool,
}

/// Estimated allocations and bytes from samples taken on average every `rate` bytes, each
/// allocation of average size `bytes / count` sampled with probability `1 - e^(-size / rate)`
/// (a Poisson process over bytes allocated: Go's and tcmalloc's sampling). Its inverse is the
/// Horvitz-Thompson weight, as Go's own `pprof` applies it.
#[must_use]
pub fn unsample(count: u64, bytes: u64, rate: u64) -> (f64, f64) {
    if count == 0 || bytes == 0 {
        return (0.0, 0.0);
    }
    if rate <= 1 {
        return (count as f64, bytes as f64);
    }
    let average = bytes as f64 / count as f64;
    let scale = 1.0 / (1.0 - (-average / rate as f64).exp());
    (count as f64 * scale, bytes as f64 * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsampling_weighs_small_allocations_up_and_leaves_large_ones() {
        // 4 samples of 64 KiB at 512 KiB: each sampled with p = 1 - e^(-1/8) = 0.1175.
        let (count, bytes) = unsample(4, 4 * 65_536, 524_288);
        assert!((count - 34.04).abs() < 0.01, "{count}");
        assert!((bytes - 34.04 * 65_536.0).abs() < 1_000.0, "{bytes}");
        // 10 MiB allocations are always sampled.
        let (count, _) = unsample(3, 30 << 20, 524_288);
        assert!((count - 3.0).abs() < 1e-6, "{count}");
        assert_eq!(unsample(0, 0, 524_288), (0.0, 0.0));
        assert_eq!(unsample(5, 500, 1), (5.0, 500.0));
    }
}
