//! Lifecycle records: process exits, OOM kills, cgroups created and removed.

use memlens_types::{
    lifecycle::{LifecycleRecord, MemoryAt, RecordKind},
    unix_ms,
};
use rusqlite::params;

use crate::{corrupt, int, uint, Reader, Store, StoreError};

/// Most lifecycle records kept (a crash-looping host must not fill the disk); the oldest go.
pub const MAX_LIFECYCLE_ROWS: i64 = 500_000;

impl Store {
    /// Records lifecycle events (again-recorded ones are ignored), then drops those older than
    /// the retention window and, beyond [`MAX_LIFECYCLE_ROWS`], the oldest. Returns how many
    /// were new and how many the cap dropped.
    pub fn record_lifecycle(
        &mut self,
        records: &[LifecycleRecord],
    ) -> Result<(usize, usize), StoreError> {
        let cutoff =
            unix_ms().saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let done = (|| {
            let evidence: Vec<Option<String>> = records
                .iter()
                .map(|r| r.evidence.as_ref().map(serde_json::to_string).transpose())
                .collect::<Result<_, _>>()
                .map_err(|e| corrupt(13, e))?;
            let tx = self.conn.transaction()?;
            let mut written = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO lifecycle VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?;
                for (r, evidence) in records.iter().zip(&evidence) {
                    written += insert.execute(params![
                        int(r.ts_ms),
                        r.kind.as_str(),
                        r.pid,
                        r.comm,
                        int(r.cgroup_id),
                        r.cgroup_path,
                        r.exit_code,
                        r.signal,
                        r.oom_killed,
                        r.main_process,
                        r.anon_rss_bytes.map(int),
                        r.file_rss_bytes.map(int),
                        r.shmem_rss_bytes.map(int),
                        evidence,
                    ])?;
                }
            }
            tx.execute(
                "DELETE FROM lifecycle WHERE ts_ms < ?1",
                params![int(cutoff)],
            )?;
            let capped = tx.execute(
                "DELETE FROM lifecycle WHERE ts_ms < (SELECT ts_ms FROM lifecycle
                 ORDER BY ts_ms DESC LIMIT 1 OFFSET ?1)",
                params![MAX_LIFECYCLE_ROWS],
            )?;
            tx.commit()?;
            Ok((written, capped))
        })();
        self.sql(done)
    }
}

