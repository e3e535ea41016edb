//! The machine: its base page size, its memory, and its mounts by device.

use std::collections::HashMap;

use memlens_types::PageSize;

/// The running system's base page size.
#[must_use]
pub fn page_size() -> PageSize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    PageSize(u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096))
}

/// `MemTotal` of `/proc/meminfo`, in bytes (None when unreadable).
#[must_use]
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total_in(&text)
}

fn mem_total_in(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
}

/// Mount points by device `(major, minor)`, from /proc/self/mountinfo (the first mount of each).
#[must_use]
pub fn mounts_by_device() -> HashMap<(u32, u32), String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mounts_in(&text))
        .unwrap_or_default()
}

fn mounts_in(mountinfo: &str) -> HashMap<(u32, u32), String> {
    let mut mounts = HashMap::new();
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(_), Some(dev), Some(_), Some(point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
            mounts
                .entry((major, minor))
                .or_insert_with(|| point.to_string());
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_mounts_from_their_files() {
        assert_eq!(
            mem_total_in("MemTotal:       24567412 kB\nMemFree: 1 kB\n"),
            Some(24_567_412 * 1024)
        );
        assert_eq!(mem_total_in("MemFree: 1 kB\n"), None);
        let mounts = mounts_in(
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
             23 22 254:0 /x /mnt rw - ext4 /dev/vda rw\n",
        );
        assert_eq!(mounts.get(&(254, 0)).map(String::as_str), Some("/"));
        assert!(page_size().0 >= 4096);
    }
}
