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

use crate::{attribution::files::CachedFile, model::Snapshot};

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
    // 2: lifecycle records (process exits, OOM kills, cgroups created and removed).
    "CREATE TABLE lifecycle (
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        comm TEXT NOT NULL,
        cgroup_id INTEGER NOT NULL,
        cgroup_path TEXT,
        exit_code INTEGER,
        signal INTEGER,
        oom_killed INTEGER NOT NULL,
        main_process INTEGER NOT NULL,
        anon_rss_bytes INTEGER,
        file_rss_bytes INTEGER,
        shmem_rss_bytes INTEGER,
        evidence TEXT,
        PRIMARY KEY (ts_ms, kind, pid, cgroup_id)
    ) WITHOUT ROWID;
    CREATE INDEX lifecycle_by_cgroup ON lifecycle (cgroup_path, ts_ms);",
    // 3: the event engine's events; one open event per kind and subject.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        summary TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        recovered_ms INTEGER,
        dimensions TEXT NOT NULL,
        evidence TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_one_open ON events (kind, subject) WHERE status = 'open';
    CREATE INDEX events_by_subject ON events (kind, subject, recovered_ms);",
    // 4: the cgroup's own OOM-kill counter (to find kills no victim event was seen for) and the
    // file with the most page cache, per sample.
    "ALTER TABLE cgroup_samples ADD COLUMN oom_kills INTEGER;
    ALTER TABLE cgroup_samples ADD COLUMN top_file TEXT;
    ALTER TABLE cgroup_samples ADD COLUMN top_file_bytes INTEGER;",
];

/// Most lifecycle records kept (a crash-looping host must not fill the disk); the oldest go.
pub const MAX_LIFECYCLE_ROWS: i64 = 500_000;

/// What a lifecycle record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A process ended other than with status 0 (normal exits are not kept).
    Exit,
    /// The OOM killer killed a process.
    OomKill,
    CgroupCreated,
    CgroupRemoved,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::Exit => "exit",
            RecordKind::OomKill => "oom_kill",
            RecordKind::CgroupCreated => "cgroup_created",
            RecordKind::CgroupRemoved => "cgroup_removed",
        }
    }

    fn parse(s: &str) -> Option<RecordKind> {
        Some(match s {
            "exit" => RecordKind::Exit,
            "oom_kill" => RecordKind::OomKill,
            "cgroup_created" => RecordKind::CgroupCreated,
            "cgroup_removed" => RecordKind::CgroupRemoved,
            _ => return None,
        })
    }
}

/// One lifecycle record, as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRecord {
    pub ts_ms: u64,
    pub kind: RecordKind,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    /// Exit status, when the process exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that ended the process.
    pub signal: Option<i32>,
    /// Chosen by the OOM killer (known from the kernel's own OOM event).
    pub oom_killed: bool,
    /// The cgroup's main process: its parent is in another memory cgroup (a container's init,
    /// started by its runtime or supervisor from outside). Its abnormal end is a restart.
    pub main_process: bool,
    /// OOM kills: the victim's resident memory when it was chosen.
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub shmem_rss_bytes: Option<u64>,
    /// For OOM kills and main-process ends: the cgroup's memory just before (JSON: usage, top
    /// stacks and files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

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
    /// The cgroup's own count of OOM kills so far.
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// The file with the most page cache in the cgroup, and its bytes.
    #[serde(default)]
    pub top_file: Option<String>,
    #[serde(default)]
    pub top_file_bytes: Option<u64>,
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

    /// The connection, for the tables other modules own (the engine's events); errors through
    /// [`Store::sql`].
    pub(crate) fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub(crate) fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
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
                    "INSERT OR IGNORE INTO cgroup_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                        row.oom_kills.map(n),
                        row.top_file.as_ref().map(CachedFile::display),
                        row.top_file.as_ref().map(|f| n(f.bytes)),
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

