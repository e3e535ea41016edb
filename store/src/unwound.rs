//! User stacks unwound from the kernel program's stack copies, kept across agent restarts.
//!
//! The kernel's sampled-page records outlive the agent (pinned maps), but a record whose user
//! stack was copied carries no stack of its own: the agent unwound the copy and released it. So
//! the unwound stacks are saved here, each under the record it belongs to (its superblock, tagged
//! with the allocating thread and time, as the agent's table keys them), identical stacks once.
//! Bounded by the record array: one row per superblock at most.

use std::{collections::HashMap, sync::Arc};

use memlens_types::stack::{FoundBy, UnwoundFrame, UnwoundStack};
use rusqlite::params;

use crate::{corrupt, int, uint, Store, StoreError};

/// The sampled-page record a stack belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTag {
    pub superblock: u64,
    pub pid: u32,
    pub ts_ns: u64,
}

/// Bytes per frame in a saved stack: the address, then how it was found.
const FRAME_BYTES: usize = 9;

/// A stack's frames as saved: 9 bytes a frame (a busy node saves hundreds of stacks a second;
/// JSON took four times the room).
fn encode(stack: &UnwoundStack) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(stack.frames.len() * FRAME_BYTES);
    for f in &stack.frames {
        bytes.extend_from_slice(&f.addr.to_le_bytes());
        bytes.push(match f.found_by {
            FoundBy::Registers => 0,
            FoundBy::UnwindTables => 1,
            FoundBy::FramePointer => 2,
            FoundBy::RecoveredLeaf => 3,
        });
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
                0 => FoundBy::Registers,
                1 => FoundBy::UnwindTables,
                2 => FoundBy::FramePointer,
                3 => FoundBy::RecoveredLeaf,
                other => return Err(format!("frame kind {other}")),
            };
            Ok(UnwoundFrame {
                addr: u64::from_le_bytes(addr),
                found_by,
            })
        })
        .collect()
}

/// FNV-1a of the saved frames and stop: the same across builds.
fn hash(frames: &[u8], stop: Option<&str>) -> i64 {
    let h = frames
        .iter()
        .chain(stop.unwrap_or_default().as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(h.to_ne_bytes())
}

impl Store {
    /// Saves the stacks of `slots`, replacing what their superblocks held; with `prune`, also
    /// forgets the stacks no superblock holds any more.
    pub fn save_unwound(
        &mut self,
        slots: &[(SlotTag, Arc<UnwoundStack>)],
        prune: bool,
    ) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut stack_row = tx.prepare_cached(
                    "INSERT OR IGNORE INTO user_stacks (hash, frames, stop) VALUES (?1, ?2, ?3)",
                )?;
                let mut slot_row = tx.prepare_cached(
                    "INSERT OR REPLACE INTO unwound_slots (superblock, pid, ts_ns, hash)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut written: HashMap<*const UnwoundStack, i64> = HashMap::new();
                for (tag, stack) in slots {
                    let key = match written.get(&Arc::as_ptr(stack)) {
                        Some(&key) => key,
                        None => {
                            let frames = encode(stack);
                            let stop = stack
                                .stop
                                .map(|s| serde_json::to_string(&s))
                                .transpose()
                                .map_err(|e| corrupt(2, e))?;
                            let key = hash(&frames, stop.as_deref());
                            stack_row.execute(params![key, frames, stop])?;
                            written.insert(Arc::as_ptr(stack), key);
                            key
                        }
                    };
                    slot_row.execute(params![int(tag.superblock), tag.pid, int(tag.ts_ns), key])?;
                }
            }
            if prune {
                tx.execute(
                    "DELETE FROM user_stacks WHERE hash NOT IN (SELECT hash FROM unwound_slots)",
                    [],
                )?;
            }
            tx.commit()
        })();
        self.sql(result)
    }

    /// Every saved stack with its record's tag; identical stacks are shared.
    pub fn load_unwound(&self) -> Result<Vec<(SlotTag, Arc<UnwoundStack>)>, StoreError> {
        let result = (|| {
            let mut stacks: HashMap<i64, Arc<UnwoundStack>> = HashMap::new();
            let mut query = self.conn.prepare(
                "SELECT s.superblock, s.pid, s.ts_ns, s.hash, u.frames, u.stop
                 FROM unwound_slots s JOIN user_stacks u ON u.hash = s.hash",
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
                        let stack = Arc::new(UnwoundStack {
                            frames: decode(&frames).map_err(|e| corrupt(4, e))?,
                            stop: stop
                                .map(|s| serde_json::from_str(&s))
                                .transpose()
                                .map_err(|e| corrupt(5, e))?,
                        });
                        stacks.insert(key, Arc::clone(&stack));
                        stack
                    }
                };
                let tag = SlotTag {
                    superblock: uint(row.get(0)?),
                    pid: row.get(1)?,
                    ts_ns: uint(row.get(2)?),
                };
                out.push((tag, stack));
            }
            Ok(out)
        })();
        self.sql(result)
    }

    /// Forgets every saved stack (the kernel's records started afresh).
    pub fn clear_unwound(&mut self) -> Result<(), StoreError> {
        let result = self
            .conn
            .execute_batch("DELETE FROM unwound_slots; DELETE FROM user_stacks;");
        self.sql(result)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use memlens_types::stack::{FoundBy, StackStop, UnwoundFrame};

    use super::*;

    fn stack(addr: u64) -> Arc<UnwoundStack> {
        Arc::new(UnwoundStack {
            frames: vec![
                UnwoundFrame {
                    addr,
                    found_by: FoundBy::Registers,
                },
                UnwoundFrame {
                    addr: 0x4010,
                    found_by: FoundBy::UnwindTables,
                },
            ],
            stop: Some(StackStop::CopyEnded { bytes: 16384 }),
        })
    }

    fn tag(superblock: u64) -> SlotTag {
        SlotTag {
            superblock,
            pid: 7,
            ts_ns: 1000 + superblock,
        }
    }

    #[test]
    fn stacks_come_back_by_record_shared_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let mut store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let a = stack(0x1000);
        store
            .save_unwound(
                &[
                    (tag(1), Arc::clone(&a)),
                    (tag(2), Arc::clone(&a)),
                    (tag(3), stack(0x2000)),
                ],
                false,
            )
            .unwrap();
        // Superblock 3 is taken by a newer allocation of stack a: 0x2000 is no longer held.
        store
            .save_unwound(&[(tag(3), Arc::clone(&a))], true)
            .unwrap();
        drop(store);
        let store = Store::open(&db, Duration::from_secs(3600)).unwrap();
        let mut loaded = store.load_unwound().unwrap();
        loaded.sort_by_key(|(t, _)| t.superblock);
        assert_eq!(
            loaded.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [tag(1), tag(2), tag(3)]
        );
        assert_eq!(*loaded[0].1, *a);
        assert!(
            Arc::ptr_eq(&loaded[0].1, &loaded[2].1),
            "identical stacks are shared"
        );
        let kept: i64 = store
            .conn
            .query_row("SELECT count(*) FROM user_stacks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "the stack no record holds was pruned");
        let mut store = store;
        store.clear_unwound().unwrap();
        assert!(store.load_unwound().unwrap().is_empty());
    }
}
