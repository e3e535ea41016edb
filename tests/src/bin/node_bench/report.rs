//! The report: the samples as a table, then the measures against the targets.

use crate::{sample::Sample, settings::Settings};

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

pub(crate) fn report(
    s: &Settings,
    samples: &[Sample],
    restart_at_s: u64,
    peaks: &[(&str, u64)],
    leaks_ms: &[f64],
    short_lived: usize,
    ooms: usize,
) {
    println!(
        "## Busy node: {} cgroups, {} long-lived and {short_lived} short-lived processes, {ooms} \
         OOM kills, {} min",
        s.cgroups,
        s.cgroups * s.services,
        s.minutes
    );
    println!();
    println!("| time | RSS | of which mapped BPF maps | peak RSS | heap | CPU | BPF maps | census (every) | stacks (kernel map) | /metrics | top | SQLite | drops |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in samples.iter().step_by(4) {
        println!("{}", x.row());
    }
    println!();
    // Steady: from a minute after each start of the agent.
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.at_s >= 60 && !(restart_at_s..restart_at_s + 60).contains(&x.at_s))
        .collect();
    let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { steady.iter().map(|x| f(x)).collect() };
    let rss = col(&|x| x.rss_kib as f64 / 1024.0);
    let rss_unmapped = col(&|x| x.rss_kib.saturating_sub(x.mapped_maps_kib) as f64 / 1024.0);
    let cpu = col(&|x| x.cpu_pct);
    let all = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { samples.iter().map(f).collect() };
    let scrape = all(&|x| x.scrape_ms);
    let top = all(&|x| x.top_ms);
    let maps = all(&|x| x.maps_kib as f64 / 1024.0);
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| agent RSS, steady (median, max) | {:.0} MiB, {:.0} MiB | <= 100 MiB |",
        percentile(&rss, 0.5),
        percentile(&rss, 1.0)
    );
    println!(
        "| agent RSS without its mappings of BPF maps (counted under BPF maps), steady (median, \
         max) | {:.0} MiB, {:.0} MiB | |",
        percentile(&rss_unmapped, 0.5),
        percentile(&rss_unmapped, 1.0)
    );
    for (what, peak) in peaks {
        println!("| peak RSS, {what} | {} MiB | <= 150 MiB |", peak / 1024);
    }
    println!(
        "| BPF maps (max) | {:.1} MiB | <= 32 MiB |",
        percentile(&maps, 1.0)
    );
    println!(
        "| agent CPU, steady (mean, median, p90 of 15 s samples) | {:.2}%, {:.2}%, {:.2}% of one \
         core | <= 2% |",
        cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.9)
    );
    println!(
        "| /metrics (p50, p99) | {:.0} ms, {:.0} ms | p99 <= 100 ms |",
        percentile(&scrape, 0.5),
        percentile(&scrape, 0.99)
    );
    println!(
        "| top (p50, p99) | {:.0} ms, {:.0} ms | p99 <= 50 ms |",
        percentile(&top, 0.5),
        percentile(&top, 0.99)
    );
    println!(
        "| `leaks --top 10` (CLI, p50, max) | {:.0} ms, {:.0} ms | |",
        percentile(leaks_ms, 0.5),
        percentile(leaks_ms, 1.0)
    );
    if let Some(x) = samples.last() {
        println!(
            "| at the end: census, stacks, SQLite, drops | {} ms, {}, {:.1} MiB, {} | no drops |",
            x.census_ms,
            x.stacks,
            x.db_kib as f64 / 1024.0,
            x.drops
        );
    }
}
