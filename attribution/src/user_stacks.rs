//! The user stacks of leak-table entries: the kernel's frame-pointer walk with a frameless
//! leaf's caller recovered, or a stack unwound from a copy, kept once per signature.

use std::sync::Arc;

use memlens_model::{
    census::TrackedFrame,
    user_stack::{FoundBy, UnwoundStack},
};
use memlens_procfs::maps;
use memlens_symbolize::{leaf::LeafRule, StackAddr};

use crate::{signature, Attribution, LeafCaller, ProcessInfo, StackStop, UnwindMethod};

/// A user stack, innermost first, with how it was unwound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStack {
    pub addrs: Vec<StackAddr>,
    /// How the innermost caller of a frame-pointer stack was established; `None` for unwound
    /// stacks, which follow the leaf's own unwind rule like every other frame's.
    pub leaf: Option<LeafCaller>,
    pub method: UnwindMethod,
    /// Why an unwound stack ended before the end of the stack; `None` for frame-pointer stacks,
    /// whose end is only known by name once symbolized.
    pub stop: Option<StackStop>,
}

impl Attribution {
    /// The user stack of `frame`, with its frameless leaf's caller recovered when the leaf's
    /// unwind rule says where it is; returns its signature.
    pub(crate) fn user_stack(
        &mut self,
        process: &Arc<ProcessInfo>,
        alive: bool,
        ips: &[u64],
        frame: &TrackedFrame,
    ) -> u64 {
        let record = &frame.record;
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
        self.intern(UserStack {
            addrs,
            leaf: Some(leaf),
            method: UnwindMethod::FramePointers,
            stop: None,
        })
    }

    /// A stack unwound from a copy of the stack; returns its signature.
    pub(crate) fn unwound_stack(&mut self, stack: &UnwoundStack) -> u64 {
        let addrs = stack
            .frames
            .iter()
            .map(|f| StackAddr {
                addr: f.addr,
                return_address: f.found_by != FoundBy::Registers,
                recovered: f.found_by == FoundBy::RecoveredLeaf,
            })
            .collect();
        let by_tables = stack
            .frames
            .iter()
            .skip(1)
            .filter(|f| f.found_by == FoundBy::UnwindTables)
            .count();
        let method = match stack.frames.len().saturating_sub(1) {
            callers if by_tables == callers => UnwindMethod::UnwindTables,
            _ if by_tables > 0 => UnwindMethod::Mixed,
            _ => UnwindMethod::FramePointers,
        };
        self.intern(UserStack {
            addrs,
            leaf: None,
            method,
            stop: stack.stop,
        })
    }

    /// Keeps `stack` once; returns its signature.
    pub(crate) fn intern(&mut self, stack: UserStack) -> u64 {
        let sig = signature(&stack.addrs, |a| (a.addr, a.recovered));
        self.user_stacks
            .entry(sig)
            .or_insert_with(|| Arc::new(stack));
        sig
    }
}
