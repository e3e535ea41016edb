//! Persistent history: per-cgroup memory time series in an embedded SQLite database (WAL mode),
//! bounded by a retention window, so an agent restart loses nothing it recorded.
//!
//! The schema is versioned with SQLite's `user_version`; [`MIGRATIONS`] takes any older
//! database to the current version at open, in one transaction each, and a database newer than
//! this binary is refused rather than guessed at.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::model::Snapshot;

/// Schema migrations, in order: `MIGRATIONS[i]` takes version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: per-cgroup samples.
    "CREATE TABLE cgroup_samples (
        ts_ms INTEGER NOT NULL,
        cgroup_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        usage_bytes INTEGER NOT NULL,
        anon_bytes INTEGER NOT NULL,
        file_bytes INTEGER NOT NULL,
        active_file_bytes INTEGER NOT NULL,
        inactive_file_bytes INTEGER NOT NULL,
        working_set_bytes INTEGER NOT NULL,
        kernel_bytes INTEGER NOT NULL,
        limit_bytes INTEGER,
        held_bytes INTEGER,
        PRIMARY KEY (path, ts_ms)
    ) WITHOUT ROWID;
    CREATE INDEX cgroup_samples_by_time ON cgroup_samples (ts_ms);",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the history database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the history database {path} has schema version {found}, newer than this memlens \
         knows ({known}): use a newer memlens, or another --db"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("history database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// One cgroup at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub ts_ms: u64,
    pub cgroup_id: u64,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub working_set_bytes: u64,
    pub kernel_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub held_bytes: Option<u64>,
}

/// The database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    retention: Duration,
}

impl Store {
    /// Opens (creating, migrating) the database at `path`.
    pub fn open(path: &Path, retention: Duration) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            retention,
        };
        store.setup()?;
        Ok(store)
    }

    fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| StoreError::Sql {
            path: self.path.clone(),
            source,
        })
    }

    fn setup(&mut self) -> Result<(), StoreError> {
        let wal: rusqlite::Result<String> =
            self.conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0));
        self.sql(wal)?;
        let pragmas = self
            .conn
            .execute_batch("PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;");
        self.sql(pragmas)?;
        let version: rusqlite::Result<i64> =
            self.conn.query_row("PRAGMA user_version", [], |r| r.get(0));
        let version = self.sql(version)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (i, migration) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            let applied = self.conn.transaction().and_then(|tx| {
                tx.execute_batch(migration)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)?;
                tx.commit()
            });
            self.sql(applied)?;
            tracing::info!(
                "history database {} migrated to schema version {}",
                self.path.display(),
                i + 1
            );
        }
        Ok(())
    }

    /// Records every cgroup of `snapshot`, then drops samples older than the retention window.
    /// Returns the rows written.
    pub fn record(&mut self, snapshot: &Snapshot) -> Result<usize, StoreError> {
        let ts = i64::try_from(snapshot.taken_at_unix_ms).unwrap_or(i64::MAX);
        let cutoff = ts - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let path = self.path.clone();
        let sql = |source| StoreError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let mut written = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO cgroup_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(sql)?;
            for row in &snapshot.cgroups {
                let n = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
                written += insert
                    .execute(params![
                        ts,
                        n(row.id.0),
                        row.path,
                        n(row.usage_bytes),
                        n(row.anon_bytes),
                        n(row.file_bytes),
                        n(row.active_file_bytes),
                        n(row.inactive_file_bytes),
                        n(row.working_set_bytes),
                        n(row.kernel_bytes),
                        row.limit_bytes.map(n),
                        row.held.as_ref().map(|h| n(h.bytes)),
                    ])
                    .map_err(sql)?;
            }
            tx.execute(
                "DELETE FROM cgroup_samples WHERE ts_ms < ?1",
                params![cutoff],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(written)
    }
}

