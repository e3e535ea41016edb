//! A cgroup's memory counters, read from the kernel's own files and mapped to one set of fields
//! whatever the cgroup version.
//!
//! v1: `memory.usage_in_bytes`, `memory.limit_in_bytes`, `memory.stat` (hierarchical `total_*`
//! fields, which is what usage and cAdvisor use), `memory.kmem.usage_in_bytes`,
//! `memory.oom_control`, `memory.failcnt`. v2: `memory.current`, `memory.max`, `memory.stat`,
//! `memory.swap.current`, `memory.events`.

use std::{collections::HashMap, io, path::Path};

use serde::Serialize;

use super::{CgroupError, CgroupVersion};
use memlens_types::{Bytes, Pages};

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages (about 2^63 bytes); anything this large
/// is no limit.
const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// One cgroup's memory counters (hierarchical: they include descendants, as the kernel's usage
/// does).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    pub usage: Bytes,
    /// Anonymous memory (v1 `rss`, v2 `anon`; includes transparent huge pages).
    pub anon: Bytes,
    /// Page cache (v1 `cache`, v2 `file`; includes shmem/tmpfs).
    pub file: Bytes,
    pub active_file: Bytes,
    pub inactive_file: Bytes,
    pub active_anon: Bytes,
    pub inactive_anon: Bytes,
    pub shmem: Bytes,
    pub file_mapped: Bytes,
    pub file_dirty: Bytes,
    pub file_writeback: Bytes,
    /// Kernel memory charged to the cgroup (v2 `kernel`, or the sum of its parts on kernels
    /// before 5.18; v1 `memory.kmem.usage_in_bytes`, else usage minus anon and file).
    pub kernel: Bytes,
    /// v2 only: slab split and other kernel parts.
    pub slab_reclaimable: Option<Bytes>,
    pub slab_unreclaimable: Option<Bytes>,
    pub sock: Option<Bytes>,
    pub kernel_stack: Option<Bytes>,
    pub pagetables: Option<Bytes>,
    pub swap: Option<Bytes>,
    /// None when unlimited.
    pub limit: Option<Bytes>,
    /// OOM kills in this cgroup (v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill).
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v2 `memory.events` max, v1 `memory.failcnt`). Routine for a
    /// cgroup whose page cache fills it: each hit is a reclaim, not yet distress.
    pub limit_hits: Option<u64>,
    /// Times usage went over `memory.high` and the cgroup's tasks were throttled into reclaim
    /// (v2 `memory.events` high; v1 has no such boundary).
    pub high_events: Option<u64>,
    /// Page-cache pages read back in soon after reclaim evicted them (`workingset_refault_file`,
    /// `workingset_refault` before 5.9, v1 `total_workingset_refault_file`; absent on v1 of
    /// older kernels): reclaim taking pages the cgroup still uses, the sign it cannot keep up.
    pub refaulted: Option<Pages>,
}

impl MemoryStats {
    /// Working set exactly as kubelet and cAdvisor compute it: usage minus inactive file cache.
    #[must_use]
    pub fn working_set(&self) -> Bytes {
        self.usage.saturating_sub(self.inactive_file)
    }

    /// Reads the counters of the cgroup directory `dir`.
    pub fn read(dir: &Path, version: CgroupVersion) -> Result<MemoryStats, CgroupError> {
        let files = CgroupFiles { dir };
        match version {
            CgroupVersion::V1 => MemoryStats::from_v1(&files),
            CgroupVersion::V2 => MemoryStats::from_v2(&files),
        }
    }

    fn from_v1(files: &impl ReadFile) -> Result<MemoryStats, CgroupError> {
        let stat = parse_flat_keyed(&files.required("memory.stat")?);
        let usage = Bytes(parse_number(&files.required("memory.usage_in_bytes")?)?);
        let get = |key: &str| Bytes(stat.get(key).copied().unwrap_or(0));
        let anon = get("total_rss");
        let file = get("total_cache");
        let kernel = match files.optional("memory.kmem.usage_in_bytes")? {
            Some(text) => Bytes(parse_number(&text)?),
            None => usage.saturating_sub(anon).saturating_sub(file),
        };
        let limit = Some(parse_number(&files.required("memory.limit_in_bytes")?)?)
            .filter(|&l| l < UNLIMITED_THRESHOLD)
            .map(Bytes);
        let oom_kills = files
            .optional("memory.oom_control")?
            .and_then(|t| parse_flat_keyed(&t).get("oom_kill").copied());
        let limit_hits = files
            .optional("memory.failcnt")?
            .map(|t| parse_number(&t))
            .transpose()?;
        Ok(MemoryStats {
            usage,
            anon,
            file,
            active_file: get("total_active_file"),
            inactive_file: get("total_inactive_file"),
            active_anon: get("total_active_anon"),
            inactive_anon: get("total_inactive_anon"),
            shmem: get("total_shmem"),
            file_mapped: get("total_mapped_file"),
            file_dirty: get("total_dirty"),
            file_writeback: get("total_writeback"),
            kernel,
            slab_reclaimable: None,
            slab_unreclaimable: None,
            sock: None,
            kernel_stack: None,
            pagetables: None,
            swap: stat.get("total_swap").copied().map(Bytes),
            limit,
            oom_kills,
            limit_hits,
            high_events: None,
            refaulted: stat
                .get("total_workingset_refault_file")
                .copied()
                .map(Pages),
        })
    }

