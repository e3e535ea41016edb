//! The model: one snapshot of every memory cgroup, joining the kernel's counters with the page
//! census. This is what the API serves and the CLI shows; fields are stable, bytes are integers.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    attribution::files::{CachedFile, FileView},
    cgroup::{CgroupLayout, Discovery, MemoryStats, Workload},
    collectors::pages::{Census, HeldPages},
    units::{MemcgId, PageSize},
};

/// One memory cgroup, as `memlens top` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CgroupRow {
    /// Memory cgroup id (inode of the cgroup directory).
    pub id: MemcgId,
    /// Path in the memory hierarchy.
    pub path: String,
    /// Short label: pod/container, unit, or the path.
    pub name: String,
    pub workload: Workload,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub kernel_bytes: u64,
    /// usage - inactive_file, as kubelet and cAdvisor compute it.
    pub working_set_bytes: u64,
    pub shmem_bytes: u64,
    pub file_dirty_bytes: u64,
    pub file_writeback_bytes: u64,
    pub swap_bytes: Option<u64>,
    /// None when unlimited.
    pub limit_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub limit_hits: Option<u64>,
    pub slab_reclaimable_bytes: Option<u64>,
    pub slab_unreclaimable_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
    /// The eBPF page census estimate (None when the census is unavailable).
    pub held: Option<HeldEstimate>,
    /// Page cache attributed to files by the page-cache probes (None when they are not attached).
    #[serde(default)]
    pub file_attributed_bytes: Option<u64>,
    /// The file with the most page cache in this cgroup (and its descendants).
    #[serde(default)]
    pub top_file: Option<CachedFile>,
}

/// Estimated bytes held, from the sampled frames (hierarchical, like the counters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEstimate {
    pub bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub kernel_bytes: u64,
    /// Of `bytes`, the part allocated while the probes ran (with stacks).
    pub tracked_bytes: u64,
    /// Half-width of the 95% confidence interval of `bytes`.
    pub error95_bytes: u64,
    /// Sampled frames behind the estimate.
    pub frames: u64,
}

/// Totals of one census.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusSummary {
    pub frames: u64,
    pub charged_frames: u64,
    pub read_errors: u64,
    pub duration_ms: u64,
}

/// Everything the agent knows at one instant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub taken_at_unix_ms: u64,
    pub sample_shift: u32,
    pub page_size: u64,
    pub cgroups: Vec<CgroupRow>,
    /// Cgroups beyond the discovery cap.
    pub skipped_cgroups: usize,
    /// Cgroups that vanished while being read.
    pub vanished_cgroups: usize,
    /// Cgroups whose files could not be read for another reason.
    pub unreadable_cgroups: usize,
    pub census: Option<CensusSummary>,
    /// Kernel programs' counters, summed over CPUs.
    pub counters: BTreeMap<String, u64>,
    /// Stacks in the kernel's stack map after the last collection.
    pub stacks_in_use: usize,
    /// Stacks deleted because no held page refers to them any more.
    pub stacks_collected: u64,
    /// Growth history held: (snapshots every census, snapshots a minute apart).
    pub history_snapshots: (usize, usize),
    /// Leak attribution of this census (served by `/v1/leaks`, not serialized here).
    #[serde(skip)]
    pub leaks: std::sync::Arc<crate::attribution::LeakView>,
    /// File-cache attribution (served by `/v1/cache`).
    #[serde(skip)]
    pub files: std::sync::Arc<FileView>,
}

/// The latest snapshots, newest last: queries read the newest, and a client that needs several
/// answers about the same instant (`memlens leaks` with `--pprof`) pins one by its time.
pub struct Snapshots {
    ring: std::sync::Mutex<std::collections::VecDeque<std::sync::Arc<Snapshot>>>,
}

/// Snapshots kept for pinned queries: 30 s worth, and at most this many.
const KEPT_SNAPSHOTS: usize = 32;
const KEPT_FOR_MS: u64 = 30_000;

impl Snapshots {
    #[must_use]
    pub fn new(first: Snapshot) -> Snapshots {
        Snapshots {
            ring: std::sync::Mutex::new(std::iter::once(std::sync::Arc::new(first)).collect()),
        }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        if let Ok(mut ring) = self.ring.lock() {
            let newest = snapshot.taken_at_unix_ms;
            while ring.len() >= KEPT_SNAPSHOTS
                || ring
                    .front()
                    .is_some_and(|s| s.taken_at_unix_ms + KEPT_FOR_MS < newest)
            {
                ring.pop_front();
            }
            ring.push_back(std::sync::Arc::new(snapshot));
        }
    }

    /// The newest snapshot.
    #[must_use]
    pub fn latest(&self) -> std::sync::Arc<Snapshot> {
        self.ring
            .lock()
            .ok()
            .and_then(|ring| ring.back().cloned())
            .unwrap_or_default()
    }

    /// The newest kept snapshot taken at or before `unix_ms`.
    #[must_use]
    pub fn before(&self, unix_ms: u64) -> Option<std::sync::Arc<Snapshot>> {
        let ring = self.ring.lock().ok()?;
        ring.iter()
            .rev()
            .find(|s| s.taken_at_unix_ms <= unix_ms)
            .cloned()
    }

    /// The snapshot taken at `unix_ms`, if still kept.
    #[must_use]
    pub fn at(&self, unix_ms: u64) -> Option<std::sync::Arc<Snapshot>> {
        let ring = self.ring.lock().ok()?;
        ring.iter().find(|s| s.taken_at_unix_ms == unix_ms).cloned()
    }
}

