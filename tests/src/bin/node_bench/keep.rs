//! What the bench keeps of each agent for a later look: its `memlens status`, its log and its
//! memory map summary, at the end of each agent's run and when its RSS jumps (a single 15 s
//! sample once reached 201 MiB, and nothing was left to say why).

use std::path::PathBuf;

use memlens_tests::Agent;

/// RSS jumps kept per run, at most.
const MAX_JUMPS: usize = 3;
/// A sample this much above the previous one, or above this, is a jump.
const JUMP_KIB: u64 = 40 << 10;
const SPIKE_KIB: u64 = 150 << 10;

/// Where the kept files go (`MEMLENS_BENCH_KEEP`, set by `cargo xtask bench node`), and the
/// jumps kept so far.
pub(crate) struct Keeper {
    dir: Option<PathBuf>,
    jumps: usize,
}

impl Keeper {
    pub(crate) fn from_env() -> Keeper {
        let dir = std::env::var_os("MEMLENS_BENCH_KEEP").map(PathBuf::from);
        if let Some(dir) = &dir {
            // Only this run's agents: an earlier run's jumps would read as this one's.
            let _ = std::fs::remove_dir_all(dir);
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("cannot keep the agents' state in {}: {e}", dir.display());
            }
        }
        Keeper { dir, jumps: 0 }
    }

    /// Keeps the agent's state as `<name>.*`.
    pub(crate) fn keep(&self, agent: &Agent, name: &str) {
        if self.dir.is_none() {
            return;
        }
        let status = agent.cli(&["status"]);
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", agent.pid()))
            .unwrap_or_default();
        let files = [
            (
                "status.txt",
                String::from_utf8_lossy(&status.stdout).into_owned(),
            ),
            ("log", agent.log()),
            ("smaps_rollup", smaps),
        ];
        for (suffix, text) in files {
            self.keep_text(name, suffix, &text);
        }
    }

    /// Keeps `text` as `<name>.<suffix>`.
    pub(crate) fn keep_text(&self, name: &str, suffix: &str, text: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(format!("{name}.{suffix}"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }

    /// Keeps the agent's state when its RSS jumped from `before_kib` to `now_kib`.
    pub(crate) fn on_sample(&mut self, agent: &Agent, at_s: u64, before_kib: u64, now_kib: u64) {
        let jumped = now_kib > SPIKE_KIB || now_kib > before_kib + JUMP_KIB;
        if jumped && self.jumps < MAX_JUMPS && before_kib > 0 {
            self.jumps += 1;
            eprintln!(
                "agent RSS {} -> {} MiB at {at_s} s: its state kept",
                before_kib >> 10,
                now_kib >> 10
            );
            self.keep(agent, &format!("jump-{at_s}s"));
        }
    }

    pub(crate) fn dir(&self) -> Option<&PathBuf> {
        self.dir.as_ref()
    }
}
