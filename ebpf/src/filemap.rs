//! Page-cache probes: pages added to and deleted from the page cache, per (memory cgroup the
//! folio is charged to, file), counted exactly.
//!
//! The cgroup is read from the folio itself (`memcg_data`), not from the current task: so
//! eviction by reclaim, truncation and deletes by kernel threads are taken from the right
//! cgroup, and a cgroup reading a file another one cached (and is charged for) adds nothing.
//!
//! Two attachments: the classic tracepoints where their record carries the folio's order (6.x),
//! whose record already holds the inode number and device, so one probe read (the folio's
//! `memcg_data`, found from the record's frame number) is left; else the raw tracepoints, which
//! walk from the folio to its inode and device (seven probe reads). On a file system that
//! caches in 4 KiB folios the programs run once per page (docs/benchmarks.md, "Page cache").

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
    EbpfContext, Global,
};
use aya_ebpf::programs::TracePointContext;
use memlens_common::{
    counters::Counter,
    filemap::{FileKey, FilemapOffsets, FilemapRecord},
};

use crate::{counters, pages, task};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

#[no_mangle]
static FILEMAP_OFFSETS: Global<FilemapOffsets> = Global::new(FilemapOffsets {
    folio_flags: 0,
    folio_flags_1: 0,
    folio_mapping: 0,
    folio_memcg_data: 0,
    mapping_host: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    objcg_memcg: 0,
    memcg_css: 0,
    css_serial_nr: 0,
    pg_head: 0,
    memcg_data_kmem: 0,
    memcg_data_mask: 0,
    valid: 0,
});

/// Net pages per (memory cgroup, file). Sized by the agent; a full map loses events, counted.
#[map]
static FILE_PAGES: HashMap<FileKey, i64> = HashMap::with_max_entries(1, 0);

/// One-entry per-CPU cache of the last `mem_cgroup *` -> id walk: consecutive events mostly
/// come from the same cgroup, and the walk is three probe reads. The kernel hands a removed
/// cgroup's `mem_cgroup` memory to the next cgroup made, so the pointer alone would name the
/// removed cgroup for the new one's pages: the css serial number (one read, never reused) is
/// checked too.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemcgMemo {
    memcg: u64,
    serial: u64,
    id: u64,
}

#[map]
static MEMCG_MEMO: PerCpuArray<MemcgMemo> = PerCpuArray::with_max_entries(1, 0);

/// match-kernel: include/trace/events/filemap.h
/// DECLARE_EVENT_CLASS(mm_filemap_op_page_cache, TP_PROTO(struct folio *folio))
#[raw_tracepoint(tracepoint = "mm_filemap_add_to_page_cache")]
pub fn filemap_add(ctx: RawTracePointContext) -> i32 {
    account(&ctx, 1);
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_delete_from_page_cache")]
pub fn filemap_delete(ctx: RawTracePointContext) -> i32 {
    account(&ctx, -1);
    0
}

/// match-kernel: include/trace/events/filemap.h TP_STRUCT__entry(pfn, i_ino, index, s_dev,
/// order) of mm_filemap_op_page_cache (checked against the format file by the agent)
#[tracepoint]
pub fn filemap_add_tp(ctx: TracePointContext) -> i32 {
    account_record(&ctx, 1);
    0
}

#[tracepoint]
pub fn filemap_delete_tp(ctx: TracePointContext) -> i32 {
    account_record(&ctx, -1);
    0
}

#[inline(always)]
fn account_record(ctx: &TracePointContext, sign: i64) {
    let offsets = FILEMAP_OFFSETS.load();
    if offsets.valid == 0 {
        return;
    }
    let record = ctx.as_ptr() as *const FilemapRecord;
    // SAFETY: the tracepoint's record, whose layout the agent checked; loads at fixed offsets
    // within it, which the verifier checks against the record's size.
    let (pfn, ino, dev, order) =
        unsafe { ((*record).pfn, (*record).i_ino, (*record).s_dev, (*record).order) };
    let memcg = read_u64(pages::page_of(pfn), offsets.folio_memcg_data)
        .and_then(|data| memcg_id(data, &offsets));
    match memcg {
        Ok(memcg) => add(
            &FileKey {
                memcg,
                ino,
                dev,
                reserved: 0,
            },
            sign * (1i64 << (order & 31)),
        ),
        Err(_) => counters::add(Counter::FilemapReadErrors, 1),
    }
}

#[inline(always)]
fn account(ctx: &RawTracePointContext, sign: i64) {
    let offsets = FILEMAP_OFFSETS.load();
    if offsets.valid == 0 {
        return;
    }
    // SAFETY: the raw tracepoint's context is its argument array; the folio is the first.
    let folio = unsafe { *(ctx.as_ptr() as *const u64) };
    if folio == 0 {
        return;
    }
    match read_event(folio, &offsets) {
        Ok((key, pages)) => add(&key, sign * pages),
        Err(_) => counters::add(Counter::FilemapReadErrors, 1),
    }
}

#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Result<u64, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }
}

