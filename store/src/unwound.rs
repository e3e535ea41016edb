//! User stacks unwound from the kernel program's stack copies, kept across agent restarts.
//!
//! The kernel's sampled-page records outlive the agent (pinned maps), but a record whose user
//! stack was copied carries no stack of its own: the agent unwound the copy and released it. So
//! the unwound stacks are saved here, each under the record it belongs to (its superblock, tagged
//! with the allocating thread and time, as the agent's table keys them), identical stacks once,
//! under the key the agent's table gave them. Bounded by the record array: one row per
//! superblock at most, and a stack deleted once no superblock holds it.

use std::{collections::HashMap, sync::Arc};

use memlens_types::stack::{
    FoundBy, SavedSlot, SavedStackId, UnwoundChanges, UnwoundFrame, UnwoundStack,
};
use rusqlite::params;

use crate::{corrupt, int, uint, Store, StoreError};

/// Bytes per frame in a saved stack: the address, then how it was found.
const FRAME_BYTES: usize = 9;

/// A stack's frames as saved: 9 bytes a frame (a busy node saves hundreds of stacks a second;
/// JSON took four times the room).
fn encode(stack: &UnwoundStack) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(stack.len() * FRAME_BYTES);
    for f in stack.frames() {
        bytes.extend_from_slice(&f.addr.to_le_bytes());
        bytes.push(f.found_by.bits());
    }
    bytes
}

fn decode(bytes: &[u8]) -> Result<Vec<UnwoundFrame>, String> {
    if !bytes.len().is_multiple_of(FRAME_BYTES) {
        return Err(format!("{} bytes of frames", bytes.len()));
    }
    bytes
        .chunks_exact(FRAME_BYTES)
        .map(|f| {
            let mut addr = [0; 8];
            addr.copy_from_slice(&f[..8]);
            let found_by = match f[8] {
                kind @ 0..=3 => FoundBy::from_bits(kind),
                other => return Err(format!("frame kind {other}")),
            };
            Ok(UnwoundFrame {
                addr: u64::from_le_bytes(addr),
                found_by,
            })
        })
        .collect()
}