    fn from_v2(files: &impl ReadFile) -> Result<MemoryStats, CgroupError> {
        let stat = parse_flat_keyed(&files.required("memory.stat")?);
        let usage = Bytes(parse_number(&files.required("memory.current")?)?);
        let get = |key: &str| Bytes(stat.get(key).copied().unwrap_or(0));
        let opt = |key: &str| stat.get(key).copied().map(Bytes);
        // `kernel` exists since 5.18; before, sum what it is made of.
        let kernel = opt("kernel").unwrap_or_else(|| {
            [
                "kernel_stack",
                "pagetables",
                "percpu",
                "sock",
                "slab",
                "vmalloc",
            ]
            .iter()
            .map(|k| get(k))
            .fold(Bytes(0), Bytes::saturating_add)
        });
        let limit = match files.required("memory.max")?.trim() {
            "max" => None,
            text => Some(Bytes(parse_number(text)?)).filter(|l| l.0 < UNLIMITED_THRESHOLD),
        };
        let swap = files
            .optional("memory.swap.current")?
            .map(|t| parse_number(&t).map(Bytes))
            .transpose()?;
        let events = files
            .optional("memory.events")?
            .map(|t| parse_flat_keyed(&t));
        Ok(MemoryStats {
            usage,
            anon: get("anon"),
            file: get("file"),
            active_file: get("active_file"),
            inactive_file: get("inactive_file"),
            active_anon: get("active_anon"),
            inactive_anon: get("inactive_anon"),
            shmem: get("shmem"),
            file_mapped: get("file_mapped"),
            file_dirty: get("file_dirty"),
            file_writeback: get("file_writeback"),
            kernel,
            slab_reclaimable: opt("slab_reclaimable"),
            slab_unreclaimable: opt("slab_unreclaimable"),
            sock: opt("sock"),
            kernel_stack: opt("kernel_stack"),
            pagetables: opt("pagetables"),
            swap,
            limit,
            oom_kills: events.as_ref().and_then(|e| e.get("oom_kill").copied()),
            limit_hits: events.as_ref().and_then(|e| e.get("max").copied()),
            high_events: events.as_ref().and_then(|e| e.get("high").copied()),
            refaulted: stat
                .get("workingset_refault_file")
                .or_else(|| stat.get("workingset_refault"))
                .copied()
                .map(Pages),
        })
    }
}

/// Reads a cgroup's files (a trait so the parsers can be tested on fixtures).
trait ReadFile {
    fn read(&self, name: &str) -> io::Result<String>;
    fn path(&self, name: &str) -> String;

    /// A file the cgroup must have; its absence means the cgroup went away (or is not a memory
    /// cgroup).
    fn required(&self, name: &str) -> Result<String, CgroupError> {
        self.read(name)
            .map_err(|e| CgroupError::io(self.path(name), e))
    }

    /// A file that only some kernels or configurations have.
    fn optional(&self, name: &str) -> Result<Option<String>, CgroupError> {
        match self.read(name) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CgroupError::io(self.path(name), e)),
        }
    }
}

struct CgroupFiles<'a> {
    dir: &'a Path,
}

