//! A workload whose memory we know: maps and touches anonymous memory, holds it, frees it on
//! command. Driven over stdin/stdout by the integration tests:
//!
//! `memlens-workload anon <MiB>`: allocate, print `ready`; on stdin `free`: unmap, print `freed`;
//! on `exit` or end of input: exit.

use std::io::{BufRead as _, Write as _};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some("anon"), Some(mib)) = (args.get(1).map(String::as_str), args.get(2)) else {
        eprintln!("usage: memlens-workload anon <MiB>");
        std::process::exit(2);
    };
    let Ok(mib) = mib.parse::<usize>() else {
        eprintln!("not a number of MiB: {mib}");
        std::process::exit(2);
    };
    let len = mib << 20;
    // SAFETY: a fresh private anonymous mapping, only touched through `region`.
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
