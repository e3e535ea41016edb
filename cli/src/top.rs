//! `memlens top`: cgroups by usage, once or live.

use std::fmt::Write as _;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Cell, CellAlignment, Table};
use memlens_types::{
    api::Top,
    cgroups::{TopQuery, TopResponse, MAX_TOP_ROWS},
    text::printable,
    Bytes,
};

use crate::{args::TopArgs, workload_name, Client};

pub async fn run(client: &Client, args: &TopArgs) -> Result<()> {
    let query = TopQuery {
        limit: Some(if args.limit == 0 {
            MAX_TOP_ROWS
        } else {
            args.limit
        }),
        cgroup: args.cgroup.clone(),
    };
    loop {
        let top = client.request::<Top>(&query).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&top)?);
        } else {
            if args.watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&top, args.paths));
        }
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn render(top: &TopResponse, paths: bool) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "CGROUP",
        "USAGE",
        "ANON",
        "FILE",
        "ACT/INACT FILE",
        "KERNEL",
        "WORKING SET",
        "LIMIT",
        "HELD (eBPF)",
    ]);
    for row in &top.cgroups {
        let held = row.held.as_ref().map_or_else(
            || "-".to_string(),
            |h| format!("{} ±{}", Bytes(h.bytes), Bytes(h.error95_bytes)),
        );
        table.add_row(vec![
            Cell::new(workload_name(row.pod.as_ref(), &row.name, &row.path, paths)),
            right(Bytes(row.usage_bytes).to_string()),
            right(Bytes(row.anon_bytes).to_string()),
            right(Bytes(row.file_bytes).to_string()),
            right(format!(
                "{} / {}",
                Bytes(row.active_file_bytes),
                Bytes(row.inactive_file_bytes)
            )),
            right(Bytes(row.kernel_bytes).to_string()),
            right(Bytes(row.working_set_bytes).to_string()),
            right(
                row.limit_bytes
                    .map_or_else(|| "-".into(), |l| Bytes(l).to_string()),
            ),
            right(held),
            Cell::new(row.top_file.as_ref().map_or_else(
                || "-".to_string(),
                |f| {
                    format!(
                        "{} {}",
                        Bytes(f.bytes),
                        short_path(&printable(&f.display()))
                    )
                },
            )),
        ]);
    }
    let mut out = table.to_string();
    out.push('\n');
    let _ = writeln!(
        out,
        "{} cgroups{}; held = eBPF estimate from 1 page in {} (±: 95% interval)",
        top.cgroups.len(),
        if top.truncated > 0 {
            format!(" (+{} not shown: --limit 0 for all)", top.truncated)
        } else {
            String::new()
        },
        1u64 << top.sample_shift
    );
    out
}

/// The last 32 characters of a path, so the table stays readable.
fn short_path(path: &str) -> String {
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= 32 {
        return path.to_string();
    }
    format!(
        "...{}",
        chars[chars.len() - 29..].iter().collect::<String>()
    )
}

fn right(text: String) -> Cell {
    Cell::new(text).set_alignment(CellAlignment::Right)
}
