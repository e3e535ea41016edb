//! Held pages per stack over time, kept in memory, so growth over a window is known, not only the
//! current total.
//!
//! Two rings bound the memory: every census for the last `fine_span` (default 10 min), and one
//! census a minute for the last `coarse_span` (default 6 h). Each snapshot keeps at most
//! `max_keys` stacks (the largest); the rest count as absent.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::{LeakKey, LeakTable};

/// Held pages per stack at one census.
#[derive(Clone, Debug)]
pub struct HeldSample {
    pub unix_ms: u64,
    pub pages: HashMap<LeakKey, f64>,
}

/// Bounded time series of leak tables.
pub struct GrowthHistory {
    fine: VecDeque<HeldSample>,
    coarse: VecDeque<HeldSample>,
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
        let snapshot = HeldSample {
            unix_ms: table.taken_at_unix_ms,
            pages: pages.into_iter().collect(),
        };
        let coarse_due = self.coarse.back().is_none_or(|last| {
            snapshot.unix_ms >= last.unix_ms + self.coarse_step.as_millis() as u64
        });
        if coarse_due {
            self.coarse.push_back(snapshot.clone());
        }
        self.fine.push_back(snapshot);
        let now = table.taken_at_unix_ms;
        let expire = |ring: &mut VecDeque<HeldSample>, span: Duration| {
            while ring
                .front()
                .is_some_and(|s| s.unix_ms + (span.as_millis() as u64) < now)
            {
                ring.pop_front();
            }
        };
        expire(&mut self.fine, self.fine_span);
        expire(&mut self.coarse, self.coarse_span);
    }

    /// The snapshot closest to `unix_ms` from at or after it (the window never reaches further
    /// back than asked), or the oldest one if none is that old.
    #[must_use]
    pub fn at(&self, unix_ms: u64) -> Option<&HeldSample> {
        let fine_oldest = self.fine.front().map_or(u64::MAX, |s| s.unix_ms);
        if unix_ms >= fine_oldest {
            return self.fine.iter().find(|s| s.unix_ms >= unix_ms);
        }
        self.coarse
            .iter()
            .find(|s| s.unix_ms >= unix_ms)
            .or_else(|| self.fine.front())
    }

    /// Snapshots held (fine, coarse).
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.fine.len(), self.coarse.len())
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
        assert_eq!(at.pages[&key(1)], 25.0);
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
        assert_eq!(at.pages.len(), 2);
        assert!(at.pages.contains_key(&key(2)) && at.pages.contains_key(&key(3)));
        assert_eq!(history.dropped_keys, 1);
    }
}
