//! The bench's settings (`--name value`).

use std::time::Duration;

/// The bench's settings (`--name value`).
pub(crate) struct Settings {
    pub(crate) minutes: u64,
    pub(crate) cgroups: usize,
    pub(crate) services: usize,
    pub(crate) held_kib: u64,
    pub(crate) churn_kib: u64,
    pub(crate) files: usize,
    pub(crate) file_kib: u64,
    pub(crate) short_lived: usize,
    pub(crate) oom_every: Duration,
    /// The memory limit of the agent's cgroup, in MiB: the DaemonSet's (deploy/memlens.yaml).
    pub(crate) agent_limit_mib: u64,
    /// Restart the agent halfway (kernel records kept).
    pub(crate) restart: bool,
}

impl Settings {
    pub(crate) fn parse() -> Result<Settings, String> {
        let mut s = Settings {
            minutes: 20,
            cgroups: 1000,
            services: 2,
            held_kib: 4096,
            churn_kib: 64,
            files: 5,
            file_kib: 64,
            short_lived: 3000,
            oom_every: Duration::from_secs(120),
            agent_limit_mib: 512,
            restart: true,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        for pair in args.chunks(2) {
            let [name, value] = pair else {
                return Err(format!("{} has no value", pair[0]));
            };
            let n: u64 = value.parse().map_err(|e| format!("{name} {value}: {e}"))?;
            let count = usize::try_from(n).map_err(|e| e.to_string())?;
            match name.as_str() {
                "--minutes" => s.minutes = n,
                "--cgroups" => s.cgroups = count,
                "--services" => s.services = count,
                "--held-kib" => s.held_kib = n,
                "--churn-kib" => s.churn_kib = n,
                "--files" => s.files = count,
                "--file-kib" => s.file_kib = n,
                "--short-lived" => s.short_lived = count,
                "--oom-every" => s.oom_every = Duration::from_secs(n.max(1)),
                "--agent-limit-mib" => s.agent_limit_mib = n,
                "--restart" => s.restart = n != 0,
                other => return Err(format!("unknown setting {other}")),
            }
        }
        Ok(s)
    }
}
