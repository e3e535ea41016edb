//! One sample of the agent every 15 s: what it costs and what it answers.

use std::{net::TcpStream, os::unix::net::UnixStream, path::Path, time::Instant};

use memlens_tests::Agent;
use serde_json::Value;

#[derive(Clone, Default)]
pub(crate) struct Sample {
    pub(crate) at_s: u64,
    pub(crate) rss_kib: u64,
    pub(crate) peak_kib: u64,
    pub(crate) anon_kib: u64,
    /// Resident pages of the BPF maps the agent maps (the record array, the ring buffers): in
    /// its RSS, and counted again in the maps' own memory.
    pub(crate) mapped_maps_kib: u64,
    pub(crate) cpu_pct: f64,
    pub(crate) maps_kib: u64,
    pub(crate) census_ms: u64,
    /// Seconds between refreshes (stretched to the CPU budget).
    pub(crate) cycle_s: f64,
    pub(crate) stacks: u64,
    pub(crate) kernel_stacks: u64,
    pub(crate) scrape_ms: f64,
    pub(crate) top_ms: f64,
    pub(crate) db_kib: u64,
    pub(crate) drops: u64,
}

impl Sample {
    /// The sample as a row of the report's table.
    pub(crate) fn row(&self) -> String {
        format!(
            "| {} s | {} MiB | {} MiB | {} MiB | {} MiB | {:.1}% | {:.1} MiB | {} ms ({:.1} s) | \
             {} ({}) | {:.0} ms | {:.0} ms | {:.1} MiB | {} |",
            self.at_s,
            self.rss_kib / 1024,
            self.mapped_maps_kib / 1024,
            self.peak_kib / 1024,
            self.anon_kib / 1024,
            self.cpu_pct,
            self.maps_kib as f64 / 1024.0,
            self.census_ms,
            self.cycle_s,
            self.stacks,
            self.kernel_stacks,
            self.scrape_ms,
            self.top_ms,
            self.db_kib as f64 / 1024.0,
            self.drops
        )
    }
}

/// A `/proc/<pid>/status` field, in KiB.
pub(crate) fn status_field(path: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{path}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system time of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the comm.
    field(11) + field(12)
}

/// Kernel memory of the BPF maps `pid` holds open (their fdinfo's `memlock`), in KiB.
/// Resident KiB of the agent's mappings of BPF maps (`/proc/<pid>/smaps`).
fn mapped_maps_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            in_map = line.contains("anon_inode:bpf-map");
        } else if in_map && first == "Rss:" {
            kib += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib
}

fn map_kib(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut bytes = 0;
    for fd in fds.flatten() {
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    bytes / 1024
}

/// Milliseconds an HTTP GET of `path` takes to answer in full over `stream`.
/// What Prometheus 2 sends when it scrapes (`scrape_protocols` left at its default).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn timed_get(mut stream: impl std::io::Read + std::io::Write, path: &str) -> f64 {
    let started = Instant::now();
    // Prometheus' own Accept header: OpenMetrics first.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {PROMETHEUS_ACCEPT}\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return f64::NAN;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if !answer.starts_with(b"HTTP/1.1 200") {
        return f64::NAN;
    }
    started.elapsed().as_secs_f64() * 1000.0
}

/// The first number in a status line's detail after `after`.
fn number_after(detail: &str, after: &str) -> u64 {
    detail
        .split_once(after)
        .map_or("", |(_, rest)| rest)
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn capability<'a>(status: &'a Value, name: &str) -> &'a str {
    status["capabilities"]
        .as_array()
        .and_then(|caps| caps.iter().find(|c| c["name"] == name))
        .and_then(|c| c["detail"].as_str())
        .unwrap_or("")
}

/// Samples the agent; `last` is the previous CPU reading (time, ticks), updated.
pub(crate) fn sample(
    agent: &Agent,
    metrics: u16,
    db: &Path,
    started: Instant,
    last: &mut (Instant, u64),
) -> Sample {
    let pid = agent.pid();
    let scrape_ms =
        TcpStream::connect(("127.0.0.1", metrics)).map_or(f64::NAN, |s| timed_get(s, "/metrics"));
    let top_ms = UnixStream::connect(&agent.socket).map_or(f64::NAN, |s| timed_get(s, "/v1/top"));
    let status = agent.json(&["status", "--json"]);
    let census = capability(&status, "page census");
    let census_ms = census
        .rsplit_once(" ms")
        .and_then(|(left, _)| left.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    let ticks = cpu_ticks(pid);
    let now = Instant::now();
    let cpu_pct = (ticks.saturating_sub(last.1)) as f64
        / 100.0
        / now.duration_since(last.0).as_secs_f64().max(0.001)
        * 100.0;
    *last = (now, ticks);
    let db_kib = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len() / 1024)
        .sum();
    Sample {
        at_s: started.elapsed().as_secs(),
        rss_kib: status_field(pid, "VmRSS:"),
        peak_kib: status_field(pid, "VmHWM:"),
        anon_kib: status_field(pid, "RssAnon:"),
        mapped_maps_kib: mapped_maps_kib(pid),
        cpu_pct,
        maps_kib: map_kib(pid),
        census_ms,
        cycle_s: capability(&status, "refresh")
            .strip_prefix("every ")
            .and_then(|r| r.split(' ').next()?.trim_end_matches('s').parse().ok())
            .unwrap_or(2.0),
        stacks: number_after(capability(&status, "leak attribution"), ""),
        kernel_stacks: number_after(capability(&status, "sampling"), "stack slots ("),
        scrape_ms,
        top_ms,
        db_kib,
        drops: number_after(capability(&status, "drops"), ""),
    }
}
