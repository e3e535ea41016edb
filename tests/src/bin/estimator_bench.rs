//! `memlens-estimator-bench` (run by `cargo xtask bench estimator`): how often the held-page
//! estimate's stated 95% interval contains the kernel's own figure.
//!
//! Each round starts one workload per class, each in a memory cgroup of its own and all at once
//! (their pages interleave, as on a node), waits until they hold their memory and the agent has
//! taken two censuses since, and compares each cgroup's estimate with `memory.stat` read in the
//! same refresh (the `top` row's anon for anonymous memory, its file for page cache); then ends
//! every workload and removes its cgroup and files. Each round has an agent of its own with a
//! random `--sample-seed`: the frames a round's workloads get are much the same as the last
//! round's (the allocator hands back what was just freed), so the rounds' independent draws are
//! the sampled offsets, which is what the interval's 95% is over.
//!
//! `--rounds N` (default 60), `--sample-shift S` (repeatable; default 7, the agent's), `--runs
//! FILE`: every comparison as a CSV line (rate, class, kernel's bytes, estimate, half-width,
//! sampled frames).
//! Needs root; everything it starts is stopped and every cgroup removed at the end.

use std::collections::BTreeMap;

use memlens_tests::{Agent, TestCgroup, Workload, MIB};

/// Which of the row's kernel counters a class is compared with.
#[derive(Clone, Copy)]
enum Kind {
    Anon,
    File,
}

/// One kind of workload, started once per round.
struct Class {
    name: &'static str,
    kind: Kind,
    /// `memlens-workload` arguments; `{file}` stands for a fresh file of the round.
    args: &'static [&'static str],
}

const fn class(name: &'static str, kind: Kind, args: &'static [&'static str]) -> Class {
    Class { name, kind, args }
}

const CLASSES: &[Class] = &[
    class("anon 1 MiB", Kind::Anon, &["anon", "1"]),
    class("anon 4 MiB", Kind::Anon, &["anon", "4"]),
    class("anon 16 MiB", Kind::Anon, &["anon", "16"]),
    class("anon 64 MiB", Kind::Anon, &["anon", "64"]),
    class("anon 256 MiB", Kind::Anon, &["anon", "256"]),
    class("anon 1 GiB", Kind::Anon, &["anon", "1024"]),
    class(
        "anon 16 MiB, every other page",
        Kind::Anon,
        &["anon-frag", "16"],
    ),
    class(
        "anon 128 MiB, every other page",
        Kind::Anon,
        &["anon-frag", "128"],
    ),
    class("anon 64 MiB, huge pages", Kind::Anon, &["anon-thp", "64"]),
    class(
        "page cache 8 MiB",
        Kind::File,
        &["writefile", "{file}", "8"],
    ),
    class(
        "page cache 128 MiB",
        Kind::File,
        &["writefile", "{file}", "128"],
    ),
];

/// One comparison: the estimate, its stated half-width, the kernel's figure.
struct Outcome {
    estimate: u64,
    error95: u64,
    truth: u64,
    frames: u64,
}

impl Outcome {
    fn covered(&self) -> bool {
        self.estimate.abs_diff(self.truth) <= self.error95
    }

    fn relative_error(&self) -> f64 {
        (self.estimate as f64 - self.truth as f64) / (self.truth as f64).max(1.0)
    }
}

/// The bench's settings.
struct Settings {
    rounds: usize,
    shifts: Vec<u32>,
    runs: Option<std::path::PathBuf>,
}

fn parse() -> Result<Settings, String> {
    let mut rounds = 60;
    let mut shifts = Vec::new();
    let mut runs = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [name, value] = pair else {
            return Err(format!("{} has no value", pair[0]));
        };
        match name.as_str() {
            "--rounds" => {
                rounds = value
                    .parse()
                    .map_err(|e| format!("--rounds {value}: {e}"))?
            }
            "--sample-shift" => shifts.push(
                value
                    .parse()
                    .map_err(|e| format!("--sample-shift {value}: {e}"))?,
            ),
            "--runs" => runs = Some(value.into()),
            other => return Err(format!("unknown setting {other}")),
        }
    }
    if shifts.is_empty() {
        shifts.push(7);
    }
    Ok(Settings {
        rounds,
        shifts,
        runs,
    })
}

