//! The page sampling rule and the record kept per sampled page.
//!
//! Physical memory is cut into *superblocks* of `2^shift` page frames. In each superblock exactly
//! one frame is *sampled*; which one is a fixed pseudo-random function of the superblock number
//! and a seed ([`sampled_offset`]). Because the choice depends only on the frame number (and the
//! seed, fixed while the programs' records live), the allocation and the later state of a sampled
//! page always agree, whatever order, context or CPU they happen on.
//!
//! Each sampled frame stands for the `2^shift` frames of its superblock, so the number of pages a
//! memory cgroup holds is estimated as `2^shift` times the number of sampled frames charged to it.
//! This is stratified sampling with one draw per stratum: over the seed the estimate is unbiased
//! for any placement of the cgroup's pages, and for a cgroup holding `N` pages its standard
//! deviation is at most `sqrt(N * 2^shift)` pages (relative error at most `sqrt(2^shift / N)`;
//! see `docs/design.md`). Blocks of `2^shift` frames or more, such as transparent huge pages,
//! contain exactly `2^(order - shift)` sampled frames: no error.

/// Multiplier of Fibonacci hashing (`2^64 / golden ratio`): spreads consecutive superblock
/// numbers evenly over the offsets. Its regular (low-discrepancy) spread beat a full mixer
/// (MurmurHash3's finalizer) where it matters: two sibling cgroups allocating at the same time,
/// 1 in 128, 128 MiB cgroup: within -1.6..+7% over 7 runs with this, -12..+12.5% over 6 runs with
/// the mixer (whose estimates of a 200 MiB leak beside a churn were tighter: -5..-2% against
/// -0.5..+10%).
pub const FIBONACCI_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Largest supported `shift` (one sampled page in 2^16 = 256 MiB of 4 KiB pages).
pub const MAX_SAMPLE_SHIFT: u32 = 16;

/// Words copied from the top of the user stack at a sampled allocation: enough to find the
/// return address of a frameless leaf function (glibc's `memset`, Go's `runtime.memmove`), which
/// a frame-pointer walk skips, for leaves that keep up to 7 words of their own on the stack.
pub const LEAF_STACK_WORDS: usize = 8;

/// Deepest stack kept: the kernel's default `perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;

/// A stack as the `STACKS` map keeps it: instruction addresses, innermost first, zero after the
/// last.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackFrames {
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// The key of a stack in `STACKS`: a 64-bit hash of all its words (the kernel zero-fills what
/// follows the last address, so equal stacks hash equally), never 0 (0 means "no stack" in a
/// record). Keyed by content, a stack has one key and a key one stack, so two stacks never
/// compete for a slot (the kernel's stack-trace map keeps one stack per hash bucket and refuses
/// the next: 13% of stacks lost at 22% fill), and a key in a record names the same stack for as
/// long as the map keeps it. A fixed number of rounds with no branch: a loop ending at the
/// stack's depth made the 6.1 verifier give up (too many states).
#[inline(always)]
#[must_use]
pub fn stack_key(frames: &StackFrames) -> u64 {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for &ip in &frames.ips {
        h = (h ^ ip).wrapping_mul(FIBONACCI_MULTIPLIER);
        h ^= h >> 29;
    }
    h | 1
}

/// Largest number of sampled frames recorded for one allocation. The buddy allocator's largest
/// order is 10 on common configurations, so with `shift >= 4` no allocation exceeds it; above it
/// the kernel program counts [`crate::counters::Counter::HighOrderTruncated`].
pub const MAX_SAMPLED_PER_ALLOC: u32 = 64;

/// Offset, within superblock `superblock`, of its one sampled frame (`0..2^shift`).
///
/// The golden-ratio sequence rotated by `seed` (a Cranley-Patterson rotation): the spread stays
/// regular, and each superblock's offset is uniform over seeds, which is what makes the estimate
/// unbiased whatever the layout of a cgroup's pages. With one fixed sequence for every host and
/// boot, a layout that repeats (a workload given back the frames it just freed) repeated its
/// error too.
#[inline(always)]
#[must_use]
pub fn sampled_offset(superblock: u64, shift: u32, seed: u64) -> u64 {
    if shift == 0 {
        return 0;
    }
    superblock
        .wrapping_mul(FIBONACCI_MULTIPLIER)
        .wrapping_add(seed)
        >> (64 - shift)
}

/// The page frame number sampled in `superblock`.
#[inline(always)]
#[must_use]
pub fn sampled_pfn(superblock: u64, shift: u32, seed: u64) -> u64 {
    (superblock << shift) | sampled_offset(superblock, shift, seed)
}

/// The sampled frames inside the naturally aligned block `[pfn, pfn + 2^order)`: `count`
/// consecutive superblocks starting at `first_superblock`, each contributing its sampled frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampledFrames {
    pub first_superblock: u64,
    pub count: u64,
}

/// Which sampled frames an allocation of `2^order` frames at `pfn` contains.
#[inline(always)]
#[must_use]
pub fn sampled_frames(pfn: u64, order: u32, shift: u32, seed: u64) -> SampledFrames {
    let superblock = pfn >> shift;
    if order >= shift {
        return SampledFrames {
            first_superblock: superblock,
            count: 1 << (order - shift),
        };
    }
    let mask = (1u64 << shift) - 1;
    let start = pfn & mask;
    let offset = sampled_offset(superblock, shift, seed);
    let count = u64::from(offset >= start && offset < start + (1 << order));
    SampledFrames {
        first_superblock: superblock,
        count,
    }
}