impl ReadFile for CgroupFiles<'_> {
    fn read(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.dir.join(name))
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Parses `key value` lines; malformed lines are skipped (new kernels add fields).
fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn parse_number(text: &str) -> Result<u64, CgroupError> {
    text.trim()
        .parse()
        .map_err(|_| CgroupError::Parse("number".into(), format!("not a number: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture(HashMap<&'static str, &'static str>);

    impl ReadFile for Fixture {
        fn read(&self, name: &str) -> io::Result<String> {
            self.0
                .get(name)
                .map(|s| (*s).to_string())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }

        fn path(&self, name: &str) -> String {
            format!("fixture/{name}")
        }
    }

    #[test]
    fn v1_uses_hierarchical_totals() {
        let files = Fixture(HashMap::from([
            ("memory.stat", include_str!("../fixtures/v1-memory.stat")),
            ("memory.usage_in_bytes", "903000064\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory.oom_control",
                include_str!("../fixtures/v1-memory.oom_control"),
            ),
            ("memory.failcnt", "0\n"),
        ]));
        let stats = MemoryStats::from_v1(&files).unwrap();
        assert_eq!(stats.anon, Bytes(2_220_032));
        assert_eq!(stats.file, Bytes(884_461_568));
        assert_eq!(stats.inactive_file, Bytes(477_310_976));
        assert_eq!(stats.active_file, Bytes(407_150_592));
        assert_eq!(stats.limit, None, "PAGE_COUNTER_MAX means unlimited");
        assert_eq!(stats.oom_kills, Some(0));
        assert_eq!(stats.refaulted, Some(Pages(533_865)));
        assert_eq!(stats.high_events, None);
        assert_eq!(stats.working_set(), Bytes(903_000_064 - 477_310_976));
        // No kmem file in this fixture: kernel is what usage leaves after anon and file.
        assert_eq!(stats.kernel, Bytes(903_000_064 - 2_220_032 - 884_461_568));
    }

    #[test]
    fn v1_limit_and_kmem_when_set() {
        let files = Fixture(HashMap::from([
            ("memory.stat", include_str!("../fixtures/v1-memory.stat")),
            ("memory.usage_in_bytes", "903000064\n"),
            ("memory.limit_in_bytes", "268435456\n"),
            ("memory.kmem.usage_in_bytes", "4096\n"),
        ]));
        let stats = MemoryStats::from_v1(&files).unwrap();
        assert_eq!(stats.limit, Some(Bytes(256 << 20)));
        assert_eq!(stats.kernel, Bytes(4096));
        assert_eq!(stats.oom_kills, None);
    }

    #[test]
    fn v2_from_a_real_6_12_cgroup() {
        let files = Fixture(HashMap::from([
            ("memory.stat", include_str!("../fixtures/v2/v2-memory.stat")),
            (
                "memory.current",
                include_str!("../fixtures/v2/v2-memory.current"),
            ),
            ("memory.max", include_str!("../fixtures/v2/v2-memory.max")),
            (
                "memory.events",
                include_str!("../fixtures/v2/v2-memory.events-after-oom"),
            ),
        ]));
        let stats = MemoryStats::from_v2(&files).unwrap();
        assert_eq!(stats.usage, Bytes(58_023_936));
        assert_eq!(stats.anon, Bytes(37_490_688));
        assert_eq!(stats.file, Bytes(20_013_056));
        assert_eq!(stats.shmem, Bytes(16_777_216));
        assert_eq!(stats.kernel, Bytes(303_104));
        assert_eq!(stats.slab_reclaimable, Some(Bytes(130_704)));
        assert_eq!(stats.limit, Some(Bytes(64 << 20)));
        assert_eq!(stats.oom_kills, Some(1));
        assert_eq!(stats.limit_hits, Some(37));
        assert_eq!(stats.high_events, Some(0));
        assert_eq!(stats.refaulted, Some(Pages(0)));
        assert_eq!(stats.swap, None, "no memory.swap.current in the fixture");
        // inactive_file is 0 here: the working set is all of usage.
        assert_eq!(stats.working_set(), stats.usage);
    }

    #[test]
    fn v2_unlimited_and_pre_5_18_kernel_sum() {
        let files = Fixture(HashMap::from([
            ("memory.stat", "anon 10\nfile 20\nkernel_stack 1\npagetables 2\npercpu 3\nsock 4\nslab 5\nvmalloc 6\n"),
            ("memory.current", "100\n"),
            ("memory.max", "max\n"),
        ]));
        let stats = MemoryStats::from_v2(&files).unwrap();
        assert_eq!(stats.limit, None);
        assert_eq!(stats.kernel, Bytes(21));
        assert_eq!(stats.oom_kills, None);
        assert_eq!(stats.refaulted, None, "no workingset fields");
    }

    #[test]
    fn missing_required_file_is_an_error_naming_it() {
        let files = Fixture(HashMap::from([("memory.stat", "anon 1\n")]));
        let err = MemoryStats::from_v2(&files).unwrap_err();
        assert!(err.to_string().contains("memory.current"), "{err}");
        assert!(
            err.is_gone(),
            "a vanished cgroup reads as NotFound: {err:?}"
        );
    }

    #[test]
    fn working_set_never_underflows() {
        let stats = MemoryStats {
            usage: Bytes(10),
            inactive_file: Bytes(20),
            ..MemoryStats::default()
        };
        assert_eq!(stats.working_set(), Bytes(0));
    }
}
