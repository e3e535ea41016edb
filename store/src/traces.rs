//! Finished allocator traces, kept across agent restarts: each trace's status and its
//! symbolized answer (the processes may be gone by the time it is read), the last
//! [`MAX_TRACES`] of them.

use memlens_types::allocations::{AllocationsResponse, TraceStatus};
use rusqlite::{params, OptionalExtension as _};

use crate::{corrupt, int, uint, Reader, Store, StoreError};

/// Traces kept; the oldest go first.
pub const MAX_TRACES: u64 = 64;

impl Store {
    /// Records a finished trace (replacing a record of the same id).
    pub fn record_trace(
        &mut self,
        status: &TraceStatus,
        answer: &AllocationsResponse,
        finished_ms: u64,
    ) -> Result<(), StoreError> {
        let result = (|| {
            let status_text = serde_json::to_string(status).map_err(|e| corrupt(2, e))?;
            let answer_text = serde_json::to_string(answer).map_err(|e| corrupt(3, e))?;
            let tx = self.conn.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO traces (id, finished_ms, status, answer)
                 VALUES (?1, ?2, ?3, ?4)",
                params![int(status.id), int(finished_ms), status_text, answer_text],
            )?;
            tx.execute(
                "DELETE FROM traces WHERE id NOT IN
                 (SELECT id FROM traces ORDER BY id DESC LIMIT ?1)",
                params![int(MAX_TRACES)],
            )?;
            tx.commit()
        })();
        self.sql(result)
    }

    /// The highest trace id on record (0: none), so that ids go on from there after a restart.
    pub fn last_trace_id(&self) -> Result<u64, StoreError> {
        let last: rusqlite::Result<i64> =
            self.conn
                .query_row("SELECT coalesce(max(id), 0) FROM traces", [], |r| r.get(0));
        self.sql(last).map(uint)
    }
}

impl Reader {
    /// A finished trace's status and answer.
    pub fn trace(&self, id: u64) -> Result<Option<(TraceStatus, AllocationsResponse)>, StoreError> {
        let found = self
            .conn
            .query_row(
                "SELECT status, answer FROM traces WHERE id = ?1",
                params![int(id)],
                |r| {
                    let status: String = r.get(0)?;
                    let answer: String = r.get(1)?;
                    Ok((
                        serde_json::from_str::<TraceStatus>(&status).map_err(|e| corrupt(0, e))?,
                        serde_json::from_str::<AllocationsResponse>(&answer)
                            .map_err(|e| corrupt(1, e))?,
                    ))
                },
            )
            .optional();
        self.sql(found)
    }
}

#[cfg(test)]
mod tests {
    use memlens_types::allocations::{TraceEnd, TraceState};

    use super::*;

    fn status(id: u64) -> TraceStatus {
        TraceStatus {
            id,
            state: TraceState::Finished,
            end: Some(TraceEnd::Completed),
            started_unix_ms: 1,
            seconds: 30.0,
            elapsed_seconds: 30.0,
            sample_bytes: 65_536,
            budget_cpus: 0.5,
            alloc_call_cost_us: 1.2,
            free_call_cost_us: 9.5,
            processes: Vec::new(),
            alloc_calls: 10,
            free_calls: 5,
            calls_per_second: 0.5,
            cost_cpus: 0.0,
            mean_cost_cpus: 0.0,
            samples: 3,
            sampled_frees: 1,
            lost_ring_full: 0,
            lost_live_full: 0,
            stack_copy_errors: 0,
            dropped_samples: 0,
        }
    }

    #[test]
    fn traces_survive_a_reopen_and_only_the_last_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.db");
        let answer = AllocationsResponse {
            taken_at_unix_ms: 5,
            processes: Vec::new(),
            processes_left_out: 0,
            by_inuse: Vec::new(),
        };
        {
            let mut store = Store::open(&path, std::time::Duration::from_secs(3600)).expect("open");
            assert_eq!(store.last_trace_id().expect("last"), 0);
            for id in 1..=MAX_TRACES + 2 {
                store.record_trace(&status(id), &answer, 7).expect("record");
            }
        }
        let store = Store::open(&path, std::time::Duration::from_secs(3600)).expect("reopen");
        assert_eq!(store.last_trace_id().expect("last"), MAX_TRACES + 2);
        let reader = Reader::open(&path).expect("reader");
        let (s, a) = reader.trace(MAX_TRACES + 2).expect("read").expect("kept");
        assert_eq!(
            (s.id, s.alloc_calls, a.taken_at_unix_ms),
            (MAX_TRACES + 2, 10, 5)
        );
        assert!(reader.trace(1).expect("read").is_none(), "the oldest went");
    }
}
