//! Events in the history database: raised, updated, reopened within the silence period,
//! recovered, and bounded; one open event per kind and subject, enforced by a unique index.

use std::time::Duration;

use rusqlite::{params, OptionalExtension as _, Row};

use super::event::{Dimensions, Event, EventKind, Finding, Severity, Status};
use crate::history::{Reader, Store, StoreError};

/// What applying one detector run changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events opened (new, or reopened within the silence period).
    pub raised: Vec<u64>,
    /// Open events seen again.
    pub updated: Vec<u64>,
    pub recovered: Vec<u64>,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Applies a run of the detectors covering `kinds`: each finding opens or updates the event of
/// its kind and subject; an open event of those kinds without a finding has recovered. An event
/// that recovered less than `silence` ago is reopened rather than a new one raised, so a
/// flapping condition stays one event.
pub fn apply(
    store: &mut Store,
    kinds: &[EventKind],
    findings: &[Finding],
    now_ms: u64,
    silence: Duration,
    max_events: usize,
) -> Result<Applied, StoreError> {
    let result = apply_sql(store, kinds, findings, now_ms, silence, max_events);
    store.sql(result)
}

fn apply_sql(
    store: &mut Store,
    kinds: &[EventKind],
    findings: &[Finding],
    now_ms: u64,
    silence: Duration,
    max_events: usize,
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    let tx = store.connection().transaction()?;
    let quiet_since =
        i(now_ms.saturating_sub(u64::try_from(silence.as_millis()).unwrap_or(u64::MAX)));
    for f in findings {
        let dimensions = serde_json::to_string(&f.dimensions).unwrap_or_default();
        let evidence = f.evidence.to_string();
        let open: Option<i64> = tx
            .query_row(
                "SELECT id FROM events WHERE kind = ?1 AND subject = ?2 AND status = 'open'",
                params![f.kind.as_str(), f.subject],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = open {
            tx.execute(
                "UPDATE events SET last_seen_ms = ?2, severity = ?3, summary = ?4, dimensions = ?5,
                 evidence = ?6 WHERE id = ?1",
                params![
                    id,
                    i(now_ms),
                    f.severity.as_str(),
                    f.summary,
                    dimensions,
                    evidence
                ],
            )?;
            applied.updated.push(u64::try_from(id).unwrap_or(0));
            continue;
        }
        let silenced: Option<i64> = tx
            .query_row(
                "SELECT id FROM events WHERE kind = ?1 AND subject = ?2 AND status = 'recovered'
                 AND recovered_ms >= ?3 ORDER BY recovered_ms DESC LIMIT 1",
                params![f.kind.as_str(), f.subject, quiet_since],
                |r| r.get(0),
            )
            .optional()?;
        let id = if let Some(id) = silenced {
            tx.execute(
                "UPDATE events SET status = 'open', recovered_ms = NULL, last_seen_ms = ?2,
                 severity = ?3, summary = ?4, dimensions = ?5, evidence = ?6 WHERE id = ?1",
                params![
                    id,
                    i(now_ms),
                    f.severity.as_str(),
                    f.summary,
                    dimensions,
                    evidence
                ],
            )?;
            id
        } else {
            tx.execute(
                "INSERT INTO events (kind, subject, severity, status, summary, first_seen_ms,
                 last_seen_ms, recovered_ms, dimensions, evidence)
                 VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?5, NULL, ?6, ?7)",
                params![
                    f.kind.as_str(),
                    f.subject,
                    f.severity.as_str(),
                    f.summary,
                    i(now_ms),
                    dimensions,
                    evidence
                ],
            )?;
            tx.last_insert_rowid()
        };
        applied.raised.push(u64::try_from(id).unwrap_or(0));
    }
    for kind in kinds {
        let mut open =
            tx.prepare("SELECT id, subject FROM events WHERE kind = ?1 AND status = 'open'")?;
        let stale: Vec<i64> = open
            .query_map(params![kind.as_str()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .filter_map(Result::ok)
            .filter(|(_, subject)| {
                !findings
                    .iter()
                    .any(|f| f.kind == *kind && f.subject == *subject)
            })
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            tx.execute(
                "UPDATE events SET status = 'recovered', recovered_ms = ?2 WHERE id = ?1",
                params![id, i(now_ms)],
            )?;
            applied.recovered.push(u64::try_from(id).unwrap_or(0));
        }
    }
    // Bounded: the oldest recovered events go first.
    tx.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = 'recovered'
         ORDER BY recovered_ms LIMIT max(0, (SELECT count(*) FROM events) - ?1))",
        params![i(max_events as u64)],
    )?;
    tx.commit()?;
    Ok(applied)
}

const COLUMNS: &str = "id, kind, subject, severity, status, summary, first_seen_ms, last_seen_ms,
                       recovered_ms, dimensions, evidence";

