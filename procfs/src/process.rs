//! A process' resident memory (`/proc/<pid>/status`), and the processes of a cgroup.

use std::path::Path;

use memlens_types::evidence::ProcessMemory;

/// Most processes read from one cgroup subtree.
const MAX_PIDS: usize = 4096;

/// `/proc/<pid>/status`: name and resident memory (None when the process is gone).
#[must_use]
pub fn memory(pid: u32) -> Option<ProcessMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status(pid, &text))
}

/// `/proc/<pid>/comm`: the process's name now (after its exec, unlike a name recorded at a
/// fork's first page faults); None when it is gone.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

fn parse_status(pid: u32, text: &str) -> ProcessMemory {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |k| k.saturating_mul(1024))
    };
    ProcessMemory {
        pid,
        comm: text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default(),
        rss_bytes: kib("VmRSS:"),
        anon_bytes: kib("RssAnon:"),
        file_bytes: kib("RssFile:"),
    }
}

/// The processes of the cgroup at directory `dir` and its descendants with the most resident
/// memory, at most `top` (at most [`MAX_PIDS`] processes are looked at).
#[must_use]
pub fn top_by_memory(dir: &Path, top: usize) -> Vec<ProcessMemory> {
    let mut processes: Vec<ProcessMemory> = pids_in(dir).into_iter().filter_map(memory).collect();
    processes.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    processes.truncate(top);
    processes
}

/// The `n` of `pids` with the most resident memory (all of them when there are no more than
/// `n`, in their order); a process gone counts as none.
#[must_use]
pub fn largest(pids: Vec<u32>, n: usize) -> Vec<u32> {
    if pids.len() <= n {
        return pids;
    }
    let rss = |pid: u32| memory(pid).map_or(0, |m| m.rss_bytes);
    let mut by_rss: Vec<(u64, u32)> = pids.into_iter().map(|p| (rss(p), p)).collect();
    by_rss.sort_unstable_by(|a, b| b.cmp(a));
    by_rss.into_iter().take(n).map(|(_, p)| p).collect()
}

/// The processes of the cgroup at directory `dir` itself, not its descendants (none when it is
/// gone).
#[must_use]
pub fn pids_directly_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes of the cgroup at directory `dir` and its descendants (at most about
/// [`MAX_PIDS`]).
#[must_use]
pub fn pids_in(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if pids.len() > MAX_PIDS {
            break;
        }
        pids.extend(pids_directly_in(&dir));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_processes_are_kept() {
        let me = std::process::id();
        // u32::MAX is no process: it holds nothing.
        assert_eq!(largest(vec![u32::MAX, me], 1), [me]);
        assert_eq!(largest(vec![u32::MAX, me], 2), [u32::MAX, me]);
    }

    #[test]
    fn status_gives_name_and_resident_memory() {
        let text = "Name:\tredis-server\nUmask:\t0022\nVmRSS:\t  10240 kB\nRssAnon:\t    8192 kB\nRssFile:\t    2048 kB\n";
        let m = parse_status(7, text);
        assert_eq!(m.comm, "redis-server");
        assert_eq!(
            (m.rss_bytes, m.anon_bytes, m.file_bytes),
            (10 << 20, 8 << 20, 2 << 20)
        );
        assert!(memory(std::process::id()).is_some_and(|m| m.rss_bytes > 0));
    }
}
