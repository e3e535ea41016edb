//! The Python frames (function, file, line) that saved unwound stacks name by id: saved as the
//! agent's table gives them ids (which only grow), read back before the stacks at a restart.

use memlens_types::stack::{PythonFrame, PythonFrameId};
use rusqlite::params;

use crate::{Store, StoreError};

impl Store {
    /// Saves frames not saved before, in one transaction.
    pub fn save_python_frames(
        &mut self,
        frames: &[(PythonFrameId, impl AsRef<PythonFrame>)],
    ) -> Result<(), StoreError> {
        if frames.is_empty() {
            return Ok(());
        }
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut row = tx.prepare_cached(
                    "INSERT OR REPLACE INTO python_frames (id, function, file, line)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (id, frame) in frames {
                    let f = frame.as_ref();
                    row.execute(params![id.0, &*f.function, &*f.file, f.line])?;
                }
            }
            tx.commit()
        })();
        self.sql(result)
    }

    /// Every saved frame.
    pub fn load_python_frames(&mut self) -> Result<Vec<(PythonFrameId, PythonFrame)>, StoreError> {
        let result = (|| {
            let mut query = self
                .conn
                .prepare("SELECT id, function, file, line FROM python_frames ORDER BY id")?;
            let rows = query.query_map([], |row| {
                let function: String = row.get(1)?;
                let file: String = row.get(2)?;
                Ok((
                    PythonFrameId(row.get(0)?),
                    PythonFrame {
                        function: function.into(),
                        file: file.into(),
                        line: row.get(3)?,
                    },
                ))
            })?;
            rows.collect()
        })();
        self.sql(result)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn frames_come_back_by_id_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let frame = |line| {
            Arc::new(PythonFrame {
                function: "Cache.put".into(),
                file: "/srv/app/cache.py".into(),
                line,
            })
        };
        {
            let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
            store
                .save_python_frames(&[(PythonFrameId(1), frame(12)), (PythonFrameId(2), frame(14))])
                .unwrap();
        }
        let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let loaded = store.load_python_frames().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[1].0, PythonFrameId(2));
        assert_eq!(loaded[1].1, *frame(14));
    }
}
