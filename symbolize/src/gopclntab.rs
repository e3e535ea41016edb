//! Go's own table of frame sizes (`.gopclntab`), for binaries without unwind sections.
//!
//! Go binaries carry no `.eh_frame`; their `.debug_frame` goes with `-ldflags=-s -w` (stripped
//! builds). The runtime's `.gopclntab` always stays: per function, a `pcsp` table gives the stack
//! pointer's offset from the function's entry at each instruction. A frameless leaf (the
//! runtime's `memmove`, `memclrNoHeapPointers`, other `NOSPLIT` assembly) has offset 0 there: its
//! return address is the word at the stack pointer. Go 1.18 and later (header magic `0xfffffff0`,
//! `0xfffffff1` since 1.20), 64-bit little-endian. Layouts from `runtime/symtab.go`.

/// A parsed `.gopclntab`.
pub struct GoPcln {
    data: Vec<u8>,
    /// Address the functions' entry offsets count from.
    text_start: u64,
    nfunc: usize,
    /// Offsets of the pc-value tables and of the function table, from the start of `data`.
    pctab: usize,
    pcln: usize,
    /// Instruction size quantum (1 on x86-64).
    quantum: u64,
}

/// Header magics of the layouts read here.
const GO_1_18: u32 = 0xffff_fff0;
const GO_1_20: u32 = 0xffff_fff1;
/// Offset of `pcsp` in a `_func` (the same in every layout read here).
const FUNC_PCSP: usize = 16;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// An unsigned LEB128 varint at the start of `p`: (value, bytes read).
fn uvarint(p: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &b) in p.iter().enumerate().take(5) {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

impl GoPcln {
    /// Parses the section's bytes; None for anything but a 64-bit Go 1.18+ table.
    /// `text_section` is the address of `.text`, used when the header's text start is not
    /// filled in (position-independent builds).
    #[must_use]
    pub fn parse(data: Vec<u8>, text_section: u64) -> Option<GoPcln> {
        let magic = u32_at(&data, 0)?;
        if magic != GO_1_18 && magic != GO_1_20 {
            return None;
        }
        let quantum = u64::from(*data.get(6)?);
        if *data.get(7)? != 8 || quantum == 0 {
            return None;
        }
        let word = |i: usize| u64_at(&data, 8 + 8 * i);
        let nfunc = usize::try_from(word(0)?).ok()?;
        let text_start = match word(2)? {
            0 => text_section,
            start => start,
        };
        let pctab = usize::try_from(word(6)?).ok()?;
        let pcln = usize::try_from(word(7)?).ok()?;
        // The function table must fit: nfunc + 1 entries of two u32.
        let end = pcln.checked_add(nfunc.checked_add(1)?.checked_mul(8)?)?;
        if end > data.len() || pctab > data.len() {
            return None;
        }
        Some(GoPcln {
            data,
            text_start,
            nfunc,
            pctab,
            pcln,
            quantum,
        })
    }

    /// Entry offset and `_func` offset of function table entry `i`.
    fn functab(&self, i: usize) -> Option<(u64, usize)> {
        let at = self.pcln + 8 * i;
        Some((
            u64::from(u32_at(&self.data, at)?),
            usize::try_from(u32_at(&self.data, at + 4)?).ok()?,
        ))
    }

    /// Bytes of the table held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the table is empty (never, for a parsed one).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The stack pointer's offset from the function's entry at address `pc`: 0 at the entry,
    /// and throughout a frameless function. None when `pc` is in no function of the table.
    #[must_use]
    pub fn sp_delta(&self, pc: u64) -> Option<u64> {
        let target = pc.checked_sub(self.text_start)?;
        // The last function whose entry is at or before the target.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.functab(mid)?.0 <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let index = lo.checked_sub(1)?;
        let (entry, func) = self.functab(index)?;
        let (end, _) = self.functab(index + 1)?;
        if target >= end {
            return None;
        }
        let pcsp = usize::try_from(u32_at(&self.data, self.pcln + func + FUNC_PCSP)?).ok()?;
        let table = self.data.get(self.pctab.checked_add(pcsp)?..)?;
        self.value_at(table, entry, target)
    }

    /// Decodes a pc-value table (zigzag value deltas and pc deltas, from value -1 at `entry`)
    /// up to `target`.
    fn value_at(&self, mut p: &[u8], entry: u64, target: u64) -> Option<u64> {
        let mut value: i64 = -1;
        let mut pc = entry;
        let mut first = true;
        loop {
            let (uvdelta, n) = uvarint(p)?;
            if uvdelta == 0 && !first {
                return None;
            }
            first = false;
            p = p.get(n..)?;
            let delta = i64::from((uvdelta >> 1) as i32) ^ -i64::from(uvdelta & 1);
            value += delta;
            let (pcdelta, n) = uvarint(p)?;
            p = p.get(n..)?;
            pc = pc.checked_add(u64::from(pcdelta).checked_mul(self.quantum)?)?;
            if target < pc {
                return u64::try_from(value).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of two functions as Go 1.20's linker lays it out: `leaf` (entry at text+0x10,
    /// 8 bytes, frameless) and `body` (entry at text+0x20: 4 bytes at SP offset 0, then 24
    /// bytes with a 0x28-byte frame).
    fn table() -> Vec<u8> {
        let text = 0x40_1000u64;
        let mut d = vec![0u8; 72];
        d[0..4].copy_from_slice(&GO_1_20.to_le_bytes());
        d[6] = 1; // quantum
        d[7] = 8; // pointer size
        let header = [2u64, 0, text, 0, 0, 0, 72, 100];
        for (i, w) in header.iter().enumerate() {
            d[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        // pctab at 72: leaf's pcsp at 0, body's at 4.
        // leaf: value 0 (delta +1 -> zigzag 2) for 8 bytes; end.
        d.extend_from_slice(&[2, 8, 0, 0]);
        // body: value 0 for 4 bytes, then +0x28 (zigzag 0x50) for 24 bytes; end.
        d.extend_from_slice(&[2, 4, 0x50, 24, 0]);
        d.resize(100, 0);
        // functab at 100: (entryoff, funcoff) x 2, then the end.
        for (entry, func) in [(0x10u32, 40u32), (0x20, 80), (0x3c, 0)] {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&func.to_le_bytes());
        }
        d.resize(100 + 120, 0);
        // _func of leaf at pcln + 40: pcsp = 0; of body at pcln + 80: pcsp = 4.
        d[100 + 40 + FUNC_PCSP..100 + 40 + FUNC_PCSP + 4].copy_from_slice(&0u32.to_le_bytes());
        d[100 + 80 + FUNC_PCSP..100 + 80 + FUNC_PCSP + 4].copy_from_slice(&4u32.to_le_bytes());
        d
    }

    #[test]
    fn stack_pointer_offsets_come_from_the_pcsp_tables() {
        let pcln = GoPcln::parse(table(), 0).expect("a Go 1.20 table");
        let text = 0x40_1000;
        assert_eq!(pcln.sp_delta(text + 0x10), Some(0), "leaf entry");
        assert_eq!(pcln.sp_delta(text + 0x17), Some(0), "leaf body: frameless");
        assert_eq!(pcln.sp_delta(text + 0x20), Some(0), "body entry");
        assert_eq!(
            pcln.sp_delta(text + 0x24),
            Some(0x28),
            "body after its prologue"
        );
        assert_eq!(pcln.sp_delta(text + 0x3b), Some(0x28));
        assert_eq!(pcln.sp_delta(text + 0x3c), None, "past the last function");
        assert_eq!(pcln.sp_delta(text + 0x8), None, "before the first");
    }

    #[test]
    fn other_tables_are_refused_not_misread() {
        let mut old = table();
        old[0..4].copy_from_slice(&0xffff_fffau32.to_le_bytes()); // Go 1.16
        assert!(GoPcln::parse(old, 0).is_none());
        let mut short = table();
        short.truncate(120);
        assert!(GoPcln::parse(short, 0).is_none());
        assert!(GoPcln::parse(Vec::new(), 0).is_none());
    }
}
