//! Held pages per stack over time, kept in memory, so growth over a window is known, not only the
//! current total.
//!
//! Two rings bound the memory: every census for the last `fine_span` (default 10 min), and one
//! census a minute for the last `coarse_span` (default 6 h). Each snapshot keeps at most
//! `max_keys` stacks (the largest); the rest count as absent. A snapshot holds stacks as indices
//! into one table of the keys the snapshots share, with their pages as `f32`: 8 bytes a stack
//! instead of the 66 a map of full keys took (660 snapshots of 5,000 stacks: 26 MiB, not 218).

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::{LeakKey, LeakTable};

/// Held pages per stack at one census: (index into the key table, pages), by index.
#[derive(Clone, Debug)]
pub struct HeldSample {
    pub unix_ms: u64,
    pages: Vec<(u32, f32)>,
}

/// One snapshot, readable by key.
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    pub unix_ms: u64,
    sample: &'a HeldSample,
    keys: &'a KeyTable,
}

impl Snapshot<'_> {
    /// The pages `key` held at this census, if it was kept.
    #[must_use]
    pub fn pages(&self, key: &LeakKey) -> Option<f64> {
        let id = *self.keys.ids.get(key)?;
        let i = self.sample.pages.binary_search_by_key(&id, |e| e.0).ok()?;
        Some(f64::from(self.sample.pages[i].1))
    }

    /// Stacks kept in this snapshot.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sample.pages.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sample.pages.is_empty()
    }
}

/// The keys the snapshots refer to, each with how many snapshots do.
#[derive(Default)]
struct KeyTable {
    ids: HashMap<LeakKey, u32>,
    /// Key and reference count by id; freed ids are reused.
    slots: Vec<(LeakKey, u32)>,
    free: Vec<u32>,
}

