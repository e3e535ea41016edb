//! `/proc/<pid>/maps`: a process' memory mappings; and from its stat line when the process
//! started and where its executable image lies.

use std::{io, os::unix::fs::MetadataExt};

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the file's device, and its inode (0 for anonymous mappings).
    pub dev: String,
    pub inode: u64,
    /// Path as the process sees it (may end in ` (deleted)`), or a pseudo name like `[stack]`.
    pub path: String,
    /// Where the agent can still open this very file once the process is gone (a descriptor
    /// it holds, `/proc/self/fd/N`), when it keeps one: names after exit even where the path
    /// cannot be checked to be the same file (overlay file systems report other device numbers
    /// to `stat` than in the maps).
    pub open_path: Option<String>,
}

impl Mapping {
    /// `/proc/<pid>/map_files/<start>-<end>`: the mapped file itself, even when deleted or in
    /// another mount namespace.
    #[must_use]
    pub fn map_file(&self, pid: u32) -> String {
        format!("/proc/{pid}/map_files/{:x}-{:x}", self.start, self.end)
    }

    /// The mapped file's [`FileKey`], read through process `pid`'s `map_files` link.
    pub fn file_key(&self, pid: u32) -> io::Result<FileKey> {
        let meta = std::fs::metadata(self.map_file(pid))?;
        Ok(FileKey {
            dev: self.dev.clone(),
            inode: self.inode,
            changed_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        })
    }

    /// File offset of address `addr` inside this mapping.
    #[must_use]
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }

    /// Short module name for display: the file name of the path.
    #[must_use]
    pub fn module_name(&self) -> String {
        let path = self.path.trim_end_matches(" (deleted)");
        path.rsplit('/').next().unwrap_or(path).to_string()
    }
}

/// A mapped file told apart from every other: its device and inode as the maps show them, and
/// when the inode last changed. A deleted file's inode goes to the next file created (a rebuilt
/// binary, a new container image's), where (device, inode) alone would name the old file's
/// tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: String,
    pub inode: u64,
    pub changed_ns: i64,
}

/// Parses the text of a maps file; malformed lines are skipped.
#[must_use]
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let dev = fields.next()?.to_string();
            let inode = fields.next()?.parse().ok()?;
            let path = fields.next().unwrap_or("").trim_start().to_string();
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                offset,
                dev,
                inode,
                path,
                open_path: None,
            })
        })
        .collect()
}

/// The mappings of process `pid`.
pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// The mapping containing `addr`.
#[must_use]
pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= addr && addr < m.end)
}

/// When process `pid` started, in nanoseconds since boot (CLOCK_MONOTONIC's epoch, like
/// `bpf_ktime_get_ns`, on machines that never suspended).
pub fn start_time_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_ticks(&stat)
        .map(|ticks| ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// Field 22 (`starttime`) of a stat line; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Where a process's executable image lies: its code (`startcode`, `endcode`) and the top of its
/// main thread's stack (`startstack`). Each exec (with address-space randomisation, even of the
/// same binary) gives a new one, where the pid and start time stay: what tells a cache of a
/// process's mappings that they belong to the image before an exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
}

/// The current [`Image`] of process `pid`.
pub fn image(pid: u32) -> io::Result<Image> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_image(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// Fields 26 to 28 of a stat line, counted after the command name's last `)`.
fn parse_image(stat: &str) -> Option<Image> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(23);
    let mut next = || fields.next()?.parse().ok();
    Some(Image {
        start_code: next()?,
        end_code: next()?,
        start_stack: next()?,
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_maps_file() {
        let maps = parse_maps(include_str!("../fixtures/proc-maps"));
        let libc = maps
            .iter()
            .find(|m| m.path.ends_with("libc.so.6") && m.executable)
            .expect("libc text mapping");
        assert!(libc.inode > 0 && libc.start < libc.end);
        assert_eq!(libc.module_name(), "libc.so.6");
        assert_eq!(libc.file_offset(libc.start + 0x10), libc.offset + 0x10);
        assert!(maps.iter().any(|m| m.path == "[stack]" && m.inode == 0));
        assert_eq!(find(&maps, libc.start + 1), Some(libc));
        assert_eq!(find(&maps, 0), None);
    }

    #[test]
    fn start_time_skips_odd_command_names() {
        let stat =
            "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_start_ticks(stat), Some(123_456));
        assert!(start_time_ns(std::process::id()).is_ok());
    }

    /// A stat line copied from a real process (`cat /proc/self/stat`).
    #[test]
    fn image_is_read_from_the_code_and_stack_fields() {
        let stat = "14760 (cat) R 14758 14758 13047 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 \
                    6680797 3133440 377 18446744073709551615 94636801327104 94636801346985 \
                    140724015714816 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94636801362992 \
                    94636801364608 94637588963328 140724015717081 140724015717101 \
                    140724015717101 140724015718379 0";
        assert_eq!(
            parse_image(stat),
            Some(Image {
                start_code: 94_636_801_327_104,
                end_code: 94_636_801_346_985,
                start_stack: 140_724_015_714_816,
            })
        );
        assert_eq!(parse_image("3 (x) R 1"), None);
        let own = image(std::process::id()).expect("own stat");
        let here = image_is_read_from_the_code_and_stack_fields as *const () as u64;
        assert!(own.start_code <= here && here < own.end_code, "{own:?}");
    }
}
