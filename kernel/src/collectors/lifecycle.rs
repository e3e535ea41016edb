//! Process exits, OOM kills and cgroup changes, drained from the kernel programs' ring buffer and
//! turned into lifecycle records.
//!
//! An OOM kill is known from the kernel's own OOM event (`oom:mark_victim`), never inferred from
//! a cgroup's cumulative counter: the victim's exit that follows is recorded as the OOM kill,
//! with the victim's memory at the kill; any other exit in the cgroup is just an exit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use hashlink::LruCache;
use memlens_common::lifecycle::{LifecycleEvent, LifecycleKind, RSS_UNKNOWN};
use memlens_types::{
    lifecycle::{LifecycleRecord, RecordKind},
    unix_ms,
};

/// How long an OOM victim waits for its exit before it is recorded without one.
const VICTIM_PATIENCE: Duration = Duration::from_secs(30);
/// Cgroup paths remembered from mkdir events (the least recently created go first).
const MAX_PATHS: usize = 100_000;
/// `oom:mark_victim` reports resident memory in KiB.
const KIB: u64 = 1024;

/// An OOM victim's resident memory in bytes (the kernel reports KiB), unless its kernel did not
/// say.
fn rss_bytes(kib: u64) -> Option<u64> {
    (kib != RSS_UNKNOWN).then(|| kib.saturating_mul(KIB))
}

/// What the thread has done, for `memlens status`.
#[derive(Default)]
pub struct LifecycleStats {
    pub recorded: AtomicU64,
    /// Exits with status 0 (not kept).
    pub normal_exits: AtomicU64,
    pub write_errors: AtomicU64,
    /// Records dropped because the table was full (the oldest go).
    pub capped: AtomicU64,
    /// OOM kills and main-process abnormal ends per cgroup path since the start (for metrics;
    /// at most [`MAX_COUNTED_CGROUPS`] cgroups, further ones counted under "other").
    pub per_cgroup: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// Cgroups counted separately in [`LifecycleStats::per_cgroup`].
const MAX_COUNTED_CGROUPS: usize = 10_000;

impl LifecycleStats {
    /// Counts recorded OOM kills and main-process ends per cgroup.
    pub fn count(&self, records: &[LifecycleRecord]) {
        let Ok(mut counts) = self.per_cgroup.lock() else {
            return;
        };
        for r in records {
            let restart = r.oom_killed || (r.kind == RecordKind::Exit && r.main_process);
            if !restart {
                continue;
            }
            let path = r.cgroup_path.clone().unwrap_or_default();
            let key = if counts.len() < MAX_COUNTED_CGROUPS || counts.contains_key(&path) {
                path
            } else {
                "other".to_string()
            };
            let entry = counts.entry(key).or_default();
            entry.0 += u64::from(r.oom_killed);
            entry.1 += 1;
        }
    }
}

/// Turns kernel events into records.
pub struct Lifecycle {
    /// Hierarchy id of the memory controller's cgroups (mkdir/rmdir of other hierarchies are
    /// ignored).
    memory_hierarchy: i32,
    /// OOM victims waiting for their exit, by pid.
    victims: HashMap<u32, (LifecycleEvent, Instant, u64)>,
    /// Cgroup paths learnt from mkdir events, for exits in cgroups removed before a snapshot.
    paths: LruCache<u64, String>,
}

impl Lifecycle {
    #[must_use]
    pub fn new(memory_hierarchy: i32) -> Lifecycle {
        Lifecycle {
            memory_hierarchy,
            victims: HashMap::new(),
            paths: LruCache::new(MAX_PATHS),
        }
    }

