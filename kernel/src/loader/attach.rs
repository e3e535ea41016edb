//! Attaching the programs, with the fallbacks each capability has, and why one is missing.

use aya::{
    programs::{RawTracePoint, TracePoint},
    Ebpf,
};
use core::mem::offset_of;

use memlens_common::{
    filemap::FilemapRecord, lifecycle::LifecycleOffsets, page::AllocTracepointFields,
};

use super::{
    btf, ebpf_err,
    pinning::{Pinning, PAGE_LINK},
    tracefs, LoadError,
};

/// Why a capability's probes are not attached: the agent runs without it and `memlens status`
/// says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Struct offsets the programs need are not in the running kernel's BTF.
    #[error("offsets unknown: {0}")]
    Offsets(String),
    /// A tracepoint's format (field offsets) could not be read from tracefs.
    #[error("{0}")]
    Tracefs(String),
    /// The embedded object lacks a program (a build problem).
    #[error("program {0} is missing from the embedded object")]
    MissingProgram(&'static str),
    /// The kernel refused to load or attach a program.
    #[error("{tracepoint}: {why}")]
    Attach { tracepoint: String, why: String },
}

impl ProbeError {
    pub(super) fn offsets(e: btf::BtfError) -> ProbeError {
        ProbeError::Offsets(e.to_string())
    }
}

impl From<tracefs::TracefsError> for ProbeError {
    fn from(e: tracefs::TracefsError) -> ProbeError {
        ProbeError::Tracefs(e.to_string())
    }
}

/// Loads `program` of `ebpf` as a `P` and attaches it with `attach`, naming `tracepoint` in
/// errors.
fn load_and_attach<P>(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &str,
    attach: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), ProbeError>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: LoadProgram,
{
    let failed = |e: &dyn std::fmt::Display| ProbeError::Attach {
        tracepoint: tracepoint.to_string(),
        why: ebpf_err("probe", e).to_string(),
    };
    let p: &mut P = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|e| failed(&e))?;
    p.load_program().map_err(|e| failed(&e))?;
    attach(p).map_err(|e| failed(&e))
}

/// The `load` of the program types attached here.
trait LoadProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl LoadProgram for TracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl LoadProgram for RawTracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// Attaches raw tracepoint program `p` to `tracepoint`, its link pinned as `name` when the
/// agent keeps its programs across restarts.
fn attach_raw(
    p: &mut RawTracePoint,
    name: &str,
    tracepoint: &str,
    pins: Option<&mut Pinning>,
) -> Result<(), aya::programs::ProgramError> {
    let id = p.attach(tracepoint)?;
    if let Some(pins) = pins {
        pins.keep_raw(name, p, id, tracepoint);
    }
    Ok(())
}

/// Attaches classic tracepoint program `p` to `category:tracepoint`, its link pinned as `name`
/// when the agent keeps its programs across restarts.
fn attach_tracepoint(
    p: &mut TracePoint,
    name: &str,
    (category, tracepoint): (&str, &str),
    pins: Option<&mut Pinning>,
) -> Result<(), aya::programs::ProgramError> {
    let id = p.attach(category, tracepoint)?;
    if let Some(pins) = pins {
        pins.keep_tracepoint(name, p, id, (category, tracepoint));
    }
    Ok(())
}

/// Field offsets of the classic tracepoint, from its format file.
pub(super) fn tracepoint_fields() -> Result<AllocTracepointFields, ProbeError> {
    let root = tracefs::root()?;
    let format = tracefs::Format::read(&root, "kmem", "mm_page_alloc")?;
    let field = |name| format.field(name).map(|f| f.offset);
    Ok(AllocTracepointFields {
        pfn: field("pfn")?,
        order: field("order")?,
        gfp_flags: field("gfp_flags")?,
        reserved: 0,
    })
}

