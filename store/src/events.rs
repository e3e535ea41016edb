//! Events: raised, updated, reopened within the silence period, recovered, and bounded; one
//! open event per kind and subject, enforced by a unique index.

use std::{collections::BTreeMap, time::Duration};

use memlens_types::event::{Dimensions, Event, EventKind, Evidence, Finding, Status};
use rusqlite::{params, OptionalExtension as _, Row};

use crate::{corrupt, int, uint, Reader, Store, StoreError};

/// What applying one detector run changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events opened (new, or reopened within the silence period).
    pub raised: Vec<u64>,
    /// Open events seen again.
    pub updated: Vec<u64>,
    pub recovered: Vec<u64>,
}

/// The evidence column: the JSON of the evidence itself (its kind is the kind column).
fn evidence_text(evidence: &Evidence) -> rusqlite::Result<String> {
    let value = serde_json::to_value(evidence).map_err(|e| corrupt(10, e))?;
    Ok(value
        .get("evidence")
        .map_or_else(String::new, ToString::to_string))
}

impl Store {
    /// Applies a run of the detectors covering `kinds`: each finding opens or updates the event
    /// of its kind and subject; an open event of those kinds without a finding has recovered.
    /// An event that recovered less than `silence` ago is reopened rather than a new one raised,
    /// so a flapping condition stays one event. Beyond `max_events`, the oldest recovered go.
    pub fn apply(
        &mut self,
        kinds: &[EventKind],
        findings: &[Finding],
        now_ms: u64,
        silence: Duration,
        max_events: usize,
    ) -> Result<Applied, StoreError> {
        let result = apply(&mut self.conn, kinds, findings, now_ms, silence, max_events);
        self.sql(result)
    }
}

fn apply(
    conn: &mut rusqlite::Connection,
    kinds: &[EventKind],
    findings: &[Finding],
    now_ms: u64,
    silence: Duration,
    max_events: usize,
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    let tx = conn.transaction()?;
    let quiet_since =
        int(now_ms.saturating_sub(u64::try_from(silence.as_millis()).unwrap_or(u64::MAX)));
    for f in findings {
        let kind = f.kind().as_str();
        let dimensions = serde_json::to_string(&f.dimensions).map_err(|e| corrupt(9, e))?;
        let evidence = evidence_text(&f.evidence)?;
        // The open event of this kind and subject, else the one that recovered most recently
        // within the silence period: either is opened (again) and updated.
        let existing: Option<(i64, bool)> = tx
            .query_row(
                "SELECT id, status = 'open' FROM events WHERE kind = ?1 AND subject = ?2
                 AND (status = 'open' OR recovered_ms >= ?3)
                 ORDER BY status = 'open' DESC, recovered_ms DESC LIMIT 1",
                params![kind, f.subject, quiet_since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match existing {
            Some((id, was_open)) => {
                tx.execute(
                    "UPDATE events SET status = 'open', recovered_ms = NULL, last_seen_ms = ?2,
                     severity = ?3, summary = ?4, dimensions = ?5, evidence = ?6 WHERE id = ?1",
                    params![
                        id,
                        int(now_ms),
                        f.severity.as_str(),
                        f.summary,
                        dimensions,
                        evidence
                    ],
                )?;
                if was_open {
                    applied.updated.push(uint(id));
                } else {
                    applied.raised.push(uint(id));
                }
            }
            None => {
                tx.execute(
                    "INSERT INTO events (kind, subject, severity, status, summary, first_seen_ms,
                     last_seen_ms, recovered_ms, dimensions, evidence)
                     VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?5, NULL, ?6, ?7)",
                    params![
                        kind,
                        f.subject,
                        f.severity.as_str(),
                        f.summary,
                        int(now_ms),
                        dimensions,
                        evidence
                    ],
                )?;
                applied.raised.push(uint(tx.last_insert_rowid()));
            }
        }
    }
    for kind in kinds {
        let stale: Vec<i64> = {
            let mut open =
                tx.prepare("SELECT id, subject FROM events WHERE kind = ?1 AND status = 'open'")?;
            let rows = open.query_map(params![kind.as_str()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .filter(|(_, subject)| {
                    !findings
                        .iter()
                        .any(|f| f.kind() == *kind && f.subject == *subject)
                })
                .map(|(id, _)| id)
                .collect()
        };
        for id in stale {
            tx.execute(
                "UPDATE events SET status = 'recovered', recovered_ms = ?2 WHERE id = ?1",
                params![id, int(now_ms)],
            )?;
            applied.recovered.push(uint(id));
        }
    }
    // Bounded: the oldest recovered events go first.
    tx.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = 'recovered'
         ORDER BY recovered_ms LIMIT max(0, (SELECT count(*) FROM events) - ?1))",
        params![int(max_events as u64)],
    )?;
    tx.commit()?;
    Ok(applied)
}

