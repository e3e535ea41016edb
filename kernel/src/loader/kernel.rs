//! What the running kernel offers beyond what memlens needs, for `memlens status`: memlens
//! attaches only to tracepoints (raw and classic), so kprobes and fentry are optional extras a
//! node may or may not have, never requirements.

use std::path::Path;

/// One line: the kernel release, whether it has BTF, and whether kprobes exist.
#[must_use]
pub fn describe() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown release".to_string(), |r| r.trim().to_string());
    describe_with(&release, |p| Path::new(p).exists())
}

fn describe_with(release: &str, exists: impl Fn(&str) -> bool) -> String {
    let btf = if exists("/sys/kernel/btf/vmlinux") {
        "BTF"
    } else {
        "no BTF"
    };
    // The kprobe PMU is registered whenever the kernel has CONFIG_KPROBE_EVENTS.
    let kprobes = if exists("/sys/bus/event_source/devices/kprobe") {
        "kprobes available"
    } else {
        "no kprobes"
    };
    format!("{release}; {btf}; {kprobes}; memlens uses tracepoints only (kprobes and fentry not needed)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_there() {
        let line = describe_with("6.12.107+deb12-amd64", |_| true);
        assert_eq!(
            line,
            "6.12.107+deb12-amd64; BTF; kprobes available; memlens uses tracepoints only \
             (kprobes and fentry not needed)"
        );
        let line = describe_with("6.18.0", |p| p.contains("btf"));
        assert!(line.contains("; BTF; no kprobes;"), "{line}");
    }
}
