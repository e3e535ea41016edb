//! Leak entries as a gzip'd pprof profile: sample types `inuse_objects`/count and
//! `inuse_space`/bytes (allocation-profile entries: Go's four, `alloc_*` and `inuse_*`), with function, location and mapping tables filled so readers need no
//! binaries of their own. Labels carry the cgroup, process name and pid (the largest holder's, with
//! `processes` when several hold the same stack).
//!
//! Stacks from many processes share one profile, so each module gets a synthetic address range
//! (`mapping i` covers `[i << 40, (i + 1) << 40)`) and a location's address is its module range
//! plus its offset in the module file: `address - memory_start + file_offset` is the file offset,
//! as pprof expects, and ranges never overlap.

use std::{collections::HashMap, io::Write as _};

use flate2::{write::GzEncoder, Compression};
use pprof::protos::{
    Function, Label, Line, Location, Mapping, Message as _, Profile, Sample, ValueType,
};

use memlens_types::{allocations::AllocationEntry, leaks::LeakEntry, stack::Frame};

const MODULE_SPAN_SHIFT: u32 = 40;

#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    locations: HashMap<(u64, u64, Vec<u64>), u64>,
    mappings: HashMap<String, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        if let Some(&id) = self.functions.get(&(name.to_string(), file.to_string())) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let (name_i, file_i) = (self.string(name), self.string(file));
        self.profile.function.push(Function {
            id,
            name: name_i,
            system_name: name_i,
            filename: file_i,
            start_line: 0,
        });
        self.functions
            .insert((name.to_string(), file.to_string()), id);
        id
    }

    fn mapping(&mut self, module: &str) -> u64 {
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        self.profile.mapping.push(Mapping {
            id,
            memory_start: id << MODULE_SPAN_SHIFT,
            memory_limit: (id + 1) << MODULE_SPAN_SHIFT,
            file_offset: 0,
            filename,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mappings.insert(module.to_string(), id);
        id
    }

    /// One location for a group of frames at the same address: inlined ones first, then the
    /// function they were inlined into.
    fn location(&mut self, group: &[&Frame]) -> u64 {
        let Some(outer) = group.last() else {
            return 0;
        };
        let (mapping_id, address) = match (&outer.module, outer.module_offset) {
            (Some(m), Some(off)) => {
                let id = self.mapping(m);
                (id, (id << MODULE_SPAN_SHIFT) + off)
            }
            (Some(m), None) => (self.mapping(m), 0),
            _ => (0, outer.addr),
        };
        let lines: Vec<Line> = group
            .iter()
            .map(|f| Line {
                function_id: self.function(&f.display_name(), f.file.as_deref().unwrap_or("")),
                line: i64::from(f.line.unwrap_or(0)),
            })
            .collect();
        let key = (
            mapping_id,
            address,
            lines.iter().map(|l| l.function_id).collect::<Vec<_>>(),
        );
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line: lines,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    fn label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
            num_unit: 0,
        }
    }
}

/// The frames a profile shows for an entry, innermost first: its user stack, or its kernel
/// stack when it has no user stack (kernel threads, interrupts). Every user-space allocation
/// passes through the same kernel fault path, which would take every profile's leaf.
#[must_use]
pub fn profile_frames(entry: &LeakEntry) -> Vec<&Frame> {
    if entry.user_stack.is_empty() {
        entry.kernel_stack.iter().collect()
    } else {
        entry.user_stack.iter().collect()
    }
}

/// Location ids of a stack, innermost first.
fn stack_locations(builder: &mut Builder, frames: &[&Frame]) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut group: Vec<&Frame> = Vec::new();
    for &frame in frames {
        group.push(frame);
        if !frame.inlined {
            ids.push(builder.location(&group));
            group.clear();
        }
    }
    if !group.is_empty() {
        ids.push(builder.location(&group));
    }
    ids
}

impl Builder {
    /// A profile of `sample_types` (`(type, unit)`; the last is the default) taken at
    /// `taken_at_unix_ms` over `duration_ns`, with the modules of `stacks` registered first
    /// (pprof reads mapping 1 as the main binary).
    fn start<'a>(
        sample_types: &[(&str, &str)],
        taken_at_unix_ms: u64,
        duration_ns: i64,
        stacks: impl Iterator<Item = &'a [Frame]>,
    ) -> Builder {
        let mut b = Builder::default();
        b.string("");
        b.profile.sample_type = sample_types
            .iter()
            .map(|(ty, unit)| ValueType {
                ty: b.string(ty),
                unit: b.string(unit),
            })
            .collect();
        b.profile.default_sample_type = b.profile.sample_type.last().map_or(0, |t| t.ty);
        b.profile.period_type = Some(ValueType {
            ty: b.string("space"),
            unit: b.string("bytes"),
        });
        b.profile.time_nanos = i64::try_from(taken_at_unix_ms)
            .unwrap_or(0)
            .saturating_mul(1_000_000);
        b.profile.duration_nanos = duration_ns;
        for frame in stacks.flatten() {
            if let Some(module) = &frame.module {
                b.mapping(module);
            }
        }
        b
    }

    fn num_label(&mut self, key: &str, num: i64) -> Label {
        Label {
            key: self.string(key),
            str: 0,
            num,
            num_unit: 0,
        }
    }

    /// The profile, encoded and gzip'd.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&self.profile.encode_to_vec())?;
        gz.finish()
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Encodes `entries` as a gzip'd pprof profile.
pub fn encode(
    entries: &[LeakEntry],
    taken_at_unix_ms: u64,
    window_ns: i64,
) -> std::io::Result<Vec<u8>> {
    let mut b = Builder::start(
        &[("inuse_objects", "count"), ("inuse_space", "bytes")],
        taken_at_unix_ms,
        window_ns,
        entries.iter().map(|e| e.user_stack.as_slice()),
    );
    for entry in entries {
        let location_id = if entry.other {
            vec![b.location(&[&Frame {
                addr: 0,
                function: Some("[other stacks]".into()),
                module: None,
                module_offset: None,
                file: None,
                line: None,
                inlined: false,
                recovered: false,
            }])]
        } else {
            stack_locations(&mut b, &profile_frames(entry))
        };
        let mut label = vec![
            b.label("cgroup", &entry.cgroup),
            b.label("comm", &entry.comm),
            b.num_label("pid", i64::from(entry.pid)),
        ];
        if entry.process_count > 1 {
            label.push(b.num_label("processes", count(entry.process_count as u64)));
        }
        b.profile.sample.push(Sample {
            location_id,
            value: vec![count(entry.objects), count(entry.held_bytes)],
            label,
        });
    }
    b.finish()
}

/// Encodes allocation-profile entries as a gzip'd pprof profile with Go's heap-profile sample
/// types: `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space` (the default).
pub fn encode_allocations(
    entries: &[AllocationEntry],
    taken_at_unix_ms: u64,
) -> std::io::Result<Vec<u8>> {
    let mut b = Builder::start(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        taken_at_unix_ms,
        0,
        entries.iter().map(|e| e.user_stack.as_slice()),
    );
    for entry in entries {
        let frames: Vec<&Frame> = entry.user_stack.iter().collect();
        let location_id = stack_locations(&mut b, &frames);
        let label = vec![
            b.label("comm", &entry.comm),
            b.num_label("pid", i64::from(entry.pid)),
        ];
        b.profile.sample.push(Sample {
            location_id,
            value: vec![
                count(entry.alloc_objects),
                count(entry.alloc_bytes),
                count(entry.inuse_objects),
                count(entry.inuse_bytes),
            ],
            label,
        });
    }
    b.finish()
}