#[inline(always)]
fn read_u32(base: u64, offset: u32) -> Result<u32, i32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u32) }
}

/// match-kernel: include/linux/mm_types.h struct folio (flags, _flags_1, mapping, memcg_data);
/// include/linux/fs.h address_space.host, inode.i_ino, inode.i_sb, super_block.s_dev;
/// include/linux/memcontrol.h enum page_memcg_data_flags, obj_cgroup.memcg
#[inline(always)]
fn read_event(folio: u64, o: &FilemapOffsets) -> Result<(FileKey, i64), i32> {
    let flags = read_u64(folio, o.folio_flags)?;
    let order = if flags & (1u64 << (o.pg_head & 63)) != 0 {
        read_u64(folio, o.folio_flags_1)? & 0xff
    } else {
        0
    };
    let memcg_data = read_u64(folio, o.folio_memcg_data)?;
    let memcg = memcg_id(memcg_data, o)?;
    let mapping = read_u64(folio, o.folio_mapping)?;
    let host = read_u64(mapping, o.mapping_host)?;
    let ino = read_u64(host, o.inode_ino)?;
    let sb = read_u64(host, o.inode_sb)?;
    let dev = read_u32(sb, o.sb_dev)?;
    Ok((
        FileKey {
            memcg,
            ino,
            dev,
            reserved: 0,
        },
        1i64 << (order & 31),
    ))
}

/// The id of the memory cgroup `memcg_data` designates (0 when not charged).
#[inline(always)]
fn memcg_id(memcg_data: u64, o: &FilemapOffsets) -> Result<u64, i32> {
    let pointer = memcg_data & !u64::from(o.memcg_data_mask);
    if pointer == 0 {
        return Ok(0);
    }
    let memcg = if memcg_data & u64::from(o.memcg_data_kmem) != 0 {
        read_u64(pointer, o.objcg_memcg)?
    } else {
        pointer
    };
    let css = memcg + u64::from(o.memcg_css);
    let serial = read_u64(css, o.css_serial_nr)?;
    let memo = MEMCG_MEMO.get_ptr_mut(0);
    if let Some(memo) = memo {
        // SAFETY: per-CPU map value; this program does not nest on one CPU.
        let m = unsafe { &*memo };
        if m.memcg == memcg && m.serial == serial && memcg != 0 {
            return Ok(m.id);
        }
    }
    let id = task::memcg_id_of(css)?;
    if let Some(memo) = memo {
        // SAFETY: as above.
        unsafe { *memo = MemcgMemo { memcg, serial, id } };
    }
    Ok(id)
}

#[inline(always)]
fn add(key: &FileKey, pages: i64) {
    counters::add(Counter::FilemapEvents, 1);
    if let Some(value) = FILE_PAGES.get_ptr_mut(key) {
        atomic_add(value, pages);
        return;
    }
    match FILE_PAGES.insert(key, &pages, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU inserted it first: add to theirs.
        Err(e) if -i64::from(e) == EEXIST => {
            if let Some(value) = FILE_PAGES.get_ptr_mut(key) {
                atomic_add(value, pages);
            }
        }
        Err(_) => counters::add(Counter::FilemapMapFull, 1),
    }
}

/// `*value += n` atomically across CPUs (BPF's `lock xadd`; core's atomics lack `fetch_add` on
/// this target).
#[inline(always)]
fn atomic_add(value: *mut i64, n: i64) {
    // SAFETY: `value` is a map value pointer the verifier has checked; the instruction only
    // adds `n` to the 8 bytes it points to.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {n}",
            ptr = in(reg) value,
            n = in(reg) n,
        );
    }
}
