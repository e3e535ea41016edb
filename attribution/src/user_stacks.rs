//! The user stacks of leak-table entries: the kernel's frame-pointer walk with a frameless
//! leaf's caller recovered, or a stack unwound from a copy, kept once per signature.
//!
//! A stack is kept by where its code is in its files (device, inode, file offset), not by its
//! addresses, which the loader randomizes per process (ASLR): the same code path in two processes
//! of one binary is one stack, one signature, symbolized once, and merges in queries.

use std::sync::Arc;

use memlens_model::{
    census::PageAlloc,
    python::PythonFrameId,
    user_stack::{FoundBy, UnwoundStack},
};
use memlens_procfs::{maps, Mapping};
use memlens_symbolize::{leaf::LeafRule, StackAddr};

use crate::{signature, Attribution, LeafCaller, ProcessInfo, ProcessKey, StackStop, UnwindMethod};

/// A user stack, innermost first, with how it was unwound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// Each distinct frame is kept once and shared by every stack through it (8 bytes a frame
    /// here): a busy node's thousands of stacks are mostly the same few hundred frames.
    pub frames: Box<[Arc<UserFrame>]>,
    /// How the innermost caller of a frame-pointer stack was established; `None` for unwound
    /// stacks, which follow the leaf's own unwind rule like every other frame's.
    pub leaf: Option<LeafCaller>,
    pub method: UnwindMethod,
    /// Why an unwound stack ended before the end of the stack; `None` for frame-pointer stacks,
    /// whose end is only known by name once symbolized.
    pub stop: Option<StackStop>,
}

/// One frame of a user stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserFrame {
    pub location: CodeLocation,
    /// A return address (every frame but the innermost): it names the call before it.
    pub return_address: bool,
    /// Recovered from the stack as a frameless leaf's caller.
    pub recovered: bool,
}

/// Where a frame's code is, the same in every process that maps it wherever the loader put it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CodeLocation {
    /// In a mapped file: its device (`major:minor` as maps prints it) and inode, and the offset
    /// in the file.
    File {
        dev: Arc<str>,
        inode: u64,
        offset: u64,
    },
    /// Outside any file (code generated at run time, an address no mapping holds): it means
    /// something only in its own process.
    Process { process: ProcessKey, addr: u64 },
    /// A Python frame (function, file, line), the same in every process that ran it.
    Python(PythonFrameId),
}

impl CodeLocation {
    /// The location of `addr` in `process`, whose mappings are `maps`.
    #[must_use]
    pub fn of(addr: u64, process: ProcessKey, maps: &[Mapping]) -> CodeLocation {
        if let Some(id) = PythonFrameId::of_address(addr) {
            return CodeLocation::Python(id);
        }
        match maps::find(maps, addr) {
            Some(m) if m.inode != 0 => CodeLocation::File {
                dev: m.dev.as_str().into(),
                inode: m.inode,
                offset: m.file_offset(addr),
            },
            _ => CodeLocation::Process { process, addr },
        }
    }

    /// Where this code is in the process `info`, if it maps it.
    #[must_use]
    pub fn address_in(&self, info: &ProcessInfo) -> Option<u64> {
        match self {
            CodeLocation::File { dev, inode, offset } => info
                .maps
                .iter()
                .find(|m| {
                    m.inode == *inode
                        && *m.dev == **dev
                        && m.offset <= *offset
                        && *offset - m.offset < m.end - m.start
                })
                .map(|m| m.start + (*offset - m.offset)),
            CodeLocation::Process { process, addr } => (*process == info.key).then_some(*addr),
            CodeLocation::Python(id) => Some(id.address()),
        }
    }
}

impl UserStack {
    /// The stack's addresses in process `info`, for symbolizing through it; a frame the process
    /// does not map shows as its file offset, which no mapping holds (an unknown frame).
    #[must_use]
    pub fn addresses_in(&self, info: &ProcessInfo) -> Vec<StackAddr> {
        self.frames
            .iter()
            .map(|f| StackAddr {
                addr: f.location.address_in(info).unwrap_or(match f.location {
                    CodeLocation::File { offset, .. } => offset,
                    CodeLocation::Process { addr, .. } => addr,
                    CodeLocation::Python(id) => id.address(),
                }),
                return_address: f.return_address,
                recovered: f.recovered,
            })
            .collect()
    }
}

