//! Kernel records kept across agent restarts.
//!
//! The maps the programs record into (the sampled-page records and their kernel stacks, the
//! page-cache counts, the counters, and the rings of process exits and of stack copies) and the
//! links that attach the programs are pinned in a BPF file system, in a directory named after
//! their layout: `<root>/v<version>-<hash>`, the hash over the records' sizes and the maps'
//! sizes. The programs stay attached while the agent is down, so a restarted agent finds every
//! sampled page's latest allocation on record (none stale), the page-cache counts whole, and the
//! exits, OOM kills and stack copies of the gap waiting in their rings. The new agent loads its
//! programs on the same maps, removes the old links (which detaches the old programs) and
//! attaches its own: the switch misses what happens during one attach call.
//!
//! A directory of another layout (another version, other map sizes), or one whose page program
//! was not kept attached (its records may be stale), is removed, detaching whatever it held, and
//! the agent starts afresh and says why (`memlens status`). `memlens unload` removes it all.

use std::{
    borrow::BorrowMut,
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapError},
    programs::{
        links::{FdLink, PinnedLink},
        RawTracePoint, TracePoint,
    },
};
use memlens_common::{
    counters::COUNTER_COUNT, filemap::FileKey, lifecycle::LifecycleEvent, page::PageAlloc,
    stack_copy::StackCopyHeader, PINNED_LAYOUT_VERSION,
};

/// Where the agent keeps its pins unless told otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/memlens";

/// Where the host's BPF file system is mounted by convention; mounted there when missing, as
/// `bpftool` does.
const BPFFS: &str = "/sys/fs/bpf";

/// The maps kept: those the agent reads what the programs recorded from.
pub(super) const KEPT_MAPS: [&str; 8] = [
    "PAGE_ALLOCS",
    "STACKS",
    "COUNTERS",
    "FILE_PAGES",
    "LIFECYCLE",
    "STACK_COPIES",
    AGENT_MAP,
    "PYTHON",
];

/// The map naming the agent's process, whose stacks the programs do not copy.
pub(super) const AGENT_MAP: &str = "AGENT";

/// Names this process as the agent in the agent map `<root>/<layout>` kept, if a previous agent
/// left one: its programs run on until this agent's replace them, and they copy the stack of
/// every process they are not told is the agent, this agent's start-up included (5 MiB of
/// copies in a restarted agent's first seconds, more than the ring holds). False when none is
/// kept.
pub(super) fn name_agent_in_kept(root: &Path, layout: &str) -> Result<bool, MapError> {
    let path = root.join(layout).join("maps").join(AGENT_MAP);
    if !path.exists() {
        return Ok(false);
    }
    let map = Map::from_map_data(MapData::from_pin(&path)?)?;
    name_agent(Array::try_from(map)?)?;
    Ok(true)
}

/// Writes this process's id into the agent map.
pub(super) fn name_agent<T: BorrowMut<MapData>>(mut map: Array<T, u32>) -> Result<(), MapError> {
    map.set(0, std::process::id(), 0)
}

/// The page program's link: without it kept, the kept records may be stale.
pub(super) const PAGE_LINK: &str = "page_alloc";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is not on a BPF file system ({1}); mount one (mount -t bpf bpf /sys/fs/bpf) or \
         pass --pin-dir none"
    )]
    NotBpffs(PathBuf, String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |e| PinError::Io(path.to_path_buf(), e)
}

/// What the map sizes depend on: with the records' sizes, the name of the pin directory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub sample_shift: u32,
    /// The records' sampled frames depend on it.
    pub sample_seed: u64,
    pub sample_entries: u64,
    pub stack_entries: u32,
    pub file_entries: u32,
    pub lifecycle_buffer: u32,
    pub stack_copy_buffer: u32,
}

impl Layout {
    /// `v<version>-<hash>`: any change of record or map size gives another name.
    pub(super) fn key(&self) -> String {
        let described = format!(
            "page {} file {} life {} copy {} counters {COUNTER_COUNT} shift {} seed {} entries {} \
             stacks {} files {} lifebuf {} copybuf {}",
            size_of::<PageAlloc>(),
            size_of::<FileKey>(),
            size_of::<LifecycleEvent>(),
            size_of::<StackCopyHeader>(),
            self.sample_shift,
            self.sample_seed,
            self.sample_entries,
            self.stack_entries,
            self.file_entries,
            self.lifecycle_buffer,
            self.stack_copy_buffer,
        );
        format!(
            "v{PINNED_LAYOUT_VERSION}-{:016x}",
            fnv1a(described.as_bytes())
        )
    }
}

