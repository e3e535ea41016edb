//! Processes' own allocation profiles (the Go runtime's heap profile), read on demand for the
//! API and for the event engine's evidence.

use std::{sync::Mutex, time::Instant};

use memlens_attribution::allocations::ProcessInput;
use memlens_runtimes::go_heap::GoHeapReader;
use memlens_types::allocations::AllocationSource;

/// Reads each process's profile (or why there is none).
pub fn read(reader: &Mutex<GoHeapReader>, pids: &[u32]) -> Result<Vec<ProcessInput>, String> {
    let mut reader = reader
        .lock()
        .map_err(|_| "the profile reader failed earlier".to_string())?;
    Ok(pids
        .iter()
        .map(|&pid| {
            let started = Instant::now();
            let profile = reader.read(pid).map_err(|e| e.to_string());
            ProcessInput {
                pid,
                comm: memlens_procfs::process::comm(pid).unwrap_or_default(),
                maps: memlens_procfs::read_maps(pid).unwrap_or_default(),
                profile,
                source: AllocationSource::GoRuntime,
                read_time: started.elapsed(),
            }
        })
        .collect())
}