/// Attaches the raw tracepoint if `vmemmap_base` is known, else the classic tracepoint; returns
/// the attachment, and why the raw tracepoint was not used when it was not.
pub(super) fn page_alloc(
    ebpf: &mut Ebpf,
    have_base: bool,
    tracefs_error: Option<&ProbeError>,
    calibration_error: Option<&LoadError>,
    mut pins: Option<&mut Pinning>,
) -> Result<(String, Option<String>), LoadError> {
    let mut raw_error = calibration_error.map(ToString::to_string);
    if have_base {
        let program: &mut RawTracePoint = ebpf
            .program_mut("page_alloc_raw")
            .ok_or(LoadError::MissingProgram("page_alloc_raw"))?
            .try_into()
            .map_err(|e| ebpf_err("page_alloc_raw", e))?;
        match program
            .load()
            .and_then(|()| attach_raw(program, PAGE_LINK, "mm_page_alloc", pins.as_deref_mut()))
        {
            Ok(()) => return Ok(("raw tracepoint mm_page_alloc".into(), None)),
            Err(e) => raw_error = Some(ebpf_err("raw tracepoint mm_page_alloc", e).to_string()),
        }
    }
    let raw_error = raw_error.unwrap_or_default();
    if let Some(e) = tracefs_error {
        return Err(LoadError::NoPageProbe(format!(
            "raw tracepoint: {raw_error}; tracepoint: {e}"
        )));
    }
    let program: &mut TracePoint = ebpf
        .program_mut("page_alloc_tp")
        .ok_or(LoadError::MissingProgram("page_alloc_tp"))?
        .try_into()
        .map_err(|e| ebpf_err("page_alloc_tp", e))?;
    program
        .load()
        .and_then(|()| attach_tracepoint(program, PAGE_LINK, ("kmem", "mm_page_alloc"), pins))
        .map_err(|e| {
            LoadError::NoPageProbe(format!(
                "raw tracepoint: {raw_error}; tracepoint: {}",
                ebpf_err("kmem:mm_page_alloc", e)
            ))
        })?;
    Ok(("tracepoint kmem:mm_page_alloc".into(), Some(raw_error)))
}

/// Offsets of the lifecycle programs: task fields from BTF, record fields from tracefs.
pub(super) fn lifecycle_offsets(btf: &btf::KernelBtf) -> Result<LifecycleOffsets, ProbeError> {
    let mut o = btf.lifecycle_task_offsets().map_err(ProbeError::offsets)?;
    let root = tracefs::root()?;
    let format = |category, name| tracefs::Format::read(&root, category, name);
    let offset = |f: &tracefs::Format, name: &str| f.field(name).map(|f| f.offset);
    let exit = format("sched", "sched_process_exit")?;
    // Kernels before 6.16 have no group_dead field: a thread-group leader's exit stands in.
    o.exit_group_dead = exit
        .field("group_dead")
        .map_or(-1, |f| i32::try_from(f.offset).unwrap_or(-1));
    let oom = format("oom", "mark_victim")?;
    oom_victim_fields(&oom, &mut o)?;
    let cgroup = format("cgroup", "cgroup_mkdir")?;
    o.cgroup_root = offset(&cgroup, "root")?;
    o.cgroup_level = offset(&cgroup, "level")?;
    o.cgroup_id = offset(&cgroup, "id")?;
    o.cgroup_path = offset(&cgroup, "path")?;
    o.valid = 1;
    Ok(o)
}

/// `mark_victim`'s fields: the pid is needed; the victim's resident memory is optional, as
/// kernels before 6.8 do not report it (-1: the event then says it is unknown).
fn oom_victim_fields(format: &tracefs::Format, o: &mut LifecycleOffsets) -> Result<(), ProbeError> {
    o.oom_pid = format.field("pid").map(|f| f.offset)?;
    let optional = |name| {
        format
            .field(name)
            .map_or(-1, |f| i32::try_from(f.offset).unwrap_or(-1))
    };
    o.oom_anon_rss = optional("anon_rss");
    o.oom_file_rss = optional("file_rss");
    o.oom_shmem_rss = optional("shmem_rss");
    Ok(())
}

/// Attaches the lifecycle programs (classic tracepoints).
pub(super) fn lifecycle(
    ebpf: &mut Ebpf,
    mut pins: Option<&mut Pinning>,
) -> Result<String, ProbeError> {
    let points = [
        ("process_exit", "sched", "sched_process_exit"),
        ("oom_victim", "oom", "mark_victim"),
        ("cgroup_mkdir", "cgroup", "cgroup_mkdir"),
        ("cgroup_rmdir", "cgroup", "cgroup_rmdir"),
    ];
    for (program, category, name) in points {
        load_and_attach::<TracePoint>(ebpf, program, &format!("{category}:{name}"), |p| {
            attach_tracepoint(p, program, (category, name), pins.as_deref_mut())
        })?;
    }
    Ok("tracepoints sched:sched_process_exit, oom:mark_victim, cgroup:cgroup_mkdir, cgroup:cgroup_rmdir".into())
}

/// The page-cache tracepoints: (raw program, classic program, link name, tracepoint).
const FILEMAP_POINTS: [(&str, &str, &str, &str); 2] = [
    (
        "filemap_add",
        "filemap_add_tp",
        "filemap_add",
        "mm_filemap_add_to_page_cache",
    ),
    (
        "filemap_delete",
        "filemap_delete_tp",
        "filemap_delete",
        "mm_filemap_delete_from_page_cache",
    ),
];

