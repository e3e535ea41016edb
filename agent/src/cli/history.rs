//! `memlens history`: a cgroup's recorded memory over time.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use comfy_table::{presets::NOTHING, Cell, CellAlignment, Table};

use super::{top::encode, HistoryArgs};
use crate::{
    api::{client, HistoryResponse},
    units::Bytes,
};

pub async fn run(socket: &Path, args: &HistoryArgs) -> Result<()> {
    let query = format!(
        "/v1/history?cgroup={}&since={}&limit={}",
        encode(&args.cgroup),
        encode(&args.since),
        args.limit
    );
    let history: HistoryResponse = client::get(socket, &query).await?;
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
    let mut out = format!("{}\n", history.path);
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
