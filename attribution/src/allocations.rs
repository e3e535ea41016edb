//! Allocation-level answers: processes' own allocation profiles (the Go runtime's heap profile),
//! unsampled, ranked by bytes in use over the processes asked about, and symbolized.

use std::time::Duration;

use memlens_model::allocations::{unsample, AllocationProfile, SampledStack};
use memlens_procfs::Mapping;
use memlens_symbolize::StackAddr;
use memlens_types::allocations::{
    AllocationEntry, AllocationSource, AllocationsResponse, ProcessProfile,
};

use crate::symbols::SymbolCache;

/// One process asked about, as read.
#[derive(Clone, Debug)]
pub struct ProcessInput {
    pub pid: u32,
    pub comm: String,
    /// Its mappings, to symbolize its stacks.
    pub maps: Vec<Mapping>,
    /// Its profile, or why there is none.
    pub profile: Result<AllocationProfile, String>,
    /// Where the profile came from.
    pub source: AllocationSource,
    /// How long reading the profile took.
    pub read_time: Duration,
}

/// Estimated (objects, bytes) in use and allocated of one stack.
fn estimates(stack: &SampledStack, rate: u64) -> [f64; 4] {
    let (inuse_objects, inuse_bytes) = unsample(
        stack.allocs.saturating_sub(stack.frees),
        stack.alloc_bytes.saturating_sub(stack.free_bytes),
        rate,
    );
    let (alloc_objects, alloc_bytes) = unsample(stack.allocs, stack.alloc_bytes, rate);
    [inuse_objects, inuse_bytes, alloc_objects, alloc_bytes]
}

/// The answer for `inputs`: each process's totals, and the `top` stacks holding the most.
#[must_use]
pub fn answer(
    inputs: &[ProcessInput],
    top: usize,
    symbols: &mut SymbolCache,
    taken_at_unix_ms: u64,
) -> AllocationsResponse {
    let mut processes = Vec::with_capacity(inputs.len());
    // (input, stack, estimates) over every process.
    let mut ranked: Vec<(&ProcessInput, &SampledStack, [f64; 4])> = Vec::new();
    for input in inputs {
        match &input.profile {
            Ok(profile) => {
                let mut totals = [0.0; 4];
                for stack in &profile.stacks {
                    let e = estimates(stack, profile.sample_rate_bytes);
                    for (t, v) in totals.iter_mut().zip(e) {
                        *t += v;
                    }
                    if e[1] > 0.0 {
                        ranked.push((input, stack, e));
                    }
                }
                processes.push(ProcessProfile {
                    pid: input.pid,
                    comm: input.comm.clone(),
                    source: Some(input.source),
                    error: None,
                    sample_rate_bytes: profile.sample_rate_bytes,
                    inuse_objects: totals[0].round() as u64,
                    inuse_bytes: totals[1].round() as u64,
                    alloc_objects: totals[2].round() as u64,
                    alloc_bytes: totals[3].round() as u64,
                    stacks: profile.stacks.len(),
                    dropped_stacks: profile.dropped_stacks,
                    read_seconds: input.read_time.as_secs_f64(),
                });
            }
            Err(why) => processes.push(ProcessProfile {
                pid: input.pid,
                comm: input.comm.clone(),
                source: None,
                error: Some(why.clone()),
                sample_rate_bytes: 0,
                inuse_bytes: 0,
                inuse_objects: 0,
                alloc_bytes: 0,
                alloc_objects: 0,
                stacks: 0,
                dropped_stacks: 0,
                read_seconds: input.read_time.as_secs_f64(),
            }),
        }
    }
    ranked.sort_by(|a, b| b.2[1].total_cmp(&a.2[1]).then(a.0.pid.cmp(&b.0.pid)));
    ranked.truncate(top);
    let by_inuse = ranked
        .into_iter()
        .map(|(input, stack, e)| {
            // Return addresses, but for a probe's own instruction pointer at the leaf.
            let leaf_is_ip = input.profile.as_ref().is_ok_and(|p| p.leaf_is_ip);
            let addrs: Vec<StackAddr> = stack
                .pcs
                .iter()
                .enumerate()
                .map(|(i, &addr)| StackAddr {
                    addr,
                    return_address: !(leaf_is_ip && i == 0),
                    recovered: false,
                })
                .collect();
            AllocationEntry {
                pid: input.pid,
                comm: input.comm.clone(),
                inuse_objects: e[0].round() as u64,
                inuse_bytes: e[1].round() as u64,
                alloc_objects: e[2].round() as u64,
                alloc_bytes: e[3].round() as u64,
                user_stack: symbols.process_stack(input.pid, &input.maps, &addrs),
            }
        })
        .collect();
    AllocationsResponse {
        taken_at_unix_ms,
        processes,
        processes_left_out: 0,
        by_inuse,
    }
}
