//! A workload whose memory we know: maps and touches anonymous memory, holds it, frees it on
//! command. Driven over stdin/stdout by the integration tests:
//!
//! `memlens-workload anon <MiB>`: allocate, print `ready`; on stdin `free`: unmap, print `freed`;
//! on `exit` or end of input: exit.
//!
//! `memlens-workload anon-thp <MiB>`: the same with `MADV_HUGEPAGE`, so the kernel backs it with
//! 2 MiB transparent huge pages (order-9 allocations).
//!
//! `memlens-workload anon-frag <MiB>`: the same amount held as every other page of a mapping
//! twice as large (pages kept interleaved with pages given back).
//!
//! `memlens-workload writefile <path> <MiB>`: writes a file of that size with buffered writes
//! (its page cache is charged to the writer's cgroup), prints `written`, exits.
//!
//! `memlens-workload appendlog <path> <MiB> [<MiB/s>]`: appends that much to a log file with
//! buffered writes (at most that fast, when given) and keeps it open, prints `written`; on
//! `truncate`: truncates it, prints `truncated`.
//!
//! `memlens-workload readfile <path>`: reads the whole file (buffered), prints `read <bytes>`,
//! keeps it open.
//!
//! `memlens-workload deepleak <MiB> <MiB/s>`: a leak three calls below `main` in Rust's release
//! profile (no frame pointers): `serve_requests -> handle_request -> cache_response` keeps 1 MiB per
//! request, filled with `resize` (glibc's memset); prints `leaked <bytes>`, waits for `exit`.
//!
//! `memlens-workload warmcache <MiB> <seconds>`: a cache of 64 KiB entries keyed by users picked
//! at random, each request also allocating a 16 KiB response it drops (churn in the same heap):
//! it fills fast and then ever slower, as caches of random keys do, 95% full after `<seconds>`
//! (prints `full`); then it serves hits until `exit`.
//!
//! `memlens-workload buildjob <dir> <MiB> <MiB/s>`: a build's page cache: 8 MiB of headers that
//! every compile reads again, and 1 MiB objects written once, `<MiB>` of them at most that fast;
//! prints `built`, waits for `exit`.
//!
//! `memlens-workload storm <MiB> <rounds> [<depth>]`: the page-fault storm of `cargo xtask bench
//! storm`: map, touch and unmap `<MiB>` of anonymous memory `<rounds>` times (at the bottom of
//! `<depth>` nested calls of 256 bytes of stack each), then print `seconds <s> pages <n>`.

use std::{
    io::{BufRead as _, Write as _},
    time::Instant,
};

const USAGE: &str =
    "usage: memlens-workload anon <MiB> | anon-thp <MiB> | anon-frag <MiB> | storm <MiB> <rounds> [<depth>] \
                     | deepleak <MiB> <MiB/s> \
                     | writefile <path> <MiB> | appendlog <path> <MiB> [<MiB/s>] | readfile <path> \
                     | warmcache <MiB> <seconds> | buildjob <dir> <MiB> <MiB/s>";

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
        Some("anon") => hold(number(2) << 20, Layout::Pages),
        Some("anon-thp") => hold(number(2) << 20, Layout::Huge),
        Some("anon-frag") => hold(number(2) << 20, Layout::Fragmented),
        Some("storm") => {
            let depth = args.get(4).and_then(|d| d.parse().ok()).unwrap_or(0);
            nested(depth, &|| storm(number(2) << 20, number(3)));
        }
        Some("deepleak") => serve_requests(number(2), number(3)),
        Some("writefile") => write_file(path_arg(&args), number(3) << 20),
        Some("appendlog") => append_log(
            path_arg(&args),
            number(3) << 20,
            args.get(4).and_then(|a| a.parse::<usize>().ok()),
        ),
        Some("readfile") => read_file(path_arg(&args)),
        Some("warmcache") => warm_cache(number(2), number(3)),
        Some("buildjob") => build_job(path_arg(&args), number(3), number(4)),
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