const COLUMNS: &str = "id, kind, subject, severity, status, summary, first_seen_ms, last_seen_ms,
                       recovered_ms, dimensions, evidence";

/// One row as an event; a kind, status or evidence this memlens cannot read is an error.
fn event(r: &Row<'_>) -> rusqlite::Result<Event> {
    let text = |idx: usize| r.get::<_, String>(idx);
    let first = uint(r.get(6)?);
    let last = uint(r.get(7)?);
    let recovered = r.get::<_, Option<i64>>(8)?.map(uint);
    let evidence: serde_json::Value =
        serde_json::from_str(&text(10)?).map_err(|e| corrupt(10, e))?;
    let evidence: Evidence =
        serde_json::from_value(serde_json::json!({ "kind": text(1)?, "evidence": evidence }))
            .map_err(|e| corrupt(10, e))?;
    Ok(Event {
        id: uint(r.get(0)?),
        subject: text(2)?,
        severity: text(3)?.parse().map_err(|e| corrupt(3, e))?,
        status: text(4)?.parse().map_err(|e| corrupt(4, e))?,
        summary: text(5)?,
        first_seen_unix_ms: first,
        last_seen_unix_ms: last,
        recovered_unix_ms: recovered,
        duration_seconds: recovered.unwrap_or(last).saturating_sub(first) as f64 / 1000.0,
        dimensions: serde_json::from_str::<Dimensions>(&text(9)?).map_err(|e| corrupt(9, e))?,
        evidence,
    })
}

impl Reader {
    /// Events, newest first, at most `limit`, optionally of one status and kind.
    pub fn events(
        &self,
        status: Option<Status>,
        kind: Option<EventKind>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = (|| {
            let mut query = self.conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events WHERE (?1 IS NULL OR status = ?1)
                 AND (?2 IS NULL OR kind = ?2) ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = query.query_map(
                params![
                    status.map(Status::as_str),
                    kind.map(EventKind::as_str),
                    int(limit as u64)
                ],
                event,
            )?;
            rows.collect::<rusqlite::Result<Vec<Event>>>()
        })();
        self.sql(rows)
    }