/// FNV-1a: a hash that stays the same across builds and Rust versions.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How the agent's kernel records relate to a previous agent's: the facts `memlens status`
/// states.
#[derive(Clone, Debug, Default)]
pub struct PinReport {
    /// The directory of pins.
    pub dir: PathBuf,
    /// Whether the maps were a previous agent's, reused.
    pub resumed: bool,
    /// Why a previous agent's records were discarded, if they were.
    pub discarded: Option<String>,
    /// Programs that stay attached while the agent restarts.
    pub kept: Vec<String>,
    /// Programs that stop with the agent, and why.
    pub not_kept: Vec<String>,
}

/// The pin directory of this agent's layout, set up before the programs load.
pub(super) struct Pinning {
    report: PinReport,
    /// The pinned links, held while the agent runs.
    links: Vec<PinnedLink>,
}

impl Pinning {
    /// Makes `<root>/<layout>`, removing other layouts' directories and a directory whose
    /// records cannot be trusted.
    pub(super) fn prepare(root: &Path, layout: &str) -> Result<Pinning, PinError> {
        ensure_bpffs(root)?;
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut discarded = None;
        for entry in std::fs::read_dir(root).map_err(io(root))? {
            let entry = entry.map_err(io(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != layout {
                remove(&entry.path())?;
                discarded = Some(format!(
                    "the previous agent's maps had another layout ({name}, now {layout}: another \
                     version of memlens or other map sizes)"
                ));
            }
        }
        let dir = root.join(layout);
        let mut resumed = false;
        if dir.exists() {
            let missing = KEPT_MAPS
                .iter()
                .find(|m| !dir.join("maps").join(m).exists());
            let why = if !dir.join("links").join(PAGE_LINK).exists() {
                Some("the previous agent's page program was not kept attached".to_string())
            } else {
                missing.map(|m| format!("the previous agent's map {m} is missing"))
            };
            match why {
                Some(why) => {
                    remove(&dir)?;
                    discarded = Some(why);
                }
                None => resumed = true,
            }
        }
        for sub in ["maps", "links"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Pinning {
            report: PinReport {
                dir,
                resumed,
                discarded,
                kept: Vec::new(),
                not_kept: Vec::new(),
            },
            links: Vec::new(),
        })
    }

    /// Where map `name` is pinned.
    pub(super) fn map_path(&self, name: &str) -> PathBuf {
        self.report.dir.join("maps").join(name)
    }

    /// Removes the previous agent's links, which detaches its programs (nothing else holds
    /// them once it is gone); returns how many.
    pub(super) fn detach_previous(&self) -> Result<usize, PinError> {
        let links = self.report.dir.join("links");
        let mut n = 0;
        for entry in std::fs::read_dir(&links).map_err(io(&links))? {
            let path = entry.map_err(io(&links))?.path();
            std::fs::remove_file(&path).map_err(io(&path))?;
            n += 1;
        }
        Ok(n)
    }

    /// Pins the link `id` of raw tracepoint program `program`, attached to `tracepoint`.
    pub(super) fn keep_raw(
        &mut self,
        name: &str,
        program: &mut RawTracePoint,
        id: aya::programs::raw_trace_point::RawTracePointLinkId,
        tracepoint: &str,
    ) {
        let link = match program.take_link(id) {
            Ok(link) => FdLink::from(link),
            Err(e) => return self.not_kept(name, &e),
        };
        if let Err(e) = self.pin(name, link) {
            self.not_kept(name, &e);
            // The failed pin dropped the link: attach again, for this run.
            if let Err(e) = program.attach(tracepoint) {
                tracing::error!("{name} could not be attached again: {e}");
            }
        }
    }

    /// Pins the link `id` of classic tracepoint program `program`, attached to
    /// `category:tracepoint`, when the kernel made it a BPF link (5.15 and later).
    pub(super) fn keep_tracepoint(
        &mut self,
        name: &str,
        program: &mut TracePoint,
        id: aya::programs::trace_point::TracePointLinkId,
        (category, tracepoint): (&str, &str),
    ) {
        if !aya::features().bpf_perf_link() {
            self.report.not_kept.push(format!(
                "{name} (attached through perf_event, which cannot be pinned before Linux 5.15)"
            ));
            return;
        }
        let link = match program.take_link(id).map(FdLink::try_from) {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => {
                self.not_kept(name, &e);
                if let Err(e) = program.attach(category, tracepoint) {
                    tracing::error!("{name} could not be attached again: {e}");
                }
                return;
            }
            Err(e) => return self.not_kept(name, &e),
        };
        if let Err(e) = self.pin(name, link) {
            self.not_kept(name, &e);
            if let Err(e) = program.attach(category, tracepoint) {
                tracing::error!("{name} could not be attached again: {e}");
            }
        }
    }

    fn pin(&mut self, name: &str, link: FdLink) -> Result<(), aya::pin::PinError> {
        let pinned = link.pin(self.report.dir.join("links").join(name))?;
        self.links.push(pinned);
        self.report.kept.push(name.to_string());
        Ok(())
    }

    fn not_kept(&mut self, name: &str, why: &dyn std::fmt::Display) {
        tracing::warn!("{name} will stop with the agent: {why}");
        self.report.not_kept.push(format!("{name} ({why})"));
    }

    /// The report, and the links to hold while the agent runs.
    pub(super) fn finish(self) -> (PinReport, Vec<PinnedLink>) {
        (self.report, self.links)
    }
}

/// Removes a pin directory and everything pinned in it.
fn remove(dir: &Path) -> Result<(), PinError> {
    std::fs::remove_dir_all(dir).map_err(io(dir))
}

/// Removes every pin under `root` (`memlens unload`): the programs a stopped agent left attached
/// are detached and its maps freed. Returns whether there was anything to remove.
pub fn unload(root: &Path) -> Result<bool, PinError> {
    match std::fs::symlink_metadata(root) {
        Ok(_) => remove(root).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PinError::Io(root.to_path_buf(), e)),
    }
}

/// Whether `path` is on a BPF file system.
fn is_bpffs(path: &Path) -> Result<bool, std::io::Error> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a zeroed statfs is a valid out-buffer; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type == libc::BPF_FS_MAGIC)
}