impl Store {
    /// Records lifecycle events (again-recorded ones are ignored), then drops those older than
    /// the retention window and, beyond [`MAX_LIFECYCLE_ROWS`], the oldest. Returns how many
    /// were new and how many the cap dropped.
    pub fn record_lifecycle(
        &mut self,
        records: &[LifecycleRecord],
    ) -> Result<(usize, usize), StoreError> {
        let cutoff = crate::model::unix_ms()
            .saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
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
                    "INSERT OR IGNORE INTO lifecycle VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(sql)?;
            let n = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            for r in records {
                written += insert
                    .execute(params![
                        n(r.ts_ms),
                        r.kind.as_str(),
                        r.pid,
                        r.comm,
                        n(r.cgroup_id),
                        r.cgroup_path,
                        r.exit_code,
                        r.signal,
                        r.oom_killed,
                        r.main_process,
                        r.anon_rss_bytes.map(n),
                        r.file_rss_bytes.map(n),
                        r.shmem_rss_bytes.map(n),
                        r.evidence.as_ref().map(ToString::to_string),
                    ])
                    .map_err(sql)?;
            }
        }
        tx.execute(
            "DELETE FROM lifecycle WHERE ts_ms < ?1",
            params![i64::try_from(cutoff).unwrap_or(i64::MAX)],
        )
        .map_err(sql)?;
        let capped = tx
            .execute(
                "DELETE FROM lifecycle WHERE ts_ms < (SELECT ts_ms FROM lifecycle
                 ORDER BY ts_ms DESC LIMIT 1 OFFSET ?1)",
                params![MAX_LIFECYCLE_ROWS],
            )
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok((written, capped))
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

    /// The connection, for the tables other modules own.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| StoreError::Sql {
            path: self.path.clone(),
            source,
        })
    }

    /// Lifecycle records of the cgroup at `cgroup_path` and its descendants (all when None) since
    /// `since_ms`, newest first, at most `limit`.
    pub fn lifecycle(
        &self,
        cgroup_path: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<LifecycleRecord>, StoreError> {
        let sql = |source| StoreError::Sql {
            path: self.path.clone(),
            source,
        };
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT ts_ms, kind, pid, comm, cgroup_id, cgroup_path, exit_code, signal, oom_killed,
                        main_process, anon_rss_bytes, file_rss_bytes, shmem_rss_bytes, evidence
                 FROM lifecycle
                 WHERE ts_ms >= ?1 AND (?2 IS NULL OR cgroup_path = ?2 OR cgroup_path LIKE ?2 || '/%')
                 ORDER BY ts_ms DESC LIMIT ?3",
            )
            .map_err(sql)?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = query
            .query_map(
                params![
                    i64::try_from(since_ms).unwrap_or(i64::MAX),
                    cgroup_path,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(LifecycleRecord {
                        ts_ms: u(r.get(0)?),
                        kind: RecordKind::parse(&r.get::<_, String>(1)?)
                            .unwrap_or(RecordKind::Exit),
                        pid: r.get(2)?,
                        comm: r.get(3)?,
                        cgroup_id: u(r.get(4)?),
                        cgroup_path: r.get(5)?,
                        exit_code: r.get(6)?,
                        signal: r.get(7)?,
                        oom_killed: r.get(8)?,
                        main_process: r.get(9)?,
                        anon_rss_bytes: r.get::<_, Option<i64>>(10)?.map(u),
                        file_rss_bytes: r.get::<_, Option<i64>>(11)?.map(u),
                        shmem_rss_bytes: r.get::<_, Option<i64>>(12)?.map(u),
                        evidence: r
                            .get::<_, Option<String>>(13)?
                            .and_then(|text| serde_json::from_str(&text).ok()),
                    })
                },
            )
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
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
                        inactive_file_bytes, working_set_bytes, kernel_bytes, limit_bytes, held_bytes,
                        oom_kills, top_file, top_file_bytes
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
                        oom_kills: r.get::<_, Option<i64>>(11)?.map(u),
                        top_file: r.get(12)?,
                        top_file_bytes: r.get::<_, Option<i64>>(13)?.map(u),
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
                working_set_bytes: usage.saturating_sub(2),
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
    fn lifecycle_records_are_kept_once_and_found_by_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let base = crate::model::unix_ms();
        let record = |ts, path: &str| LifecycleRecord {
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
            evidence: Some(serde_json::json!({"usage_bytes": 5})),
        };
        let records = [
            record(1000, "/pod/a"),
            record(2000, "/pod/a/c"),
            record(3000, "/other"),
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
        // Older than the retention window: dropped at the next write.
        let old = LifecycleRecord {
            ts_ms: base - 7200 * 1000,
            ..records[0].clone()
        };
        assert_eq!(store.record_lifecycle(&[old]).unwrap(), (1, 0));
        assert_eq!(reader.lifecycle(None, 0, 10).unwrap().len(), 3);
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
