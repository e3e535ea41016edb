//! One snapshot of every memory cgroup: the kernel's counters joined with the page census.

use std::collections::{BTreeMap, HashMap};

use memlens_cgroup::{CgroupLayout, Discovery, MemoryStats};
use memlens_types::{
    cgroups::{CensusSummary, CgroupRow, HeldEstimate},
    status::ProgramStats,
    unix_ms, MemcgId, PageSize, Workload,
};

use crate::census::{Census, HeldPages};

/// The cgroups and the census at one instant.
#[derive(Clone, Debug, Default)]
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
    /// Run count and time of each kernel program (while `kernel.bpf_stats_enabled=1`).
    pub programs: Vec<ProgramStats>,
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
            frames_read: c.frames_read,
            charged_frames: c.charged_frames,
            read_errors: c.read_errors,
            duration_ms: u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
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
            pod: None,
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
            high_events: stats.high_events,
            refaulted_bytes: stats.refaulted.map(|p| p.bytes(page_size).0),
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
    local: &foldhash::HashMap<MemcgId, HeldPages>,
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use memlens_cgroup::CgroupDir;
    use memlens_types::Pages;

    use super::*;

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
        let local: foldhash::HashMap<_, _> = [
            (MemcgId(1), held(1)),
            (MemcgId(2), held(10)),
            (MemcgId(3), held(100)),
            (MemcgId(4), held(1000)),
        ]
        .into_iter()
        .collect();
        let totals = hierarchical(&discovery, &local);
        assert_eq!(totals[&MemcgId(3)].anon, Pages(100));
        assert_eq!(totals[&MemcgId(2)].anon, Pages(110));
        assert_eq!(totals[&MemcgId(4)].anon, Pages(1000));
        assert_eq!(totals[&MemcgId(1)].anon, Pages(1111));
    }
}