/// What the kernel program recorded about the latest allocation of one sampled frame.
///
/// Stored in an array indexed by superblock number. An allocation overwrites the entry; a free
/// leaves it in place: whether the page is still held, and by which memory cgroup, is read from
/// the kernel's own page state (`/proc/kpagecgroup`, `/proc/kpageflags`) when the agent takes its
/// census, so there is no free-side program on the hot path and nothing to get out of step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageAlloc {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at allocation; 0 when never seen.
    pub ts_ns: u64,
    /// Memory cgroup id (the inode number of its directory) of the allocating task; 0 if unknown.
    pub task_memcg: u64,
    /// Process (thread group) id of the allocating task.
    pub tgid: u32,
    /// Thread id of the allocating task.
    pub pid: u32,
    /// Key of the kernel stack in the `STACKS` map ([`stack_key`]); 0 when it could not be
    /// taken (the counters say why).
    pub kernel_stack: u64,
    /// Key of the user stack's frame-pointer walk in `STACKS`; 0 when there is none: the stack
    /// was copied for unwinding instead (`user_copied`), no user context, or an error.
    pub user_stack: u64,
    /// The allocation's gfp flags (low 32 bits).
    pub gfp_flags: u32,
    /// Allocation order (`2^order` frames).
    pub order: u16,
    /// 1 when the user stack was copied for unwinding in userspace (see `crate::stack_copy`).
    pub user_copied: u8,
    pub reserved: u8,
    /// `comm` of the allocating task.
    pub comm: [u8; 16],
    /// The user stack pointer at the allocation, for a frame-pointer walk (0 otherwise).
    pub user_sp: u64,
    /// The `LEAF_STACK_WORDS` words at `user_sp`: the agent picks the leaf's return address out
    /// of them using the leaf's unwind information.
    pub user_stack_top: [u64; LEAF_STACK_WORDS],
}

/// Outcome of the vmemmap calibration program: the `struct page` address the allocator
/// tracepoint passed for an allocation made by the calibrating process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CalibrationSample {
    pub page: u64,
    pub order: u64,
}

/// Byte offsets of the fields the classic `kmem:mm_page_alloc` tracepoint program reads, taken
/// from the tracepoint's `format` file at run time (they differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocTracepointFields {
    pub pfn: u32,
    pub order: u32,
    pub gfp_flags: u32,
    pub reserved: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of u32 fields, no padding.
    unsafe impl aya::Pod for super::AllocTracepointFields {}
    // SAFETY: plain #[repr(C)] data with no padding holes and no pointers.
    unsafe impl aya::Pod for super::PageAlloc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CalibrationSample {}
    // SAFETY: an array of u64.
    unsafe impl aya::Pod for super::StackFrames {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_frame_and_are_never_zero() {
        let mut a = StackFrames {
            ips: [0; MAX_STACK_DEPTH],
        };
        assert_ne!(stack_key(&a), 0);
        a.ips[0] = 0xffff_ffff_8100_0000;
        a.ips[1] = 0xffff_ffff_8100_1000;
        let mut b = a;
        b.ips[1] += 1;
        assert_ne!(stack_key(&a), stack_key(&b));
        let mut swapped = a;
        swapped.ips.swap(0, 1);
        assert_ne!(stack_key(&a), stack_key(&swapped), "order matters");
    }

    #[test]
    fn every_superblock_has_exactly_one_sampled_frame() {
        for (shift, seed) in [(1, 0), (4, 7), (6, u64::MAX), (8, 0x1234_5678_9abc_def0)] {
            for superblock in 0..2000u64 {
                let base = superblock << shift;
                let sampled: u64 = (0..1u64 << shift)
                    .map(|i| sampled_frames(base + i, 0, shift, seed).count)
                    .sum();
                assert_eq!(sampled, 1, "shift {shift} superblock {superblock}");
                let pfn = sampled_pfn(superblock, shift, seed);
                assert_eq!(pfn >> shift, superblock);
                assert_eq!(sampled_frames(pfn, 0, shift, seed).count, 1);
            }
        }
    }

    #[test]
    fn aligned_blocks_hold_their_share_of_sampled_frames() {
        let (shift, seed) = (6, 0xfeed_f00d_dead_beef);
        for order in 0..=10u32 {
            let mut total = 0;
            let blocks = 4096u64 >> order.min(6);
            for block in 0..blocks {
                let pfn = block << order;
                let frames = sampled_frames(pfn, order, shift, seed);
                if order >= shift {
                    assert_eq!(frames.count, 1 << (order - shift));
                }
                let brute = (pfn..pfn + (1 << order))
                    .filter(|&p| sampled_pfn(p >> shift, shift, seed) == p)
                    .count() as u64;
                assert_eq!(frames.count, brute, "order {order} pfn {pfn}");
                total += frames.count;
            }
            assert_eq!(total, (blocks << order) >> shift, "order {order}");
        }
    }

    #[test]
    fn offsets_spread_over_the_superblock() {
        let shift = 6;
        let mut hist = [0u32; 64];
        for superblock in 0..64_000u64 {
            hist[sampled_offset(superblock, shift, 0x0123_4567_89ab_cdef) as usize] += 1;
        }
        // 1000 expected per offset: every offset used, none more than 20% off.
        assert!(hist.iter().all(|&n| (800..1200).contains(&n)), "{hist:?}");
    }

    #[test]
    fn a_superblocks_offset_is_uniform_over_seeds() {
        // One superblock, seeds spread over the 64-bit range: each offset equally often, so
        // the estimate is unbiased over the seed whatever frames a cgroup holds.
        let shift = 4;
        let mut hist = [0u32; 16];
        for i in 0..16_000u64 {
            let seed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15 / 3);
            hist[sampled_offset(12_345, shift, seed) as usize] += 1;
        }
        assert!(hist.iter().all(|&n| (800..1200).contains(&n)), "{hist:?}");
    }
}
