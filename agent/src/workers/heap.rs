//! The agent's heap as the host sees it. The refresh builds a census, a leak view and its
//! history every cycle and frees the previous ones: with glibc's allocator that freed memory
//! stays in the process (RSS 85 MiB above the live heap on the busy-node bench) unless it is
//! given back, and every thread that allocates gets an arena of its own to fragment.

/// Caps glibc's arenas at two: the agent's threads (refresh, unwinder, API, engine, exporters)
/// would otherwise get up to eight per core, each keeping its own freed memory.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes a parameter number and a value; it is called before other threads
    // start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the heap's free memory back to the system (after a refresh freed the previous
/// cycle's census and view). Costs a walk of the free lists: a few ms, inside the refresh's
/// paced CPU.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