/// A user stack as unwound, by address, before it is placed in its files.
pub(crate) struct RawStack {
    pub addrs: Vec<StackAddr>,
    pub leaf: Option<LeafCaller>,
    pub method: UnwindMethod,
    pub stop: Option<StackStop>,
}

impl RawStack {
    /// Signature of the addresses alone, to remember where a process's stack was placed.
    pub fn address_signature(&self) -> u64 {
        signature(self.addrs.iter().map(|a| (a.addr, a.recovered)))
    }

    /// Whether an address is outside `maps` (code loaded after they were read); Python frames
    /// are in no mapping.
    pub fn outside(&self, maps: &[Mapping]) -> bool {
        self.addrs.iter().any(|a| {
            PythonFrameId::of_address(a.addr).is_none() && maps::find(maps, a.addr).is_none()
        })
    }
}

impl Attribution {
    /// The user stack of the allocation `record` from the kernel's frame-pointer walk `ips`, with
    /// its frameless leaf's caller recovered when the leaf's unwind rule says where it is.
    pub(crate) fn walked_stack(
        &mut self,
        process: &Arc<ProcessInfo>,
        alive: bool,
        ips: &[u64],
        record: &PageAlloc,
    ) -> RawStack {
        let leaf_ip = ips[0];
        let rule = if record.user_sp == 0 {
            LeafRule::Unknown
        } else {
            *self
                .leaf_rules
                .entry((process.key, leaf_ip))
                .or_insert_with(|| match maps::find(&process.maps, leaf_ip) {
                    Some(mapping) if alive => self.leaf.rule(process.key.tgid, mapping, leaf_ip),
                    _ => LeafRule::Unknown,
                })
        };
        let recovered = match rule {
            LeafRule::StackWord(i) => record
                .user_stack_top
                .get(i)
                .copied()
                .filter(|&ra| maps::find(&process.maps, ra).is_some_and(|m| m.executable)),
            _ => None,
        };
        let leaf = match (rule, recovered) {
            (LeafRule::FramePointer, _) => LeafCaller::FramePointer,
            (LeafRule::StackWord(_), Some(_)) => LeafCaller::Recovered,
            _ => LeafCaller::MaybeMissing,
        };
        let mut addrs = Vec::with_capacity(ips.len() + 1);
        addrs.push(StackAddr {
            addr: leaf_ip,
            return_address: false,
            recovered: false,
        });
        match recovered {
            // The walk already has it (the leaf's caller set no frame of its own either).
            Some(ra) if ips.get(1) == Some(&ra) => {}
            Some(ra) => addrs.push(StackAddr {
                addr: ra,
                return_address: true,
                recovered: true,
            }),
            None => {}
        }
        addrs.extend(ips[1..].iter().map(|&addr| StackAddr {
            addr,
            return_address: true,
            recovered: false,
        }));
        RawStack {
            addrs,
            leaf: Some(leaf),
            method: UnwindMethod::FramePointers,
            stop: None,
        }
    }

    /// A stack unwound in userspace from a copy of the stack.
    pub(crate) fn unwound_stack(stack: &UnwoundStack) -> RawStack {
        let addrs = stack
            .frames()
            .map(|f| StackAddr {
                addr: f.addr,
                return_address: f.found_by != FoundBy::Registers,
                recovered: f.found_by == FoundBy::RecoveredLeaf,
            })
            .collect();
        let by_tables = stack
            .frames()
            .skip(1)
            .filter(|f| f.found_by == FoundBy::UnwindTables)
            .count();
        let method = match stack.len().saturating_sub(1) {
            callers if callers > 0 && by_tables == callers => UnwindMethod::UnwindTables,
            _ if by_tables > 0 => UnwindMethod::Mixed,
            _ => UnwindMethod::FramePointers,
        };
        RawStack {
            addrs,
            leaf: None,
            method,
            stop: stack.stop,
        }
    }

    /// The signature process `process`'s stack with address signature `by_address` was kept
    /// under, if it was placed in its files before.
    pub(crate) fn placed(&self, process: ProcessKey, by_address: u64) -> Option<u64> {
        self.located
            .get(&(process, by_address))
            .copied()
            .filter(|sig| self.user_stacks.contains_key(sig))
    }