/// Builds a snapshot from one discovery, the cgroups' counters and a census.
#[must_use]
pub fn build(
    layout: &CgroupLayout,
    discovery: &Discovery,
    census: Option<&Census>,
    page_size: PageSize,
) -> Snapshot {
    let held = census.map(|c| hierarchical(discovery, &c.by_memcg));
    let mut snapshot = Snapshot {
        taken_at_unix_ms: unix_ms(),
        sample_shift: census.map_or(0, |c| c.shift),
        page_size: page_size.0,
        skipped_cgroups: discovery.skipped,
        census: census.map(|c| CensusSummary {
            frames: c.frames,
            charged_frames: c.charged_frames,
            read_errors: c.read_errors,
            duration_ms: c.duration.as_millis() as u64,
        }),
        ..Snapshot::default()
    };
    for cgroup in &discovery.cgroups {
        let stats = match MemoryStats::read(&cgroup.dir, layout.version) {
            Ok(stats) => stats,
            Err(e) if e.is_gone() => {
                snapshot.vanished_cgroups += 1;
                continue;
            }
            Err(e) => {
                tracing::debug!("skipping {}: {e}", cgroup.path);
                snapshot.unreadable_cgroups += 1;
                continue;
            }
        };
        let workload = Workload::from_path(&cgroup.path);
        let held = held.as_ref().map(|h| {
            let pages = h.get(&cgroup.id).copied().unwrap_or_default();
            let shift = census.map_or(0, |c| c.shift);
            HeldEstimate {
                bytes: pages.total().bytes(page_size).0,
                anon_bytes: pages.anon.bytes(page_size).0,
                file_bytes: pages.file.bytes(page_size).0,
                kernel_bytes: pages.kernel.bytes(page_size).0,
                tracked_bytes: pages.tracked.bytes(page_size).0,
                error95_bytes: pages.error95(shift).bytes(page_size).0,
                frames: pages.frames,
            }
        });
        snapshot.cgroups.push(CgroupRow {
            id: cgroup.id,
            name: workload.label().unwrap_or_else(|| cgroup.path.clone()),
            path: cgroup.path.clone(),
            workload,
            usage_bytes: stats.usage.0,
            anon_bytes: stats.anon.0,
            file_bytes: stats.file.0,
            active_file_bytes: stats.active_file.0,
            inactive_file_bytes: stats.inactive_file.0,
            kernel_bytes: stats.kernel.0,
            working_set_bytes: stats.working_set().0,
            shmem_bytes: stats.shmem.0,
            file_dirty_bytes: stats.file_dirty.0,
            file_writeback_bytes: stats.file_writeback.0,
            swap_bytes: stats.swap.map(|b| b.0),
            limit_bytes: stats.limit.map(|b| b.0),
            oom_kills: stats.oom_kills,
            limit_hits: stats.limit_hits,
            slab_reclaimable_bytes: stats.slab_reclaimable.map(|b| b.0),
            slab_unreclaimable_bytes: stats.slab_unreclaimable.map(|b| b.0),
            sock_bytes: stats.sock.map(|b| b.0),
            held,
            file_attributed_bytes: None,
            top_file: None,
        });
    }
    snapshot
        .cgroups
        .sort_by(|a, b| b.usage_bytes.cmp(&a.usage_bytes).then(a.path.cmp(&b.path)));
    snapshot
}

/// Per-cgroup held pages including descendants (the census counts each page once, at the cgroup
/// it is charged to; the kernel's counters are hierarchical, so the estimate is made so too).
fn hierarchical(
    discovery: &Discovery,
    local: &HashMap<MemcgId, HeldPages>,
) -> HashMap<MemcgId, HeldPages> {
    let mut totals: Vec<HeldPages> = discovery
        .cgroups
        .iter()
        .map(|c| local.get(&c.id).copied().unwrap_or_default())
        .collect();
    let parents = discovery.parents();
    for i in (0..discovery.cgroups.len()).rev() {
        if let Some(p) = parents[i] {
            let child = totals[i];
            totals[p].absorb(&child);
        }
    }
    discovery
        .cgroups
        .iter()
        .zip(totals)
        .map(|(c, t)| (c.id, t))
        .collect()
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Snapshot {
    /// Adds the file-cache attribution to the rows.
    pub fn attach_files(&mut self, files: FileView) {
        for row in &mut self.cgroups {
            let cgroup = files.by_memcg.get(&row.id);
            row.file_attributed_bytes = Some(cgroup.map_or(0, |c| c.attributed.0));
            row.top_file = cgroup.and_then(|c| c.top.first().cloned());
        }
        self.files = std::sync::Arc::new(files);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{cgroup::CgroupDir, units::Pages};

    fn dir(id: u64, path: &str) -> CgroupDir {
        CgroupDir {
            id: MemcgId(id),
            path: path.into(),
            dir: PathBuf::from(path),
        }
    }

    #[test]
    fn held_pages_roll_up_to_ancestors() {
        let discovery = Discovery {
            cgroups: vec![dir(1, "/"), dir(2, "/a"), dir(3, "/a/x"), dir(4, "/b")],
            skipped: 0,
        };
        let held = |n| HeldPages {
            anon: Pages(n),
            frames: 1,
            ..HeldPages::default()
        };
        let local = HashMap::from([
            (MemcgId(1), held(1)),
            (MemcgId(2), held(10)),
            (MemcgId(3), held(100)),
            (MemcgId(4), held(1000)),
        ]);
        let totals = hierarchical(&discovery, &local);
        assert_eq!(totals[&MemcgId(3)].anon, Pages(100));
        assert_eq!(totals[&MemcgId(2)].anon, Pages(110));
        assert_eq!(totals[&MemcgId(4)].anon, Pages(1000));
        assert_eq!(totals[&MemcgId(1)].anon, Pages(1111));
    }
}