    /// Records for one event (`unix_ms` is when it happened); `path_of` names memory cgroups.
    pub fn handle(
        &mut self,
        event: &LifecycleEvent,
        unix_ms: u64,
        path_of: &dyn Fn(u64) -> Option<String>,
        stats: &LifecycleStats,
    ) -> Vec<LifecycleRecord> {
        let mut out = Vec::new();
        match LifecycleKind::from_u32(event.kind) {
            Some(LifecycleKind::OomVictim) => {
                self.victims
                    .insert(event.pid, (*event, Instant::now(), unix_ms));
            }
            Some(LifecycleKind::Exit) => {
                let status = if event.group_exit_code != 0 {
                    event.group_exit_code
                } else {
                    event.exit_code
                };
                let signal = status & 0x7f;
                let victim = self.victims.remove(&event.pid);
                if status == 0 && victim.is_none() {
                    stats.normal_exits.fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                let path = path_of(event.memcg).or_else(|| self.paths.get(&event.memcg).cloned());
                let mut record = LifecycleRecord {
                    ts_ms: unix_ms,
                    kind: RecordKind::Exit,
                    pid: event.pid,
                    comm: comm(&event.comm),
                    cgroup_id: event.memcg,
                    cgroup_path: path,
                    exit_code: (signal == 0).then_some((status >> 8) & 0xff),
                    signal: (signal != 0).then_some(signal),
                    oom_killed: false,
                    main_process: event.parent_memcg != 0 && event.parent_memcg != event.memcg,
                    anon_rss_bytes: None,
                    file_rss_bytes: None,
                    shmem_rss_bytes: None,
                    evidence: None,
                };
                if let Some((oom, _, _)) = victim {
                    record.kind = RecordKind::OomKill;
                    record.oom_killed = true;
                    record.anon_rss_bytes = rss_bytes(oom.anon_rss);
                    record.file_rss_bytes = rss_bytes(oom.file_rss);
                    record.shmem_rss_bytes = rss_bytes(oom.shmem_rss);
                }
                out.push(record);
            }
            Some(kind @ (LifecycleKind::CgroupMkdir | LifecycleKind::CgroupRmdir)) => {
                if event.exit_code != self.memory_hierarchy {
                    return out;
                }
                let path = comm(&event.path);
                if kind == LifecycleKind::CgroupMkdir {
                    self.paths.insert(event.memcg, path.clone());
                }
                out.push(LifecycleRecord {
                    ts_ms: unix_ms,
                    kind: if kind == LifecycleKind::CgroupMkdir {
                        RecordKind::CgroupCreated
                    } else {
                        RecordKind::CgroupRemoved
                    },
                    pid: 0,
                    comm: String::new(),
                    cgroup_id: event.memcg,
                    cgroup_path: Some(path),
                    exit_code: None,
                    signal: None,
                    oom_killed: false,
                    main_process: false,
                    anon_rss_bytes: None,
                    file_rss_bytes: None,
                    shmem_rss_bytes: None,
                    evidence: None,
                });
            }
            None => {}
        }
        out
    }

    /// OOM victims whose exit never came: recorded as OOM kills without an exit status.
    pub fn expire(&mut self, path_of: &dyn Fn(u64) -> Option<String>) -> Vec<LifecycleRecord> {
        let mut out = Vec::new();
        self.victims.retain(|_, (oom, seen, unix_ms)| {
            if seen.elapsed() < VICTIM_PATIENCE {
                return true;
            }
            out.push(LifecycleRecord {
                ts_ms: *unix_ms,
                kind: RecordKind::OomKill,
                pid: oom.pid,
                comm: String::new(),
                cgroup_id: oom.memcg,
                cgroup_path: path_of(oom.memcg),
                exit_code: None,
                signal: None,
                oom_killed: true,
                main_process: false,
                anon_rss_bytes: rss_bytes(oom.anon_rss),
                file_rss_bytes: rss_bytes(oom.file_rss),
                shmem_rss_bytes: rss_bytes(oom.shmem_rss),
                evidence: None,
            });
            false
        });
        out
    }
}

fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The ring buffer the lifecycle programs write to.
pub struct LifecycleRing(pub(crate) RingBuf<MapData>);

impl LifecycleRing {
    /// Every event waiting in the ring, as records (and OOM victims whose exit never came);
    /// `path_of` names memory cgroups, and `ended` is told of every process' end (its pid and
    /// `CLOCK_MONOTONIC` ns).
    pub fn drain(
        &mut self,
        lifecycle: &mut Lifecycle,
        path_of: &dyn Fn(u64) -> Option<String>,
        ended: &mut dyn FnMut(u32, u64),
        stats: &LifecycleStats,
    ) -> Vec<LifecycleRecord> {
        // bpf_ktime_get_ns counts CLOCK_MONOTONIC: anchor it to the wall clock once per drain.
        let (wall, mono) = (unix_ms(), monotonic_ns());
        let mut records = Vec::new();
        while let Some(item) = self.0.next() {
            if item.len() < size_of::<LifecycleEvent>() {
                continue;
            }
            // SAFETY: the item holds one LifecycleEvent written by the kernel program (plain
            // data, size checked above); read unaligned into our own value.
            let event: LifecycleEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if event.kind == LifecycleKind::Exit as u32 {
                ended(event.pid, event.ts_ns);
            }
            let at = wall.saturating_sub(mono.saturating_sub(event.ts_ns) / 1_000_000);
            records.extend(lifecycle.handle(&event, at, path_of, stats));
        }
        records.extend(lifecycle.expire(path_of));
        records
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: LifecycleKind, pid: u32) -> LifecycleEvent {
        LifecycleEvent {
            kind: kind as u32,
            pid,
            ts_ns: 0,
            memcg: 5,
            exit_code: 0,
            group_exit_code: 0,
            anon_rss: 0,
            file_rss: 0,
            shmem_rss: 0,
            parent_memcg: 1,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            path: [0; memlens_common::lifecycle::PATH_BYTES],
        }
    }