impl KeyTable {
    fn acquire(&mut self, key: LeakKey) -> u32 {
        if let Some(&id) = self.ids.get(&key) {
            self.slots[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (key, 1);
                id
            }
            None => {
                self.slots.push((key, 1));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(key, id);
        id
    }

    fn release(&mut self, sample: &HeldSample) {
        for &(id, _) in &sample.pages {
            let Some(slot) = self.slots.get_mut(id as usize) else {
                continue;
            };
            slot.1 -= 1;
            if slot.1 == 0 {
                self.ids.remove(&slot.0);
                self.free.push(id);
            }
        }
    }
}

/// Bounded time series of leak tables.
pub struct GrowthHistory {
    fine: VecDeque<HeldSample>,
    coarse: VecDeque<HeldSample>,
    keys: KeyTable,
    fine_span: Duration,
    coarse_span: Duration,
    coarse_step: Duration,
    max_keys: usize,
    /// Stacks left out of snapshots by `max_keys`, over all snapshots.
    pub dropped_keys: u64,
}

impl GrowthHistory {
    #[must_use]
    pub fn new(fine_span: Duration, coarse_span: Duration, max_keys: usize) -> GrowthHistory {
        GrowthHistory {
            fine: VecDeque::new(),
            coarse: VecDeque::new(),
            keys: KeyTable::default(),
            fine_span,
            coarse_span,
            coarse_step: Duration::from_secs(60),
            max_keys,
            dropped_keys: 0,
        }
    }

    /// Records a census.
    pub fn record(&mut self, table: &LeakTable) {
        let mut pages: Vec<(LeakKey, f64)> =
            table.entries.iter().map(|(k, v)| (*k, v.pages)).collect();
        if pages.len() > self.max_keys {
            pages.sort_by(|a, b| b.1.total_cmp(&a.1));
            self.dropped_keys += (pages.len() - self.max_keys) as u64;
            pages.truncate(self.max_keys);
        }
        let now = table.taken_at_unix_ms;
        let coarse_due = self
            .coarse
            .back()
            .is_none_or(|last| now >= last.unix_ms + self.coarse_step.as_millis() as u64);
        let sample = |keys: &mut KeyTable| {
            let mut ids: Vec<(u32, f32)> = pages
                .iter()
                .map(|&(k, p)| (keys.acquire(k), p as f32))
                .collect();
            ids.sort_unstable_by_key(|e| e.0);
            HeldSample {
                unix_ms: now,
                pages: ids,
            }
        };
        if coarse_due {
            let coarse = sample(&mut self.keys);
            self.coarse.push_back(coarse);
        }
        let fine = sample(&mut self.keys);
        self.fine.push_back(fine);
        let keys = &mut self.keys;
        let mut expire = |ring: &mut VecDeque<HeldSample>, span: Duration| {
            while ring
                .front()
                .is_some_and(|s| s.unix_ms + (span.as_millis() as u64) < now)
            {
                if let Some(old) = ring.pop_front() {
                    keys.release(&old);
                }
            }
        };
        expire(&mut self.fine, self.fine_span);
        expire(&mut self.coarse, self.coarse_span);
    }

    /// The snapshot closest to `unix_ms` from at or after it (the window never reaches further
    /// back than asked), or the oldest one if none is that old.
    #[must_use]
    pub fn at(&self, unix_ms: u64) -> Option<Snapshot<'_>> {
        let fine_oldest = self.fine.front().map_or(u64::MAX, |s| s.unix_ms);
        let sample = if unix_ms >= fine_oldest {
            self.fine.iter().find(|s| s.unix_ms >= unix_ms)
        } else {
            self.coarse
                .iter()
                .find(|s| s.unix_ms >= unix_ms)
                .or_else(|| self.fine.front())
        }?;
        Some(Snapshot {
            unix_ms: sample.unix_ms,
            sample,
            keys: &self.keys,
        })
    }

    /// Snapshots held (fine, coarse).
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.fine.len(), self.coarse.len())
    }

    /// Distinct stacks the snapshots refer to.
    #[must_use]
    pub fn distinct_keys(&self) -> usize {
        self.keys.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use memlens_types::{MemcgId, PageKind};

    use super::*;
    use crate::{Held, ProcessKey};

    fn key(n: u64) -> LeakKey {
        LeakKey {
            memcg: MemcgId(1),
            process: ProcessKey {
                tgid: 1,
                start_ns: 0,
            },
            kind: PageKind::Anon,
            kernel: n,
            user: n,
        }
    }

    fn table(unix_ms: u64, entries: &[(u64, f64)]) -> LeakTable {
        LeakTable {
            taken_at_unix_ms: unix_ms,
            entries: entries
                .iter()
                .map(|&(k, pages)| {
                    (
                        key(k),
                        Held {
                            pages,
                            objects: pages,
                        },
                    )
                })
                .collect(),
            ..LeakTable::default()
        }
    }

    #[test]
    fn finds_the_snapshot_at_the_start_of_a_window_and_expires_old_ones() {
        let mut history =
            GrowthHistory::new(Duration::from_secs(10), Duration::from_secs(600), 100);
        for s in 0..30u64 {
            history.record(&table(s * 1000, &[(1, s as f64)]));
        }
        // Fine ring: the last 10 s. Coarse: one a minute -> only the first.
        assert_eq!(history.len(), (11, 1));
        let at = history.at(25_000).expect("snapshot");
        assert_eq!(at.unix_ms, 25_000);
        assert_eq!(at.pages(&key(1)), Some(25.0));
        // Older than the fine ring, and the coarse ring has nothing at or after it: the oldest
        // snapshot at or after the asked time, so the window never reaches back further.
        assert_eq!(history.at(5_000).expect("snapshot").unix_ms, 19_000);
        // The coarse ring answers for times it covers.
        for s in 30..200u64 {
            history.record(&table(s * 1000, &[(1, s as f64)]));
        }
        assert_eq!(history.at(100_000).expect("coarse").unix_ms, 120_000);
    }

    #[test]
    fn keeps_only_the_largest_stacks() {
        let mut history = GrowthHistory::new(Duration::from_secs(10), Duration::from_secs(600), 2);
        history.record(&table(0, &[(1, 1.0), (2, 5.0), (3, 3.0)]));
        let at = history.at(0).expect("snapshot");
        assert_eq!(at.len(), 2);
        assert!(at.pages(&key(2)).is_some() && at.pages(&key(3)).is_some());
        assert_eq!(at.pages(&key(1)), None);
        assert_eq!(history.dropped_keys, 1);
    }

    #[test]
    fn keys_no_snapshot_holds_any_more_are_forgotten() {
        let mut history = GrowthHistory::new(Duration::from_secs(2), Duration::from_secs(2), 10);
        for s in 0..10u64 {
            // A new stack every census, and stack 0 in every one.
            history.record(&table(s * 1000, &[(0, 1.0), (100 + s, 2.0)]));
        }
        // The fine ring keeps 3 censuses, the coarse one 1: at most 4 new stacks, and stack 0.
        assert!(history.distinct_keys() <= 5, "{}", history.distinct_keys());
        let at = history.at(9000).expect("snapshot");
        assert_eq!(at.pages(&key(109)), Some(2.0));
        assert_eq!(at.pages(&key(0)), Some(1.0));
        assert_eq!(at.pages(&key(100)), None);
    }
}