impl Store {
    /// Saves what changed in the agent's unwound stacks, in one transaction.
    pub fn save_unwound(&mut self, changes: &UnwoundChanges) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut stack_row = tx.prepare_cached(
                    "INSERT OR REPLACE INTO unwound_stacks (id, frames, stop) VALUES (?1, ?2, ?3)",
                )?;
                for (key, stack) in &changes.stacks {
                    let stop = stack
                        .stop
                        .map(|s| serde_json::to_string(&s))
                        .transpose()
                        .map_err(|e| corrupt(2, e))?;
                    stack_row.execute(params![int(key.0), encode(stack), stop])?;
                }
                let mut slot_row = tx.prepare_cached(
                    "INSERT OR REPLACE INTO unwound_slots (superblock, pid, ts_ns, stack)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for slot in &changes.slots {
                    slot_row.execute(params![
                        int(slot.superblock),
                        slot.pid,
                        int(slot.ts_ns),
                        int(slot.stack.0)
                    ])?;
                }
                let mut gone = tx.prepare_cached("DELETE FROM unwound_stacks WHERE id = ?1")?;
                for key in &changes.forgotten {
                    gone.execute([int(key.0)])?;
                }
            }
            tx.commit()
        })();
        self.sql(result)
    }

    /// Every saved stack with its record; identical stacks are shared. Rows a save left
    /// half-done (a stack no record names, a record naming no stack) are deleted first.
    pub fn load_unwound(&mut self) -> Result<Vec<(SavedSlot, Arc<UnwoundStack>)>, StoreError> {
        let result = (|| {
            self.conn.execute_batch(
                "DELETE FROM unwound_stacks WHERE id NOT IN (SELECT stack FROM unwound_slots);
                 DELETE FROM unwound_slots WHERE stack NOT IN (SELECT id FROM unwound_stacks);",
            )?;
            let mut stacks: HashMap<i64, Arc<UnwoundStack>> = HashMap::new();
            let mut query = self.conn.prepare(
                "SELECT s.superblock, s.pid, s.ts_ns, s.stack, u.frames, u.stop
                 FROM unwound_slots s JOIN unwound_stacks u ON u.id = s.stack",
            )?;
            let mut rows = query.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let key: i64 = row.get(3)?;
                let stack = match stacks.get(&key) {
                    Some(stack) => Arc::clone(stack),
                    None => {
                        let frames: Vec<u8> = row.get(4)?;
                        let stop: Option<String> = row.get(5)?;
                        let stack = Arc::new(UnwoundStack::new(
                            &decode(&frames).map_err(|e| corrupt(4, e))?,
                            stop.map(|s| serde_json::from_str(&s))
                                .transpose()
                                .map_err(|e| corrupt(5, e))?,
                        ));
                        stacks.insert(key, Arc::clone(&stack));
                        stack
                    }
                };
                let slot = SavedSlot {
                    superblock: uint(row.get(0)?),
                    pid: row.get(1)?,
                    ts_ns: uint(row.get(2)?),
                    stack: SavedStackId(uint(key)),
                };
                out.push((slot, stack));
            }
            Ok(out)
        })();
        self.sql(result)
    }

    /// Forgets every saved stack (the kernel's records started afresh).
    pub fn clear_unwound(&mut self) -> Result<(), StoreError> {
        let result = self
            .conn
            .execute_batch("DELETE FROM unwound_slots; DELETE FROM unwound_stacks;");
        self.sql(result)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use memlens_types::stack::{FoundBy, StackStop, UnwoundFrame};

    use super::*;

    fn stack(addr: u64) -> Arc<UnwoundStack> {
        Arc::new(UnwoundStack::new(
            &[
                UnwoundFrame {
                    addr,
                    found_by: FoundBy::Registers,
                },
                UnwoundFrame {
                    addr: 0x4010,
                    found_by: FoundBy::UnwindTables,
                },
            ],
            Some(StackStop::CopyEnded { bytes: 16384 }),
        ))
    }

    fn slot(superblock: u64, key: u64) -> SavedSlot {
        SavedSlot {
            superblock,
            pid: 7,
            ts_ns: 1000 + superblock,
            stack: SavedStackId(key),
        }
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn stacks_come_back_by_record_shared_and_forgotten_ones_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let a = stack(0x1000);
        store
            .save_unwound(&UnwoundChanges {
                slots: vec![slot(1, 1), slot(2, 1), slot(3, 2)],
                stacks: vec![
                    (SavedStackId(1), Arc::clone(&a)),
                    (SavedStackId(2), stack(0x2000)),
                ],
                forgotten: vec![],
            })
            .unwrap();
        // Superblock 3 is taken by a newer allocation of stack a: 0x2000 is no longer held.
        store
            .save_unwound(&UnwoundChanges {
                slots: vec![slot(3, 1)],
                stacks: vec![],
                forgotten: vec![SavedStackId(2)],
            })
            .unwrap();
        assert_eq!(count(&store, "unwound_stacks"), 1);
        drop(store);
        let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let mut loaded = store.load_unwound().unwrap();
        loaded.sort_by_key(|(s, _)| s.superblock);
        assert_eq!(
            loaded.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [slot(1, 1), slot(2, 1), slot(3, 1)]
        );
        assert_eq!(*loaded[0].1, *a);
        assert!(
            Arc::ptr_eq(&loaded[0].1, &loaded[2].1),
            "identical stacks are shared"
        );
        store.clear_unwound().unwrap();
        assert!(store.load_unwound().unwrap().is_empty());
    }

    #[test]
    fn a_half_done_save_is_tidied_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("h.db"), Duration::from_secs(3600)).unwrap();
        store
            .save_unwound(&UnwoundChanges {
                // Superblock 2 names a stack never saved; stack 9 is named by no superblock.
                slots: vec![slot(1, 1), slot(2, 5)],
                stacks: vec![(SavedStackId(1), stack(0x1)), (SavedStackId(9), stack(0x9))],
                forgotten: vec![],
            })
            .unwrap();
        let loaded = store.load_unwound().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(count(&store, "unwound_stacks"), 1);
        assert_eq!(count(&store, "unwound_slots"), 1);
    }

    #[test]
    fn stacks_saved_by_hash_are_migrated_to_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            for m in &crate::schema::MIGRATIONS[..6] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            let frames = encode(&stack(0x1000));
            conn.execute(
                "INSERT INTO user_stacks (hash, frames, stop) VALUES (-5, ?1, NULL), (77, ?1, NULL)",
                [&frames],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO unwound_slots (superblock, pid, ts_ns, hash)
                 VALUES (4, 7, 1004, 77), (5, 7, 1005, -5), (6, 7, 1006, -5)",
            )
            .unwrap();
        }
        let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let mut loaded = store.load_unwound().unwrap();
        loaded.sort_by_key(|(s, _)| s.superblock);
        assert_eq!(
            loaded.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [slot(4, 2), slot(5, 1), slot(6, 1)],
            "keys in the old hashes' order"
        );
        assert_eq!(loaded[0].1.frame(0).map(|f| f.addr), Some(0x1000));
    }
}