/// Maps `len` bytes aligned to 2 MiB and asks for transparent huge pages.
fn map_huge(len: usize) -> *mut libc::c_void {
    const HUGE: usize = 2 << 20;
    let raw = map(len + HUGE);
    let aligned = (raw as usize).next_multiple_of(HUGE) as *mut libc::c_void;
    // SAFETY: aligned..aligned+len lies inside the mapping made above.
    if unsafe { libc::madvise(aligned, len, libc::MADV_HUGEPAGE) } != 0 {
        eprintln!(
            "madvise(MADV_HUGEPAGE) failed: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    aligned
}

fn path_arg(args: &[String]) -> &str {
    match args.get(2) {
        Some(path) => path,
        None => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn fail(what: &str, e: &std::io::Error) -> ! {
    eprintln!("{what}: {e}");
    std::process::exit(1);
}

/// Waits for commands on stdin; `on` handles one and says whether to go on.
fn serve(mut on: impl FnMut(&str) -> bool) {
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("exit") | Err(_) => break,
            Ok(command) => {
                if !on(command) {
                    break;
                }
            }
        }
    }
}

fn append_log(path: &str, len: usize, mib_per_second: Option<usize>) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| fail(path, &e));
    let line =
        b"2026-11-23T00:00:00Z INFO request served in 12 ms by the handler of the log test\n";
    let mut writer = std::io::BufWriter::new(&mut file);
    let mut written = 0;
    let started = Instant::now();
    while written < len {
        writer.write_all(line).unwrap_or_else(|e| fail(path, &e));
        written += line.len();
        if let Some(rate) = mib_per_second.filter(|&r| r > 0) {
            // Steady growth: at most `rate` MiB a second.
            let due = std::time::Duration::from_secs_f64(written as f64 / (rate << 20) as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                writer.flush().unwrap_or_else(|e| fail(path, &e));
                std::thread::sleep(ahead);
            }
        }
    }
    writer.flush().unwrap_or_else(|e| fail(path, &e));
    drop(writer);
    println!("written");
    let _ = std::io::stdout().flush();
    serve(|command| {
        if command == "truncate" {
            file.set_len(0).unwrap_or_else(|e| fail(path, &e));
            println!("truncated");
            let _ = std::io::stdout().flush();
        }
        true
    });
}

/// xorshift64: users picked at random without a crate.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn warm_cache(mib: usize, seconds: usize) {
    const ENTRY: usize = 64 << 10;
    let users = mib * (MIB / ENTRY);
    // 3 requests per user over `seconds` leave e^-3 (5%) of them unseen.
    let tick = std::time::Duration::from_secs_f64(seconds as f64 / (3 * users) as f64);
    let mut cache: std::collections::HashMap<usize, Vec<u8>> = std::collections::HashMap::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut full = false;
    let (done, stop) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        serve(|_| true);
        let _ = done.send(());
    });
    while stop.try_recv().is_err() {
        let response = vec![0x11u8; 16 << 10];
        std::hint::black_box(&response);
        let user = (next_random(&mut state) % users as u64) as usize;
        cache.entry(user).or_insert_with(|| vec![0x22u8; ENTRY]);
        if !full && cache.len() * 20 >= users * 19 {
            full = true;
            println!("full");
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(tick);
    }
    std::hint::black_box(&cache);
}

fn build_job(dir: &str, mib: usize, mib_per_second: usize) {
    let dir = std::path::Path::new(dir);
    let header = vec![b'h'; 256 << 10];
    let headers: Vec<std::path::PathBuf> = (0..32).map(|i| dir.join(format!("h{i}.h"))).collect();
    for path in &headers {
        std::fs::write(path, &header).unwrap_or_else(|e| fail(&path.display().to_string(), &e));
    }
    let object = vec![b'o'; MIB];
    let started = Instant::now();
    for i in 0..mib {
        // A compile reads every header, and writes its object once.
        for path in &headers {
            let text =
                std::fs::read(path).unwrap_or_else(|e| fail(&path.display().to_string(), &e));
            std::hint::black_box(&text);
        }
        let path = dir.join(format!("o{i}.o"));
        std::fs::write(&path, &object).unwrap_or_else(|e| fail(&path.display().to_string(), &e));
        let due = std::time::Duration::from_secs_f64((i + 1) as f64 / mib_per_second as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    println!("built");
    let _ = std::io::stdout().flush();
    serve(|_| true);
}

fn read_file(path: &str) {
    use std::io::{Read as _, Write as _};
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| fail(path, &e));
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => fail(path, &e),
        }
    }
    println!("read {total}");
    let _ = std::io::stdout().flush();
    serve(|_| true);
}