    /// One event.
    pub fn event(&self, id: u64) -> Result<Option<Event>, StoreError> {
        let found = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM events WHERE id = ?1"),
                params![int(id)],
                event,
            )
            .optional();
        self.sql(found)
    }

    /// Open events per kind (every kind, zero included), counted by the database.
    pub fn open_events(&self) -> Result<BTreeMap<EventKind, u64>, StoreError> {
        let counts = (|| {
            let mut query = self.conn.prepare_cached(
                "SELECT kind, count(*) FROM events WHERE status = 'open' GROUP BY kind",
            )?;
            let rows = query.query_map([], |r| {
                let kind: String = r.get(0)?;
                Ok((
                    kind.parse::<EventKind>().map_err(|e| corrupt(0, e))?,
                    uint(r.get(1)?),
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        let mut open: BTreeMap<EventKind, u64> = EventKind::ALL.iter().map(|k| (*k, 0)).collect();
        open.extend(self.sql(counts)?);
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use memlens_types::{
        event::Severity,
        evidence::{GrowthEvidence, GrowthMeasure, LimitSource, ReclaimSignals},
    };

    use super::*;

    fn finding(subject: &str) -> Finding {
        Finding {
            subject: subject.into(),
            severity: Severity::Warning,
            summary: "grows".into(),
            dimensions: Dimensions {
                host: "h".into(),
                cgroup: Some(subject.into()),
                ..Dimensions::default()
            },
            evidence: Evidence::LeakSuspected(Box::new(GrowthEvidence {
                cgroup: subject.into(),
                evaluated_at_unix_ms: 1,
                lookback_seconds: 60.0,
                horizon_seconds: 60.0,
                samples: 10,
                usage_bytes: 1,
                limit_bytes: 2,
                limit_source: LimitSource::Cgroup,
                threshold_bytes: 2,
                reason: "grows".into(),
                measure: GrowthMeasure::WorkingSet,
                measured_bytes: 1,
                growth_bytes_per_hour: 1.0,
                recent_growth_bytes_per_hour: 1.0,
                anon_growth_bytes_per_hour: 1.0,
                file_growth_bytes_per_hour: 0.0,
                rising_share: 1.0,
                reclaim: ReclaimSignals::default(),
                allowance: None,
                forecast_bytes: 2,
                time_to_threshold_seconds: None,
                time_to_limit_seconds: None,
                series: vec![(1, 1)],
                forecast: [(1, 1), (2, 2)],
                top_processes: Vec::new(),
                top_stacks: Vec::new(),
                allocation_stacks: Vec::new(),
                allocation_trace_hint: None,
                top_files: Vec::new(),
            })),
        }
    }

    #[test]
    fn events_are_deduplicated_recovered_and_reopened_within_the_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let kinds = [EventKind::LeakSuspected];
        let silence = Duration::from_secs(60);
        let a = store
            .apply(&kinds, &[finding("/a")], 1_000, silence, 100)
            .unwrap();
        assert_eq!(a.raised.len(), 1);
        let id = a.raised[0];
        // Seen again: the same event.
        let b = store
            .apply(&kinds, &[finding("/a")], 2_000, silence, 100)
            .unwrap();
        assert_eq!((b.raised.len(), b.updated.as_slice()), (0, &[id][..]));
        // Cleared: recovered, with its duration.
        let c = store.apply(&kinds, &[], 5_000, silence, 100).unwrap();
        assert_eq!(c.recovered, [id]);
        let reader = Reader::open(&path).unwrap();
        let e = reader.event(id).unwrap().unwrap();
        assert_eq!((e.status, e.duration_seconds), (Status::Recovered, 4.0));
        // Back within the silence period: the same event reopens.
        let d = store
            .apply(&kinds, &[finding("/a")], 30_000, silence, 100)
            .unwrap();
        assert_eq!(d.raised, [id]);
        store.apply(&kinds, &[], 40_000, silence, 100).unwrap();
        // Back after it: a new event.
        let e = store
            .apply(&kinds, &[finding("/a")], 200_000, silence, 100)
            .unwrap();
        assert_ne!(e.raised, [id]);
        // Other kinds are not touched by a run that does not cover them.
        store
            .apply(&[EventKind::AbnormalRestarts], &[], 210_000, silence, 100)
            .unwrap();
        assert_eq!(
            reader.events(Some(Status::Open), None, 10).unwrap().len(),
            1
        );
        assert_eq!(
            reader
                .events(None, Some(EventKind::LeakSuspected), 10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn the_oldest_recovered_events_go_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let kinds = [EventKind::LeakSuspected];
        for n in 0..5u64 {
            store
                .apply(
                    &kinds,
                    &[finding(&format!("/c{n}"))],
                    n * 10,
                    Duration::ZERO,
                    3,
                )
                .unwrap();
            store
                .apply(&kinds, &[], n * 10 + 1, Duration::ZERO, 3)
                .unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        let left = reader.events(None, None, 10).unwrap();
        assert_eq!(
            left.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
            ["/c4", "/c3", "/c2"]
        );
    }

    #[test]
    fn open_events_are_counted_by_kind_and_evidence_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let kinds = [EventKind::LeakSuspected];
        let raised = store
            .apply(
                &kinds,
                &[finding("/a"), finding("/b")],
                1,
                Duration::ZERO,
                10,
            )
            .unwrap();
        let reader = Reader::open(&path).unwrap();
        let open = reader.open_events().unwrap();
        assert_eq!(open[&EventKind::LeakSuspected], 2);
        assert_eq!(open[&EventKind::AbnormalRestarts], 0);
        let event = reader.event(raised.raised[0]).unwrap().unwrap();
        assert_eq!(event.evidence, finding("/a").evidence);
        // Evidence this memlens cannot read is an error, not a null.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE events SET evidence = '{\"usage\": 1}'", [])
            .unwrap();
        assert!(reader.event(raised.raised[0]).is_err());
        assert!(reader.events(None, None, 10).is_err());
    }
}