    #[test]
    fn only_the_oom_victims_exit_is_an_oom_kill() {
        let stats = LifecycleStats::default();
        let mut life = Lifecycle::new(4);
        let path = |_: u64| Some("/pod/c".to_string());
        let mut victim = event(LifecycleKind::OomVictim, 10);
        victim.anon_rss = 100;
        assert!(life.handle(&victim, 1, &path, &stats).is_empty());
        // SIGKILL (9) for the victim.
        let mut killed = event(LifecycleKind::Exit, 10);
        killed.group_exit_code = 9;
        let records = life.handle(&killed, 2, &path, &stats);
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].kind, records[0].oom_killed, records[0].signal),
            (RecordKind::OomKill, true, Some(9))
        );
        assert_eq!(records[0].anon_rss_bytes, Some(102_400));
        // A kernel whose OOM record has no memory fields: unknown, not zero.
        let mut victim = event(LifecycleKind::OomVictim, 20);
        victim.anon_rss = RSS_UNKNOWN;
        assert!(life.handle(&victim, 6, &path, &stats).is_empty());
        let mut killed = event(LifecycleKind::Exit, 20);
        killed.group_exit_code = 9;
        let records = life.handle(&killed, 7, &path, &stats);
        assert_eq!(
            (records[0].kind, records[0].anon_rss_bytes),
            (RecordKind::OomKill, None)
        );
        // A later SIGTERM in the same cgroup is not an OOM kill.
        let mut terminated = event(LifecycleKind::Exit, 11);
        terminated.exit_code = 15;
        let records = life.handle(&terminated, 3, &path, &stats);
        assert_eq!(
            (records[0].kind, records[0].oom_killed, records[0].signal),
            (RecordKind::Exit, false, Some(15))
        );
        // exit(3)
        let mut failed = event(LifecycleKind::Exit, 12);
        failed.exit_code = 3 << 8;
        assert_eq!(life.handle(&failed, 4, &path, &stats)[0].exit_code, Some(3));
        // exit(0) is not kept.
        assert!(life
            .handle(&event(LifecycleKind::Exit, 13), 5, &path, &stats)
            .is_empty());
        assert_eq!(stats.normal_exits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn cgroup_changes_of_other_hierarchies_are_ignored() {
        let stats = LifecycleStats::default();
        let mut life = Lifecycle::new(4);
        let none = |_: u64| None;
        let mut mkdir = event(LifecycleKind::CgroupMkdir, 0);
        mkdir.path[..4].copy_from_slice(b"/a/b");
        mkdir.exit_code = 2;
        assert!(life.handle(&mkdir, 1, &none, &stats).is_empty());
        mkdir.exit_code = 4;
        let records = life.handle(&mkdir, 1, &none, &stats);
        assert_eq!(records[0].cgroup_path.as_deref(), Some("/a/b"));
        assert_eq!(records[0].kind, RecordKind::CgroupCreated);
    }
}