    /// `frame`, shared with the stacks already through it.
    fn shared_frame(&mut self, frame: UserFrame) -> Arc<UserFrame> {
        if let Some(shared) = self.frames.get(&frame) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(frame);
        self.frames.insert(Arc::clone(&shared));
        shared
    }

    /// Places `raw` (whose address signature is `by_address`) in the files `process` maps and
    /// keeps it once; returns its signature. Where it was placed is remembered when every
    /// address was in a mapping (an address outside may be in one once the mappings are read
    /// again).
    pub(crate) fn intern(&mut self, process: &ProcessInfo, by_address: u64, raw: RawStack) -> u64 {
        let placed = !raw.outside(&process.maps);
        let stack = UserStack {
            frames: raw
                .addrs
                .iter()
                .map(|a| {
                    self.shared_frame(UserFrame {
                        location: CodeLocation::of(a.addr, process.key, &process.maps),
                        return_address: a.return_address,
                        recovered: a.recovered,
                    })
                })
                .collect(),
            leaf: raw.leaf,
            method: raw.method,
            stop: raw.stop,
        };
        let sig = signature(stack.frames.iter().map(|f| (&f.location, f.recovered)));
        self.user_stacks
            .entry(sig)
            .or_insert_with(|| Arc::new(stack));
        if placed {
            self.located.insert((process.key, by_address), sig);
        }
        sig
    }
}

#[cfg(test)]
mod tests {
    use memlens_procfs::maps::parse_maps;

    use super::*;

    /// The same binary and libc in two processes, placed at different addresses (from real
    /// `/proc/<pid>/maps` of two runs of one program).
    const MAPS_A: &str = "\
5581c1a4f000-5581c1a50000 r--p 00000000 fe:01 1048641                    /tmp/deepleak
5581c1a50000-5581c1a51000 r-xp 00001000 fe:01 1048641                    /tmp/deepleak
7f2b3c828000-7f2b3c84e000 r--p 00000000 fe:01 3670146                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2b3c84e000-7f2b3c9a3000 r-xp 00026000 fe:01 3670146                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2b3ca00000-7f2b3ca21000 rwxp 00000000 00:00 0 
7ffd6a2e1000-7ffd6a302000 rw-p 00000000 00:00 0                          [stack]
";
    const MAPS_B: &str = "\
55d0e9d7b000-55d0e9d7c000 r--p 00000000 fe:01 1048641                    /tmp/deepleak
55d0e9d7c000-55d0e9d7d000 r-xp 00001000 fe:01 1048641                    /tmp/deepleak
7fa01f228000-7fa01f24e000 r--p 00000000 fe:01 3670146                    /usr/lib/x86_64-linux-gnu/libc.so.6
7fa01f24e000-7fa01f3a3000 r-xp 00026000 fe:01 3670146                    /usr/lib/x86_64-linux-gnu/libc.so.6
7fa01f400000-7fa01f421000 rwxp 00000000 00:00 0 
7ffc1b0f1000-7ffc1b112000 rw-p 00000000 00:00 0                          [stack]
";

    /// A copy whose unwinding stopped at its first frame found no caller by any method: it is
    /// not labelled as unwound by tables (a Go leak's stacks were, all of them, one frame long).
    #[test]
    fn a_stack_that_stops_at_its_leaf_is_not_said_to_be_unwound_by_tables() {
        use memlens_model::user_stack::UnwoundFrame;
        let leaf = UnwoundFrame {
            addr: 0x45_e1b3,
            found_by: FoundBy::Registers,
        };
        let stopped = UnwoundStack::new(&[leaf], Some(StackStop::UnknownAddress));
        assert_eq!(
            Attribution::unwound_stack(&stopped).method,
            UnwindMethod::FramePointers
        );
        let caller = UnwoundFrame {
            addr: 0x48_4f1e,
            found_by: FoundBy::UnwindTables,
        };
        let unwound = UnwoundStack::new(&[leaf, caller], None);
        assert_eq!(
            Attribution::unwound_stack(&unwound).method,
            UnwindMethod::UnwindTables
        );
    }

    fn process(tgid: u32, text: &str) -> ProcessInfo {
        ProcessInfo {
            key: ProcessKey {
                tgid,
                start_ns: u64::from(tgid),
            },
            comm: "deepleak".into(),
            maps: parse_maps(text),
        }
    }

