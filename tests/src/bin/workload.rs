//! A workload whose memory we know: maps and touches anonymous memory, holds it, frees it on
//! command. Driven over stdin/stdout by the integration tests:
//!
//! `memlens-workload anon <MiB>`: allocate, print `ready`; on stdin `free`: unmap, print `freed`;
//! on `exit` or end of input: exit.
//!
//! `memlens-workload storm <MiB> <rounds>`: the page-fault storm of `cargo xtask bench storm`:
//! map, touch and unmap `<MiB>` of anonymous memory `<rounds>` times, then print
//! `seconds <s> pages <n>`.

use std::{
    io::{BufRead as _, Write as _},
    time::Instant,
};

const USAGE: &str = "usage: memlens-workload anon <MiB> | storm <MiB> <rounds>";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize| -> usize {
        match args.get(i).map(|a| a.parse::<usize>()) {
            Some(Ok(n)) if n > 0 => n,
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    };
    match args.get(1).map(String::as_str) {
        Some("anon") => hold(number(2) << 20),
        Some("storm") => storm(number(2) << 20, number(3)),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Maps `len` bytes of private anonymous memory.
fn map(len: usize) -> *mut libc::c_void {
    // SAFETY: a fresh private anonymous mapping; callers only touch it within `len`.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        eprintln!("mmap failed: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    addr
}

fn storm(len: usize, rounds: usize) {
    let started = Instant::now();
    for _ in 0..rounds {
        let addr = map(len);
        for offset in (0..len).step_by(4096) {
            // SAFETY: offset < len, inside the mapping.
            unsafe { std::ptr::write_volatile(addr.cast::<u8>().add(offset), 1) };
        }
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(addr, len) };
    }
    println!(
        "seconds {} pages {}",
        started.elapsed().as_secs_f64(),
        rounds * len / 4096
    );
}

fn hold(len: usize) {
    let addr = map(len);
    // SAFETY: addr..addr+len is our mapping.
    let region = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), len) };
    for page in region.chunks_mut(4096) {
        page[0] = 1;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let mut mapped = true;
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("free") if mapped => {
                // SAFETY: unmapping our own mapping once; `region` is not used afterwards.
                unsafe { libc::munmap(addr, len) };
                mapped = false;
                let _ = writeln!(out, "freed");
                let _ = out.flush();
            }
            Ok("exit") | Err(_) => break,
            _ => {}
        }
    }
}
