//! `memlens history`: a cgroup's recorded memory over time.

use std::fmt::Write as _;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Cell, CellAlignment, Table};
use memlens_types::{api::History, history::HistoryQuery, text::printable, Bytes};

use crate::{args::HistoryArgs, Client};

pub async fn run(client: &Client, args: &HistoryArgs) -> Result<()> {
    let history = client
        .request::<History>(&HistoryQuery {
            cgroup: args.cgroup.clone(),
            since: Some(args.since),
            limit: usize::try_from(args.limit).ok(),
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "TIME (UTC)",
        "USAGE",
        "ANON",
        "FILE",
        "WORKING SET",
        "HELD (eBPF)",
        "LIMIT",
    ]);
    let right = |t: String| Cell::new(t).set_alignment(CellAlignment::Right);
    for s in &history.samples {
        table.add_row(vec![
            Cell::new(clock(s.ts_ms)),
            right(Bytes(s.usage_bytes).to_string()),
            right(Bytes(s.anon_bytes).to_string()),
            right(Bytes(s.file_bytes).to_string()),
            right(Bytes(s.working_set_bytes).to_string()),
            right(
                s.held_bytes
                    .map_or_else(|| "-".into(), |b| Bytes(b).to_string()),
            ),
            right(
                s.limit_bytes
                    .map_or_else(|| "-".into(), |b| Bytes(b).to_string()),
            ),
        ]);
    }
    let mut out = format!("{}\n", printable(&history.path));
    let _ = writeln!(out, "{table}");
    print!("{out}");
    Ok(())
}

/// `hh:mm:ss` of a Unix time in milliseconds (UTC).
pub(super) fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(super::clock(1_795_453_336_325), "17:02:16");
    }
}