impl Reader {
    /// Lifecycle records of the cgroup at hierarchy path `cgroup_path` and its descendants (all
    /// when None) since `since_ms`, newest first, at most `limit`. Paths compare exactly: `_`
    /// and `%` in systemd unit names are characters, and case matters.
    pub fn lifecycle(
        &self,
        cgroup_path: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<LifecycleRecord>, StoreError> {
        // The root's descendants are every cgroup.
        let prefix = cgroup_path
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty());
        let rows = (|| {
            let mut query = self.conn.prepare_cached(
                "SELECT ts_ms, kind, pid, comm, cgroup_id, cgroup_path, exit_code, signal, oom_killed,
                        main_process, anon_rss_bytes, file_rss_bytes, shmem_rss_bytes, evidence
                 FROM lifecycle
                 WHERE ts_ms >= ?1 AND (?2 IS NULL OR cgroup_path = ?2
                       OR substr(cgroup_path, 1, length(?2) + 1) = ?2 || '/')
                 ORDER BY ts_ms DESC LIMIT ?3",
            )?;
            let rows = query.query_map(params![int(since_ms), prefix, int(limit as u64)], |r| {
                let kind: String = r.get(1)?;
                let evidence: Option<String> = r.get(13)?;
                Ok(LifecycleRecord {
                    ts_ms: uint(r.get(0)?),
                    kind: kind.parse::<RecordKind>().map_err(|e| corrupt(1, e))?,
                    pid: r.get(2)?,
                    comm: r.get(3)?,
                    cgroup_id: uint(r.get(4)?),
                    cgroup_path: r.get(5)?,
                    exit_code: r.get(6)?,
                    signal: r.get(7)?,
                    oom_killed: r.get(8)?,
                    main_process: r.get(9)?,
                    anon_rss_bytes: r.get::<_, Option<i64>>(10)?.map(uint),
                    file_rss_bytes: r.get::<_, Option<i64>>(11)?.map(uint),
                    shmem_rss_bytes: r.get::<_, Option<i64>>(12)?.map(uint),
                    evidence: evidence
                        .map(|text| serde_json::from_str::<MemoryAt>(&text))
                        .transpose()
                        .map_err(|e| corrupt(13, e))?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        self.sql(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(base: u64, ts: u64, path: &str) -> LifecycleRecord {
        LifecycleRecord {
            ts_ms: base + ts,
            kind: RecordKind::OomKill,
            pid: 7,
            comm: "leak".into(),
            cgroup_id: 1,
            cgroup_path: Some(path.into()),
            exit_code: None,
            signal: Some(9),
            oom_killed: true,
            main_process: true,
            anon_rss_bytes: Some(1 << 20),
            file_rss_bytes: Some(0),
            shmem_rss_bytes: Some(0),
            evidence: Some(MemoryAt {
                taken_at_unix_ms: base,
                usage_bytes: 5,
                anon_bytes: 4,
                file_bytes: 1,
                limit_bytes: None,
                top_stacks: Vec::new(),
                top_files: Vec::new(),
            }),
        }
    }

    #[test]
    fn lifecycle_records_are_kept_once_and_found_by_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let base = unix_ms();
        let records = [
            record(base, 1000, "/pod/a"),
            record(base, 2000, "/pod/a/c"),
            record(base, 3000, "/other"),
        ];
        assert_eq!(store.record_lifecycle(&records).unwrap(), (3, 0));
        assert_eq!(
            store.record_lifecycle(&records).unwrap(),
            (0, 0),
            "recorded twice"
        );
        let reader = Reader::open(&path).unwrap();
        let found = reader.lifecycle(Some("/pod/a"), 0, 10).unwrap();
        assert_eq!(
            found.iter().map(|r| r.ts_ms - base).collect::<Vec<_>>(),
            [2000, 1000]
        );
        assert_eq!(found[0], records[1]);
        assert_eq!(reader.lifecycle(None, base + 2500, 10).unwrap().len(), 1);
        assert_eq!(reader.lifecycle(Some("/"), 0, 10).unwrap().len(), 3);
        // Older than the retention window: dropped at the next write.
        let old = LifecycleRecord {
            ts_ms: base - 7200 * 1000,
            ..records[0].clone()
        };
        assert_eq!(store.record_lifecycle(&[old]).unwrap(), (1, 0));
        assert_eq!(reader.lifecycle(None, 0, 10).unwrap().len(), 3);
    }

    #[test]
    fn cgroup_paths_compare_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let base = unix_ms();
        store
            .record_lifecycle(&[
                record(base, 1, "/system.slice/my_app.service"),
                record(base, 2, "/system.slice/myXapp.service"),
                record(base, 3, "/system.slice/MY_APP.service/child"),
                record(base, 4, "/system.slice/my_app.service/child"),
            ])
            .unwrap();
        let reader = Reader::open(&path).unwrap();
        let found = reader
            .lifecycle(Some("/system.slice/my_app.service"), 0, 10)
            .unwrap();
        assert_eq!(
            found.iter().map(|r| r.ts_ms - base).collect::<Vec<_>>(),
            [4, 1],
            "`_` is no wildcard and case matters"
        );
    }

    #[test]
    fn an_unknown_kind_is_an_error_not_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let base = unix_ms();
        store.record_lifecycle(&[record(base, 1, "/a")]).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE lifecycle SET kind = 'oom_kill_v9'", [])
            .unwrap();
        let err = Reader::open(&path)
            .unwrap()
            .lifecycle(None, 0, 10)
            .unwrap_err();
        assert!(err.to_string().contains("oom_kill_v9"), "{err}");
    }
}