    /// memset in libc <- alloc_node <- main, at `libc` and `exe` (the r-xp mappings' starts).
    fn raw(libc: u64, exe: u64) -> RawStack {
        let addr = |addr, return_address| StackAddr {
            addr,
            return_address,
            recovered: false,
        };
        RawStack {
            addrs: vec![
                addr(libc + 0x15_1234, false),
                addr(exe + 0x1a0, true),
                addr(exe + 0x2f0, true),
            ],
            leaf: None,
            method: UnwindMethod::UnwindTables,
            stop: None,
        }
    }

    fn intern(attribution: &mut Attribution, process: &ProcessInfo, raw: RawStack) -> u64 {
        let by_address = raw.address_signature();
        attribution
            .placed(process.key, by_address)
            .unwrap_or_else(|| attribution.intern(process, by_address, raw))
    }

    #[test]
    fn one_binary_in_two_processes_gives_one_stack() {
        let (a, b) = (process(100, MAPS_A), process(200, MAPS_B));
        let mut attribution = Attribution::new(100, Arc::default());
        let sig_a = intern(
            &mut attribution,
            &a,
            raw(0x7f2b_3c84_e000, 0x5581_c1a5_0000),
        );
        let sig_b = intern(
            &mut attribution,
            &b,
            raw(0x7fa0_1f24_e000, 0x55d0_e9d7_c000),
        );
        assert_eq!(sig_a, sig_b, "same files, same offsets");
        assert_eq!(attribution.user_stacks.len(), 1);
        let stack = Arc::clone(&attribution.user_stacks[&sig_a]);
        assert_eq!(
            stack.frames[0].location,
            CodeLocation::File {
                dev: "fe:01".into(),
                inode: 3_670_146,
                offset: 0x26000 + 0x15_1234,
            }
        );
        // Symbolized through either process, at that process's own addresses.
        let in_b: Vec<u64> = stack.addresses_in(&b).iter().map(|a| a.addr).collect();
        assert_eq!(
            in_b,
            [
                0x7fa0_1f24_e000 + 0x15_1234,
                0x55d0_e9d7_c1a0,
                0x55d0_e9d7_c2f0
            ]
        );
        // A different path in the same binary is another stack; so is code outside any file,
        // which only means something in its own process.
        let mut other = raw(0x7f2b_3c84_e000, 0x5581_c1a5_0000);
        other.addrs[1].addr += 8;
        assert_ne!(intern(&mut attribution, &a, other), sig_a);
        let jit = |base: u64| {
            let mut r = raw(0x7f2b_3c84_e000, 0x5581_c1a5_0000);
            r.addrs[0].addr = base + 0x100;
            r
        };
        let jit_a = intern(&mut attribution, &a, jit(0x7f2b_3ca0_0000));
        let jit_b = intern(&mut attribution, &b, jit(0x7f2b_3ca0_0000));
        assert_ne!(jit_a, jit_b);
        assert_eq!(
            attribution.user_stacks[&jit_a].addresses_in(&b)[0].addr,
            0x7f2b_3ca0_0100,
            "another process does not map it: shown by address, an unknown frame"
        );
    }

    #[test]
    fn an_address_outside_the_mappings_is_placed_again_once_they_are_read() {
        let a = process(100, MAPS_A);
        let mut attribution = Attribution::new(100, Arc::default());
        let mut r = raw(0x7f2b_3c84_e000, 0x5581_c1a5_0000);
        r.addrs[0].addr = 0x7f00_0000_0000; // a library loaded after the maps were read
        let before = intern(&mut attribution, &a, r);
        let loaded = ProcessInfo {
            maps: parse_maps(&format!(
                "{MAPS_A}7f0000000000-7f0000001000 r-xp 00000000 fe:01 77 /opt/plugin.so\n"
            )),
            ..a.clone()
        };
        let mut r = raw(0x7f2b_3c84_e000, 0x5581_c1a5_0000);
        r.addrs[0].addr = 0x7f00_0000_0000;
        let after = intern(&mut attribution, &loaded, r);
        assert_ne!(before, after);
        assert!(matches!(
            attribution.user_stacks[&after].frames[0].location,
            CodeLocation::File { inode: 77, .. }
        ));
    }
}
