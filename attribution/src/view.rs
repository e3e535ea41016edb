//! One census as queries see it: the cgroups and their counters, which stacks hold their pages,
//! which files their page cache; and the last few of them, so a client can pin one instant.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use memlens_model::Snapshot;
use memlens_types::{cgroups::CgroupRow, selector::MountPoint, CgroupSelector, MemcgId};

use crate::{file_cache::FileView, LeakView};

/// Everything the agent knows at one census.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub snapshot: Snapshot,
    pub leaks: Arc<LeakView>,
    pub files: Arc<FileView>,
    /// Where the memory hierarchy is mounted, to read the paths users type.
    pub mounts: Arc<[MountPoint]>,
}

impl View {
    /// The rows of the cgroups `selector` names (empty when none).
    #[must_use]
    pub fn select(&self, selector: &CgroupSelector) -> Vec<&CgroupRow> {
        let rows = &self.snapshot.cgroups;
        let chosen: Vec<MemcgId> = selector
            .select(rows.iter().map(|r| (r.id, r.path.as_str())), &self.mounts)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        rows.iter().filter(|r| chosen.contains(&r.id)).collect()
    }

    /// The hierarchy path `selector` names: a listed cgroup's, else the path as given (history
    /// and lifecycle records outlive their cgroups). None for an id no cgroup has.
    #[must_use]
    pub fn path_of(&self, selector: &CgroupSelector) -> Option<String> {
        self.select(selector)
            .first()
            .map(|r| r.path.clone())
            .or_else(|| selector.hierarchy_path(&self.mounts))
    }
}

/// The latest views, newest last: queries read the newest, and a client that needs several
/// answers about the same instant (`memlens leaks` with `--pprof`) pins one by its time.
pub struct Views {
    ring: Mutex<VecDeque<Arc<View>>>,
}

/// Views kept for pinned queries: 30 s worth, and at most this many. Each holds its census's
/// leak table and snapshot (a few MiB on a busy node); while the refresh runs every 2 s (an
/// agent's first seconds, a restarted agent catching up) thirty seconds were fifteen views, the
/// largest part of a restarted agent's peak. A pinned query asks again within a second or two.
const KEPT_VIEWS: usize = 3;
const KEPT_FOR_MS: u64 = 30_000;

impl Views {
    #[must_use]
    pub fn new(first: View) -> Views {
        Views {
            ring: Mutex::new(std::iter::once(Arc::new(first)).collect()),
        }
    }

    pub fn publish(&self, view: View) {
        if let Ok(mut ring) = self.ring.lock() {
            let newest = view.snapshot.taken_at_unix_ms;
            while ring.len() >= KEPT_VIEWS
                || ring
                    .front()
                    .is_some_and(|v| v.snapshot.taken_at_unix_ms + KEPT_FOR_MS < newest)
            {
                ring.pop_front();
            }
            ring.push_back(Arc::new(view));
        }
    }

    /// The newest view.
    #[must_use]
    pub fn latest(&self) -> Arc<View> {
        self.ring
            .lock()
            .ok()
            .and_then(|ring| ring.back().cloned())
            .unwrap_or_default()
    }

    /// The newest kept view taken at or before `unix_ms`.
    #[must_use]
    pub fn before(&self, unix_ms: u64) -> Option<Arc<View>> {
        let ring = self.ring.lock().ok()?;
        ring.iter()
            .rev()
            .find(|v| v.snapshot.taken_at_unix_ms <= unix_ms)
            .cloned()
    }

    /// The view taken at `unix_ms`, if still kept.
    #[must_use]
    pub fn at(&self, unix_ms: u64) -> Option<Arc<View>> {
        let ring = self.ring.lock().ok()?;
        ring.iter()
            .find(|v| v.snapshot.taken_at_unix_ms == unix_ms)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_at(unix_ms: u64) -> View {
        let mut view = View::default();
        view.snapshot.taken_at_unix_ms = unix_ms;
        view
    }

    #[test]
    fn fast_refreshes_keep_a_few_views_and_slow_ones_thirty_seconds() {
        let views = Views::new(view_at(1_000));
        for i in 1..=15 {
            views.publish(view_at(1_000 + i * 2_000));
        }
        assert!(views.at(31_000).is_some(), "the newest is kept");
        assert!(views.at(27_000).is_some(), "a view 4 s old is kept");
        assert!(views.at(25_000).is_none(), "at most {KEPT_VIEWS} views");
        views.publish(view_at(100_000));
        assert!(views.at(31_000).is_none(), "a view 69 s old goes");
        assert_eq!(
            views.before(99_999).map(|v| v.snapshot.taken_at_unix_ms),
            None
        );
    }
}