/// Whether both page-cache tracepoints' records are laid out as [`FilemapRecord`] says (on
/// 64-bit 6.x kernels; earlier ones have no `order`).
pub(super) fn filemap_record_matches() -> Result<(), String> {
    let root = tracefs::root().map_err(|e| e.to_string())?;
    for (_, _, _, tracepoint) in FILEMAP_POINTS {
        let format =
            tracefs::Format::read(&root, "filemap", tracepoint).map_err(|e| e.to_string())?;
        record_layout_matches(&format)?;
    }
    Ok(())
}

fn record_layout_matches(format: &tracefs::Format) -> Result<(), String> {
    let expected = [
        ("pfn", offset_of!(FilemapRecord, pfn), 8),
        ("i_ino", offset_of!(FilemapRecord, i_ino), 8),
        ("s_dev", offset_of!(FilemapRecord, s_dev), 4),
        ("order", offset_of!(FilemapRecord, order), 1),
    ];
    for (name, offset, size) in expected {
        match format.field(name) {
            Ok(f) if f.offset as usize == offset && f.size == size => {}
            Ok(f) => {
                return Err(format!(
                    "{}: {name} at {} ({} bytes), not {offset} ({size})",
                    format.tracepoint, f.offset, f.size
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Attaches the page-cache add and delete programs: the classic tracepoints when `classic` says
/// their records can be used (and `struct page` addresses are known), else the raw ones.
pub(super) fn filemap(
    ebpf: &mut Ebpf,
    classic: Result<(), String>,
    mut pins: Option<&mut Pinning>,
) -> Result<String, ProbeError> {
    if classic.is_ok() {
        for (_, program, link, tracepoint) in FILEMAP_POINTS {
            load_and_attach::<TracePoint>(ebpf, program, &format!("filemap:{tracepoint}"), |p| {
                attach_tracepoint(p, link, ("filemap", tracepoint), pins.as_deref_mut())
            })?;
        }
        return Ok(
            "tracepoints filemap:mm_filemap_add_to_page_cache, mm_filemap_delete_from_page_cache"
                .into(),
        );
    }
    for (program, _, link, tracepoint) in FILEMAP_POINTS {
        load_and_attach::<RawTracePoint>(ebpf, program, tracepoint, |p| {
            attach_raw(p, link, tracepoint, pins.as_deref_mut())
        })?;
    }
    let why = classic.err().unwrap_or_default();
    Ok(format!(
        "raw tracepoints mm_filemap_add_to_page_cache, mm_filemap_delete_from_page_cache (the \
         tracepoints' records are not used: {why})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/filemap/mm_filemap_add_to_page_cache/format` of this machine's 6.18.
    const FILEMAP_FORMAT_6_18: &str = "name: mm_filemap_add_to_page_cache
ID: 600
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long pfn;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long i_ino;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long index;\toffset:24;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:32;\tsize:4;\tsigned:0;
\tfield:unsigned char order;\toffset:36;\tsize:1;\tsigned:0;
";

    #[test]
    fn the_filemap_record_is_used_only_where_it_carries_the_order() {
        let format =
            |text: &str| tracefs::Format::parse("filemap/mm_filemap_add_to_page_cache", text);
        assert_eq!(record_layout_matches(&format(FILEMAP_FORMAT_6_18)), Ok(()));
        // A record without the order field: the raw tracepoints, which read the folio's.
        let without_order: String = FILEMAP_FORMAT_6_18
            .lines()
            .filter(|l| !l.contains("order"))
            .map(|l| format!("{l}\n"))
            .collect();
        let why = record_layout_matches(&format(&without_order)).unwrap_err();
        assert!(why.contains("order"), "{why}");
        // Another layout (a 32-bit kernel's 4-byte longs): not read at our offsets.
        let moved = FILEMAP_FORMAT_6_18.replace("offset:16;\tsize:8", "offset:12;\tsize:4");
        let why = record_layout_matches(&format(&moved)).unwrap_err();
        assert!(why.contains("i_ino at 12"), "{why}");
    }

    #[test]
    fn the_oom_victims_memory_is_optional() {
        let fields = |text: &str| {
            let mut o = LifecycleOffsets::default();
            oom_victim_fields(&tracefs::Format::parse("oom/mark_victim", text), &mut o)
                .map(|()| (o.oom_pid, o.oom_anon_rss, o.oom_file_rss, o.oom_shmem_rss))
        };
        // Debian's 6.1 (as 6.8 upstream) reports the victim's memory; 5.15 only its pid.
        let with_memory = include_str!("../../fixtures/mark_victim-6.1.format");
        assert_eq!(fields(with_memory), Ok((8, 24, 32, 40)));
        let pid_only = include_str!("../../fixtures/mark_victim-5.15.format");
        assert_eq!(fields(pid_only), Ok((8, -1, -1, -1)));
        assert!(fields("format:\n").is_err());
    }
}
