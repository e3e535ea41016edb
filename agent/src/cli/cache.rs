//! `memlens cache`: the working set explained, and which files' page cache a cgroup holds.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use super::{top::encode, CacheArgs};
use crate::{
    api::{client, CacheResponse},
    units::Bytes,
};

pub async fn run(socket: &Path, args: &CacheArgs) -> Result<()> {
    let mut query = format!("top={}", args.top);
    if let Some(cgroup) = &args.cgroup {
        let _ = write!(query, "&cgroup={}", encode(cgroup));
    }
    if let Some(pod) = &args.pod {
        let _ = write!(query, "&pod={}", encode(pod));
    }
    let response: CacheResponse = client::get(socket, &format!("/v1/cache?{query}")).await?;
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
        let _ = writeln!(out, "{}\n  {}", c.name, c.diagnosis);
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
                f.file.display()
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
