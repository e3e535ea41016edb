//! Per-cgroup memory samples: written every history interval, read as a cgroup's time series.

use memlens_types::{cgroups::CgroupRow, history::Sample};
use rusqlite::params;

use crate::{int, uint, Reader, Store, StoreError};

impl Store {
    /// Records every cgroup of one instant, then drops samples older than the retention window.
    /// Returns the rows written (an instant recorded twice is ignored).
    pub fn record(&mut self, ts_ms: u64, rows: &[CgroupRow]) -> Result<usize, StoreError> {
        let ts = int(ts_ms);
        let cutoff = ts.saturating_sub(int(
            u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX)
        ));
        let written = (|| {
            let tx = self.conn.transaction()?;
            let mut written = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO cgroup_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )?;
                for row in rows {
                    written += insert.execute(params![
                        ts,
                        int(row.id.0),
                        row.path,
                        int(row.usage_bytes),
                        int(row.anon_bytes),
                        int(row.file_bytes),
                        int(row.active_file_bytes),
                        int(row.inactive_file_bytes),
                        int(row.working_set_bytes),
                        int(row.kernel_bytes),
                        row.limit_bytes.map(int),
                        row.held.as_ref().map(|h| int(h.bytes)),
                        row.oom_kills.map(int),
                        row.top_file.as_ref().map(|f| f.display()),
                        row.top_file.as_ref().map(|f| int(f.bytes)),
                        row.limit_hits.map(int),
                        row.high_events.map(int),
                        row.refaulted_bytes.map(int),
                    ])?;
                }
                tx.execute(
                    "DELETE FROM cgroup_samples WHERE ts_ms < ?1",
                    params![cutoff],
                )?;
            }
            tx.commit()?;
            Ok(written)
        })();
        self.sql(written)
    }
}

impl Reader {
    /// Samples of the cgroup at `cgroup_path` since `since_ms`, oldest first, at most `limit`
    /// (evenly thinned when there are more).
    pub fn series(
        &self,
        cgroup_path: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Sample>, StoreError> {
        let all = (|| {
            let mut query = self.conn.prepare_cached(
                "SELECT ts_ms, cgroup_id, usage_bytes, anon_bytes, file_bytes, active_file_bytes,
                        inactive_file_bytes, working_set_bytes, kernel_bytes, limit_bytes, held_bytes,
                        oom_kills, top_file, top_file_bytes, limit_hits, high_events, refaulted_bytes
                 FROM cgroup_samples WHERE path = ?1 AND ts_ms >= ?2 ORDER BY ts_ms",
            )?;
            let rows = query.query_map(params![cgroup_path, int(since_ms)], |r| {
                Ok(Sample {
                    ts_ms: uint(r.get(0)?),
                    cgroup_id: uint(r.get(1)?),
                    usage_bytes: uint(r.get(2)?),
                    anon_bytes: uint(r.get(3)?),
                    file_bytes: uint(r.get(4)?),
                    active_file_bytes: uint(r.get(5)?),
                    inactive_file_bytes: uint(r.get(6)?),
                    working_set_bytes: uint(r.get(7)?),
                    kernel_bytes: uint(r.get(8)?),
                    limit_bytes: r.get::<_, Option<i64>>(9)?.map(uint),
                    held_bytes: r.get::<_, Option<i64>>(10)?.map(uint),
                    oom_kills: r.get::<_, Option<i64>>(11)?.map(uint),
                    top_file: r.get(12)?,
                    top_file_bytes: r.get::<_, Option<i64>>(13)?.map(uint),
                    limit_hits: r.get::<_, Option<i64>>(14)?.map(uint),
                    high_events: r.get::<_, Option<i64>>(15)?.map(uint),
                    refaulted_bytes: r.get::<_, Option<i64>>(16)?.map(uint),
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<Sample>>>()
        })();
        let all = self.sql(all)?;
        if all.len() <= limit || limit == 0 {
            return Ok(all);
        }
        let step = all.len().div_ceil(limit);
        Ok(all.into_iter().step_by(step).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use memlens_types::{MemcgId, Workload};

    use super::*;

    pub(crate) fn row(path: &str, usage: u64) -> CgroupRow {
        CgroupRow {
            id: MemcgId(42),
            path: path.into(),
            name: path.into(),
            workload: Workload::Cgroup,
            pod: None,
            usage_bytes: usage,
            anon_bytes: usage / 2,
            file_bytes: usage / 2,
            active_file_bytes: 1,
            inactive_file_bytes: 2,
            kernel_bytes: 3,
            working_set_bytes: usage.saturating_sub(2),
            shmem_bytes: 0,
            file_dirty_bytes: 0,
            file_writeback_bytes: 0,
            swap_bytes: None,
            limit_bytes: Some(1 << 30),
            oom_kills: None,
            limit_hits: None,
            high_events: None,
            refaulted_bytes: None,
            slab_reclaimable_bytes: None,
            slab_unreclaimable_bytes: None,
            sock_bytes: None,
            held: None,
            file_attributed_bytes: None,
            top_file: None,
        }
    }

    #[test]
    fn samples_survive_reopening_expire_and_never_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(10)).unwrap();
        for s in 0..5u64 {
            let written = store
                .record(1_000_000 + s * 1000, &[row("/a/b", 100 + s)])
                .unwrap();
            assert_eq!(written, 1);
        }
        // The same instant again (a restart replaying a snapshot): ignored.
        assert_eq!(store.record(1_004_000, &[row("/a/b", 999)]).unwrap(), 0);
        drop(store);

        let mut store = Store::open(&path, Duration::from_secs(10)).unwrap();
        let reader = Reader::open(&path).unwrap();
        let series = reader.series("/a/b", 0, 100).unwrap();
        assert_eq!(
            series.iter().map(|s| s.usage_bytes).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
        assert_eq!(series[0].limit_bytes, Some(1 << 30));
        // 20 s later: everything older than 10 s goes.
        store.record(1_024_000, &[row("/a/b", 7)]).unwrap();
        let series = reader.series("/a/b", 0, 100).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].usage_bytes, 7);
    }

    #[test]
    fn long_series_are_thinned_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        for s in 0..100u64 {
            store
                .record(1_000_000 + s * 1000, &[row("/a/b", s)])
                .unwrap();
        }
        let series = Reader::open(&path).unwrap().series("/a/b", 0, 10).unwrap();
        assert!(series.len() <= 10 && series.len() >= 9, "{}", series.len());
    }
}