fn main() {
    let Settings {
        rounds,
        shifts,
        runs,
    } = match parse() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("memlens-estimator-bench: {e}");
            std::process::exit(2);
        }
    };
    // Page cache written on the disk-backed file system the tests use, not tmpfs (whose pages
    // are shmem, counted as anon on v1 and file on v2).
    let files = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    let mut csv = runs.map(|path| {
        std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
    });
    println!(
        "| rate | workload | runs | interval held | median error | worst error / half-width | no frame |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &shift in &shifts {
        let mut outcomes: BTreeMap<usize, Vec<Outcome>> = BTreeMap::new();
        for round in 0..rounds {
            let seed = random_seed().to_string();
            let agent =
                Agent::start(&["--sample-shift", &shift.to_string(), "--sample-seed", &seed]);
            for (class, outcome) in one_round(&agent, files.path(), round) {
                if let Some(csv) = &mut csv {
                    use std::io::Write as _;
                    let o = &outcome;
                    writeln!(
                        csv,
                        "{shift},{},{},{},{},{}",
                        CLASSES[class].name.replace(',', ";"),
                        o.truth,
                        o.estimate,
                        o.error95,
                        o.frames
                    )
                    .expect("write the runs file");
                }
                outcomes.entry(class).or_default().push(outcome);
            }
            if (round + 1) % 10 == 0 {
                eprintln!("1 in {}: {} of {rounds} rounds", 1u64 << shift, round + 1);
            }
        }
        report(shift, &outcomes);
    }
}

/// A seed from the kernel's random pool.
fn random_seed() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    u64::from_ne_bytes(bytes)
}

/// Starts every class once, compares, cleans up.
fn one_round(agent: &Agent, files: &std::path::Path, round: usize) -> Vec<(usize, Outcome)> {
    let mut running = Vec::new();
    for (i, class) in CLASSES.iter().enumerate() {
        let cgroup = TestCgroup::new(&format!("estimator{i}"));
        let file = files.join(format!("round{round}-class{i}"));
        let file_arg = file.to_string_lossy().into_owned();
        let args: Vec<&str> = class
            .args
            .iter()
            .map(|&a| if a == "{file}" { file_arg.as_str() } else { a })
            .collect();
        let workload = Workload::start(&cgroup, &args);
        running.push((i, cgroup, workload, file));
    }
    for (i, _, workload, _) in &mut running {
        let expected = match CLASSES[*i].kind {
            Kind::Anon => "ready",
            Kind::File => "written",
        };
        workload.expect_line(expected);
    }
    agent.wait_censuses(2);
    let top = agent.top();
    let rows = top["cgroups"].as_array().cloned().unwrap_or_default();
    let mut outcomes = Vec::new();
    for (i, cgroup, workload, file) in &mut running {
        let row = rows.iter().find(|r| r["path"] == cgroup.path.as_str());
        if let Some(row) = row {
            let (truth, held) = match CLASSES[*i].kind {
                Kind::Anon => ("anon_bytes", "anon_bytes"),
                Kind::File => ("file_bytes", "file_bytes"),
            };
            let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            outcomes.push((
                *i,
                Outcome {
                    estimate: number(&row["held"][held]),
                    error95: number(&row["held"]["error95_bytes"]),
                    truth: number(&row[truth]),
                    frames: number(&row["held"]["frames"]),
                },
            ));
        } else {
            eprintln!("round {round}: {} not listed", cgroup.path);
        }
        workload.stop();
        let _ = std::fs::remove_file(file);
        cgroup.remove();
    }
    outcomes
}

fn report(shift: u32, outcomes: &BTreeMap<usize, Vec<Outcome>>) {
    let (mut all, mut all_covered) = (0, 0);
    for (&class, runs) in outcomes {
        let covered = runs.iter().filter(|o| o.covered()).count();
        let mut errors: Vec<f64> = runs.iter().map(|o| o.relative_error().abs()).collect();
        errors.sort_by(f64::total_cmp);
        let median = errors.get(errors.len() / 2).copied().unwrap_or(f64::NAN);
        let worst = runs
            .iter()
            .map(|o| o.estimate.abs_diff(o.truth) as f64 / (o.error95 as f64).max(1.0))
            .fold(0.0, f64::max);
        let no_frame = runs.iter().filter(|o| o.frames == 0).count();
        let truth = runs.iter().map(|o| o.truth).sum::<u64>() / runs.len().max(1) as u64;
        println!(
            "| 1 in {} | {} ({:.1} MiB) | {} | {:.1}% | {:.1}% | {:.2} | {} |",
            1u64 << shift,
            CLASSES[class].name,
            truth as f64 / MIB as f64,
            runs.len(),
            100.0 * covered as f64 / runs.len().max(1) as f64,
            100.0 * median,
            worst,
            no_frame
        );
        all += runs.len();
        all_covered += covered;
    }
    println!(
        "| 1 in {} | all | {all} | {:.1}% | | | |",
        1u64 << shift,
        100.0 * all_covered as f64 / all.max(1) as f64
    );
}
