//! Everything memlens keeps on disk, in one embedded SQLite database (WAL mode): per-cgroup
//! memory samples, lifecycle records (exits, OOM kills, cgroups created and removed) and the
//! event engine's events, each bounded by the retention window or a row cap, so an agent
//! restart loses nothing it recorded. The only crate that speaks SQL.

mod events;
mod lifecycle;
mod python_frames;
mod samples;
mod schema;
mod traces;
mod unwound;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use events::Applied;
pub use lifecycle::MAX_LIFECYCLE_ROWS;
use rusqlite::{Connection, OpenFlags};
pub use traces::MAX_TRACES;

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

/// A value read back that this memlens cannot understand (an unknown kind, malformed JSON):
/// reported, never replaced by a guess.
fn corrupt(column: usize, why: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        why.to_string().into(),
    )
}

/// An unsigned figure as SQLite's integer (saturating).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQLite's integer as an unsigned figure (negative values, never written, read as 0).
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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
        let known = schema::MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (i, migration) in schema::MIGRATIONS
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

    fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| StoreError::Sql {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
