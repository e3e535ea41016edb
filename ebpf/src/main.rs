//! memlens' kernel programs, one module per probe family.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build-ebpf` (or the agent's build script).
//! Load-time constants are `#[no_mangle]` [`Global`]s that the agent overrides; map sizes are
//! set by the agent too, so nothing here assumes a machine size.
#![no_std]
#![no_main]
// `lock xadd` for atomic counters (filemap.rs): Debian's rustc is stable, built with
// RUSTC_BOOTSTRAP=memlens (the crate's name is its binary's) like aya-ebpf itself.
#![feature(asm_experimental_arch)]

mod allocator;
mod counters;
mod filemap;
mod lifecycle;
mod pages;
mod python;
mod stack_copy;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it is never executed.
    loop {}
}