fn event(r: &Row<'_>) -> rusqlite::Result<Event> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let text = |idx: usize| r.get::<_, String>(idx);
    let bad = |idx: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    };
    let first = u(r.get(6)?);
    let last = u(r.get(7)?);
    let recovered = r.get::<_, Option<i64>>(8)?.map(u);
    Ok(Event {
        id: u(r.get(0)?),
        kind: text(1)?.parse::<EventKind>().map_err(|e| bad(1, e))?,
        subject: text(2)?,
        severity: text(3)?.parse::<Severity>().map_err(|e| bad(3, e))?,
        status: text(4)?.parse::<Status>().map_err(|e| bad(4, e))?,
        summary: text(5)?,
        first_seen_unix_ms: first,
        last_seen_unix_ms: last,
        recovered_unix_ms: recovered,
        duration_seconds: recovered.unwrap_or(last).saturating_sub(first) as f64 / 1000.0,
        dimensions: serde_json::from_str::<Dimensions>(&text(9)?).unwrap_or_default(),
        evidence: serde_json::from_str(&text(10)?).unwrap_or(serde_json::Value::Null),
    })
}

/// Events, newest first, at most `limit`, optionally of one status and kind.
pub fn list(
    reader: &Reader,
    status: Option<Status>,
    kind: Option<EventKind>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let rows = (|| {
        let mut query = reader.connection().prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE (?1 IS NULL OR status = ?1)
             AND (?2 IS NULL OR kind = ?2) ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = query.query_map(
            params![
                status.map(Status::as_str),
                kind.map(EventKind::as_str),
                i(limit as u64)
            ],
            event,
        )?;
        rows.collect::<rusqlite::Result<Vec<Event>>>()
    })();
    reader.sql(rows)
}

/// One event.
pub fn get(reader: &Reader, id: u64) -> Result<Option<Event>, StoreError> {
    let found = reader
        .connection()
        .query_row(
            &format!("SELECT {COLUMNS} FROM events WHERE id = ?1"),
            params![i(id)],
            event,
        )
        .optional();
    reader.sql(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(subject: &str) -> Finding {
        Finding {
            kind: EventKind::LeakSuspected,
            subject: subject.into(),
            severity: Severity::Warning,
            summary: "grows".into(),
            dimensions: Dimensions {
                host: "h".into(),
                cgroup: Some(subject.into()),
                ..Dimensions::default()
            },
            evidence: serde_json::json!({"growth_bytes_per_hour": 1}),
        }
    }

    #[test]
    fn events_are_deduplicated_recovered_and_reopened_within_the_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let kinds = [EventKind::LeakSuspected];
        let silence = Duration::from_secs(60);
        let a = apply(&mut store, &kinds, &[finding("/a")], 1_000, silence, 100).unwrap();
        assert_eq!(a.raised.len(), 1);
        let id = a.raised[0];
        // Seen again: the same event.
        let b = apply(&mut store, &kinds, &[finding("/a")], 2_000, silence, 100).unwrap();
        assert_eq!((b.raised.len(), b.updated.as_slice()), (0, &[id][..]));
        // Cleared: recovered, with its duration.
        let c = apply(&mut store, &kinds, &[], 5_000, silence, 100).unwrap();
        assert_eq!(c.recovered, [id]);
        let reader = Reader::open(&path).unwrap();
        let e = get(&reader, id).unwrap().unwrap();
        assert_eq!((e.status, e.duration_seconds), (Status::Recovered, 4.0));
        // Back within the silence period: the same event reopens.
        let d = apply(&mut store, &kinds, &[finding("/a")], 30_000, silence, 100).unwrap();
        assert_eq!(d.raised, [id]);
        apply(&mut store, &kinds, &[], 40_000, silence, 100).unwrap();
        // Back after it: a new event.
        let e = apply(&mut store, &kinds, &[finding("/a")], 200_000, silence, 100).unwrap();
        assert_ne!(e.raised, [id]);
        // Other kinds are not touched by a run that does not cover them.
        apply(
            &mut store,
            &[EventKind::AbnormalRestarts],
            &[],
            210_000,
            silence,
            100,
        )
        .unwrap();
        assert_eq!(
            list(&reader, Some(Status::Open), None, 10).unwrap().len(),
            1
        );
        assert_eq!(
            list(&reader, None, Some(EventKind::LeakSuspected), 10)
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
            apply(
                &mut store,
                &kinds,
                &[finding(&format!("/c{n}"))],
                n * 10,
                Duration::ZERO,
                3,
            )
            .unwrap();
            apply(&mut store, &kinds, &[], n * 10 + 1, Duration::ZERO, 3).unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        let left = list(&reader, None, None, 10).unwrap();
        assert_eq!(
            left.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
            ["/c4", "/c3", "/c2"]
        );
    }
}