/// Checks that `root` lies on a BPF file system (its nearest existing ancestor does); mounts one
/// at `/sys/fs/bpf` when `root` is under it and nothing is mounted there, as `bpftool` does.
fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let not_bpffs = |why: String| PinError::NotBpffs(root.to_path_buf(), why);
    if is_bpffs(existing).map_err(|e| not_bpffs(e.to_string()))? {
        return Ok(());
    }
    let conventional = Path::new(BPFFS);
    if !root.starts_with(conventional) || existing != conventional {
        return Err(not_bpffs(format!(
            "{} is not a BPF file system",
            existing.display()
        )));
    }
    let target = CString::new(BPFFS).map_err(|e| not_bpffs(e.to_string()))?;
    let kind = CString::new("bpf").map_err(|e| not_bpffs(e.to_string()))?;
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(not_bpffs(format!(
            "mounting one there failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted a BPF file system at {BPFFS}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            sample_shift: 7,
            sample_seed: 0x5eed,
            sample_entries: 51_201,
            stack_entries: 8192,
            file_entries: 131_072,
            lifecycle_buffer: 1 << 20,
            stack_copy_buffer: 1 << 22,
        }
    }

    #[test]
    fn any_size_change_gives_another_directory() {
        let base = layout().key();
        assert!(base.starts_with(&format!("v{PINNED_LAYOUT_VERSION}-")));
        assert_eq!(base, layout().key(), "stable");
        let mut other = layout();
        other.sample_shift = 6;
        other.sample_entries = 102_401;
        assert_ne!(other.key(), base);
        let mut other = layout();
        other.file_entries = 65_536;
        assert_ne!(other.key(), base);
        // Records sampled at other offsets are no use to the census.
        let mut other = layout();
        other.sample_seed += 1;
        assert_ne!(other.key(), base);
    }

    #[test]
    fn unloading_nothing_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!unload(&dir.path().join("absent")).unwrap());
    }
}