/// A read-only view of the database, opened per query (SQLite's WAL lets readers run beside
/// the writer).
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Samples of the cgroup at `path` since `since_ms`, oldest first, at most `limit` (evenly
    /// thinned when there are more).
    pub fn series(
        &self,
        cgroup_path: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Sample>, StoreError> {
        let sql = |source| StoreError::Sql {
            path: self.path.clone(),
            source,
        };
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT ts_ms, cgroup_id, usage_bytes, anon_bytes, file_bytes, active_file_bytes,
                        inactive_file_bytes, working_set_bytes, kernel_bytes, limit_bytes, held_bytes
                 FROM cgroup_samples WHERE path = ?1 AND ts_ms >= ?2 ORDER BY ts_ms",
            )
            .map_err(sql)?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = query
            .query_map(
                params![cgroup_path, i64::try_from(since_ms).unwrap_or(i64::MAX)],
                |r| {
                    Ok(Sample {
                        ts_ms: u(r.get(0)?),
                        cgroup_id: u(r.get(1)?),
                        usage_bytes: u(r.get(2)?),
                        anon_bytes: u(r.get(3)?),
                        file_bytes: u(r.get(4)?),
                        active_file_bytes: u(r.get(5)?),
                        inactive_file_bytes: u(r.get(6)?),
                        working_set_bytes: u(r.get(7)?),
                        kernel_bytes: u(r.get(8)?),
                        limit_bytes: r.get::<_, Option<i64>>(9)?.map(u),
                        held_bytes: r.get::<_, Option<i64>>(10)?.map(u),
                    })
                },
            )
            .map_err(sql)?;
        let all: Vec<Sample> = rows.collect::<Result<_, _>>().map_err(sql)?;
        if all.len() <= limit || limit == 0 {
            return Ok(all);
        }
        let step = all.len().div_ceil(limit);
        Ok(all.into_iter().step_by(step).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::Workload, model::CgroupRow, units::MemcgId};

    fn snapshot(ts: u64, usage: u64) -> Snapshot {
        Snapshot {
            taken_at_unix_ms: ts,
            cgroups: vec![CgroupRow {
                id: MemcgId(42),
                path: "/a/b".into(),
                name: "/a/b".into(),
                workload: Workload::Cgroup,
                usage_bytes: usage,
                anon_bytes: usage / 2,
                file_bytes: usage / 2,
                active_file_bytes: 1,
                inactive_file_bytes: 2,
                kernel_bytes: 3,
                working_set_bytes: usage - 2,
                shmem_bytes: 0,
                file_dirty_bytes: 0,
                file_writeback_bytes: 0,
                swap_bytes: None,
                limit_bytes: Some(1 << 30),
                oom_kills: None,
                limit_hits: None,
                slab_reclaimable_bytes: None,
                slab_unreclaimable_bytes: None,
                sock_bytes: None,
                held: None,
                file_attributed_bytes: None,
                top_file: None,
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn samples_survive_reopening_expire_and_never_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(10)).unwrap();
        for s in 0..5u64 {
            assert_eq!(
                store
                    .record(&snapshot(1_000_000 + s * 1000, 100 + s))
                    .unwrap(),
                1
            );
        }
        // The same instant again (a restart replaying a snapshot): ignored.
        assert_eq!(store.record(&snapshot(1_004_000, 999)).unwrap(), 0);
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
        store.record(&snapshot(1_024_000, 7)).unwrap();
        let series = reader.series("/a/b", 0, 100).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(reader.series("/a/b", 0, 100).unwrap()[0].usage_bytes, 7);
    }

    #[test]
    fn long_series_are_thinned_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        for s in 0..100u64 {
            store.record(&snapshot(1_000_000 + s * 1000, s)).unwrap();
        }
        let series = Reader::open(&path).unwrap().series("/a/b", 0, 10).unwrap();
        assert!(series.len() <= 10 && series.len() >= 9, "{}", series.len());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        Store::open(&path, Duration::from_secs(60)).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let Err(err) = Store::open(&path, Duration::from_secs(60)) else {
            panic!("a newer schema was accepted");
        };
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
