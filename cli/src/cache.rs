//! `memlens cache`: the working set explained, and which files' page cache a cgroup holds.

use std::fmt::Write as _;

use anyhow::Result;
use memlens_types::{
    api::Cache,
    files::{CacheQuery, CacheResponse},
    text::printable,
    Bytes,
};

use crate::{args::CacheArgs, workload_name, Client};

pub async fn run(client: &Client, args: &CacheArgs) -> Result<()> {
    let response = client
        .request::<Cache>(&CacheQuery {
            cgroup: args.cgroup.clone(),
            pod: args.pod.clone(),
            top: usize::try_from(args.top).ok(),
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print!("{}", render(&response));
    }
    Ok(())
}

fn render(r: &CacheResponse) -> String {
    let mut out = String::new();
    for c in &r.cgroups {
        let name = workload_name(c.pod.as_ref(), &c.name, &c.path, false);
        if name == c.path {
            let _ = writeln!(out, "{name}\n  {}", printable(&c.diagnosis));
        } else {
            let _ = writeln!(
                out,
                "{name}  ({})\n  {}",
                printable(&c.path),
                printable(&c.diagnosis)
            );
        }
        let _ = writeln!(
            out,
            "  usage {} = anon {} + file {} (active {}, inactive {}; dirty {}, writeback {}; shmem {}) + kernel {}{}",
            Bytes(c.usage_bytes),
            Bytes(c.anon_bytes),
            Bytes(c.file_bytes),
            Bytes(c.active_file_bytes),
            Bytes(c.inactive_file_bytes),
            Bytes(c.file_dirty_bytes),
            Bytes(c.file_writeback_bytes),
            Bytes(c.shmem_bytes),
            Bytes(c.kernel_bytes),
            match (c.slab_reclaimable_bytes, c.slab_unreclaimable_bytes, c.sock_bytes) {
                (Some(r), Some(u), sock) => format!(
                    " (slab reclaimable {}, unreclaimable {}{})",
                    Bytes(r),
                    Bytes(u),
                    sock.map(|s| format!(", sockets {}", Bytes(s))).unwrap_or_default()
                ),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "  page cache by file: {} of {} attributed ({:.0}%), {} files",
            Bytes(c.attributed_bytes),
            Bytes(c.file_bytes),
            c.attributed_share * 100.0,
            c.cached_files
        );
        for f in &c.files {
            let _ = writeln!(
                out,
                "    {:>10}  {:>5.1}%  {}",
                Bytes(f.file.bytes).to_string(),
                f.share_of_file_cache * 100.0,
                printable(&f.file.display())
            );
        }
        out.push('\n');
    }
    if r.pairs_below_zero > 0 {
        let _ = writeln!(
            out,
            "({} files had page cache before memlens started, which is not attributed)",
            r.pairs_below_zero
        );
    }
    out
}
