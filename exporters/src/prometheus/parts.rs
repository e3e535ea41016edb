//! An exposition in parts encoded apart and joined at the scrape: a snapshot's series encoded
//! once per snapshot, what changes between snapshots at each scrape. A part is kept in
//! OpenMetrics only, what Prometheus asks for (1.6 MiB for a node of 1,000 cgroups); a scrape
//! that asks for the classic text format gets it converted then, a few ms, rather than every
//! snapshot being held in both.

use super::{classic_text, Exposition};

/// OpenMetrics' end marker.
const EOF: &str = "# EOF\n";

impl Exposition {
    /// This exposition's series as one part of a larger one (see [`join`]); its families must
    /// not recur in the other parts.
    pub fn encode_part(&self) -> Result<Part, std::fmt::Error> {
        let mut openmetrics = self.encode()?;
        openmetrics.truncate(openmetrics.trim_end_matches(EOF).len());
        openmetrics.shrink_to_fit();
        Ok(Part { openmetrics })
    }
}

/// Series encoded apart from the rest of their exposition (OpenMetrics, without its end marker).
#[derive(Debug, Default)]
pub struct Part {
    openmetrics: String,
}

/// One exposition of `parts`: OpenMetrics (with its end marker) or the classic text format.
#[must_use]
pub fn join(parts: &[&Part], openmetrics: bool) -> String {
    let mut out =
        String::with_capacity(parts.iter().map(|p| p.openmetrics.len()).sum::<usize>() + 64);
    for part in parts {
        if openmetrics {
            out.push_str(&part.openmetrics);
        } else {
            out.push_str(&classic_text(&part.openmetrics));
        }
    }
    if openmetrics {
        out.push_str(EOF);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use memlens_types::{event::EventKind, files::CachedFile};

    use super::*;
    use crate::prometheus::{AgentFigures, ApiLatency};

    #[test]
    fn parts_encoded_apart_join_into_the_whole() {
        let file = |ino: u64| CachedFile {
            path: Some(format!("/var/log/app-{ino}.log")),
            deleted: false,
            dev: "254:0".into(),
            ino,
            mount: None,
            bytes: ino * 4096,
        };
        let (a, b) = (file(1), file(2));
        let files = [("/a", &a), ("/b", &b)];
        let events = BTreeMap::from([(EventKind::LeakSuspected, 2)]);
        let latency = ApiLatency::default();
        let mut whole = Exposition::new();
        whole.files(&files);
        whole.events(&events);
        whole.agent(&AgentFigures::default(), &latency);
        let whole = whole.encode().unwrap();
        let mut snapshot = Exposition::new();
        snapshot.files(&files);
        let mut live = Exposition::new();
        live.events(&events);
        live.agent(&AgentFigures::default(), &latency);
        let (snapshot, live) = (snapshot.encode_part().unwrap(), live.encode_part().unwrap());
        // A family's series come in its hash table's order: the same lines, in any order.
        let lines = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        let joined = join(&[&snapshot, &live], true);
        assert_eq!(lines(&joined), lines(&whole));
        assert!(joined.ends_with("\n# EOF\n"), "{joined}");
        assert_eq!(joined.matches("# EOF").count(), 1);
        assert_eq!(
            lines(&join(&[&snapshot, &live], false)),
            lines(&classic_text(&whole))
        );
    }
}