fn write_file(path: &str, len: usize) {
    use std::io::Write as _;
    let chunk = vec![0x42u8; 1 << 20];
    let mut file = std::fs::File::create(path).unwrap_or_else(|e| fail(path, &e));
    for _ in 0..len / chunk.len() {
        file.write_all(&chunk).unwrap_or_else(|e| fail(path, &e));
    }
    println!("written");
}

/// Runs `f` at the bottom of `depth` nested calls of 256 bytes of stack each: a deep stack, as
/// a request handler's in a framework is, for the cost of copying and unwinding it.
#[inline(never)]
fn nested(depth: usize, f: &dyn Fn()) {
    if depth == 0 {
        f();
        return;
    }
    let frame = std::hint::black_box([depth as u8; 256]);
    nested(depth - 1, f);
    std::hint::black_box(&frame);
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

/// How a held region's pages lie in memory.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Every page of one mapping, in 4 KiB pages (as THP allows: `madvise` mode maps none).
    Pages,
    /// Every page of a mapping asked to be backed by transparent huge pages.
    Huge,
    /// Every other page of a mapping twice as large: touched whole, then each odd page given
    /// back, so the pages kept are interleaved with free ones.
    Fragmented,
}

/// Holds `len` bytes of anonymous memory laid out as `layout` until told to free them.
fn hold(len: usize, layout: Layout) {
    const PAGE: usize = 4096;
    let mapped_len = if layout == Layout::Fragmented {
        2 * len
    } else {
        len
    };
    let addr = if layout == Layout::Huge {
        map_huge(mapped_len)
    } else {
        map(mapped_len)
    };
    // SAFETY: addr..addr+mapped_len is our mapping.
    let region = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), mapped_len) };
    for page in region.chunks_mut(PAGE) {
        page[0] = 1;
    }
    if layout == Layout::Fragmented {
        for odd in (PAGE..mapped_len).step_by(2 * PAGE) {
            // SAFETY: one page inside our mapping, given back; it is not read again.
            unsafe { libc::madvise(addr.cast::<u8>().add(odd).cast(), PAGE, libc::MADV_DONTNEED) };
        }
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let mut mapped = true;
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("free") if mapped => {
                // SAFETY: unmapping our own mapping once; `region` is not used afterwards.
                unsafe { libc::munmap(addr, mapped_len) };
                mapped = false;
                let _ = writeln!(out, "freed");
                let _ = out.flush();
            }
            Ok("exit") | Err(_) => break,
            _ => {}
        }
    }
}

const MIB: usize = 1 << 20;

/// The responses a server caches and never evicts.
#[inline(never)]
fn cache_response(cache: &mut Vec<Vec<u8>>) {
    let mut body = Vec::with_capacity(MIB);
    body.resize(MIB, 0x5a);
    cache.push(std::hint::black_box(body));
}

#[inline(never)]
fn handle_request(cache: &mut Vec<Vec<u8>>) {
    cache_response(cache);
    std::hint::black_box(&cache);
}

#[inline(never)]
fn serve_requests(mib: usize, per_second: usize) {
    let mut cache = Vec::new();
    for _ in 0..mib {
        handle_request(&mut cache);
        std::thread::sleep(std::time::Duration::from_micros(
            1_000_000 / per_second as u64,
        ));
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "leaked {}", cache.len() * MIB);
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        if matches!(line.as_deref(), Ok("exit") | Err(_)) {
            break;
        }
    }
    std::hint::black_box(&cache);
}
