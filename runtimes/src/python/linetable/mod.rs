//! Source lines of CPython 3.11+ instructions, decoded from a code object's `co_linetable`.
//!
//! Since 3.11 (PEP 657), `co_linetable` is the "location table" that CPython documents in
//! `Objects/locations.md` (moved to `InternalDocs/code_objects.md` for 3.14). 3.11, 3.12, 3.13
//! and 3.14 write it alike and read it with the same code (`advance` and `get_line_delta` in
//! `Objects/codeobject.c`). It is a run of entries, each covering 1 to 8 code units (2-byte
//! instructions or inline cache slots) in order from the start of the bytecode. An entry's first
//! byte has its top bit set, holds the entry's code in bits 3-6 and its length minus one in bits
//! 0-2; the bytes after it, up to the next entry, have their top bit clear:
//!
//! | code  | bytes after the first               | line of the entry's code units       |
//! |-------|-------------------------------------|--------------------------------------|
//! | 0-9   | columns (1 byte)                    | the previous line                    |
//! | 10-12 | start and end column (1 byte each)  | the previous line + (code - 10)      |
//! | 13    | line delta (svarint)                | the previous line + delta            |
//! | 14    | line delta (svarint), 3 varints (*) | the previous line + delta            |
//! | 15    | nothing                             | none (the line carries on unchanged) |
//!
//! (*) End-line delta, column + 1, end column + 1.
//!
//! "The previous line" starts at `co_firstlineno`. A varint is 6-bit chunks, lowest first, each
//! but the last with bit 6 set; an svarint is a varint holding `magnitude << 1 | negative`.
//!
//! The tables come from another process's memory and may be torn or garbage, so decoding is
//! strict where CPython trusts its own output: a byte out of place, a missing byte, a varint too
//! long for CPython to have written or a line outside `1..=i32::MAX` makes the answer None
//! rather than a made-up line. Every step consumes a byte, so a lookup ends within
//! `linetable.len()` steps whatever the bytes are.

use std::slice;

/// Set on the first byte of every entry and clear on every byte after it.
const ENTRY_START: u8 = 0x80;
/// Where an entry's code starts in its first byte.
const CODE_SHIFT: u8 = 3;
/// An entry's code, once shifted down.
const CODE_BITS: u8 = 0x0f;
/// The bits of an entry's first byte that hold its length in code units, minus one.
const LENGTH_BITS: u8 = 0x07;
/// Entry code for code units with no source location (instructions the compiler made up).
const NO_LOCATION: u8 = 15;
/// Entry code followed by line delta, end-line delta, column + 1 and end column + 1.
const LONG_FORM: u8 = 14;
/// Entry code followed by the line delta only (no columns known, or `-X no_debug_ranges`).
const NO_COLUMNS: u8 = 13;
/// First of the one-line codes, whose line delta is the code minus this.
const ONE_LINE_FIRST: u8 = 10;
/// Last of the one-line codes.
const ONE_LINE_LAST: u8 = 12;
/// The bits of a varint chunk that hold the value.
const CHUNK_VALUE: u8 = 0x3f;
/// The bit of a varint chunk that says another chunk follows.
const CHUNK_MORE: u8 = 0x40;
/// Bits of value in a varint chunk.
const CHUNK_BITS: u32 = 6;
/// Chunks in the longest varint CPython writes: it encodes C `unsigned int`s, 32 bits.
const MAX_CHUNKS: u32 = 6;

/// The source line of the instruction at `index` (in 2-byte code units from the start of the
/// bytecode), from `co_linetable` and `co_firstlineno`; None when the table has no location for
/// it or is malformed/too short.
///
/// The entries before `index` are decoded in full, not skipped to the next top-bit byte as
/// CPython does, because each line is a sum over all of them: one bad byte there would shift
/// every later line, so it makes this None instead. Lines below 1 are None too: there is no such
/// source line (3.11+ gives module code's leading `RESUME` line 0). Linear in the table's length;
/// callers that look up one code object often should cache the answers.
#[must_use]
pub fn line_of(linetable: &[u8], first_line: i32, index: u32) -> Option<u32> {
    let target = u64::from(index);
    let mut bytes = linetable.iter();
    let mut line = i64::from(first_line);
    let mut end: u64 = 0;
    loop {
        let (units, step) = read_entry(&mut bytes)?;
        end = end.checked_add(u64::from(units))?;
        let here = match step {
            Step::Delta(delta) => {
                line = line.checked_add(delta)?;
                Some(line)
            }
            Step::NoLocation => None,
        };
        if target < end {
            return here.and_then(source_line);
        }
    }
}

/// How an entry moves the running line.
enum Step {
    /// Its code units are on the previous entry's line plus this.
    Delta(i64),
    /// Its code units have no line; the next entry's delta counts from the previous line.
    NoLocation,
}

/// The next entry's length in code units and its step; None at the end of the table or when
/// the entry is malformed or cut short.
fn read_entry(bytes: &mut slice::Iter<'_, u8>) -> Option<(u32, Step)> {
    let first = *bytes.next()?;
    if first & ENTRY_START == 0 {
        return None;
    }
    let units = u32::from(first & LENGTH_BITS) + 1;
    let step = read_step((first >> CODE_SHIFT) & CODE_BITS, bytes)?;
    Some((units, step))
}

/// Reads the bytes after an entry's first byte, all of them so that the next entry starts
/// where it should, and returns how the entry with `code` moves the line.
fn read_step(code: u8, bytes: &mut slice::Iter<'_, u8>) -> Option<Step> {
    match code {
        NO_LOCATION => Some(Step::NoLocation),
        LONG_FORM => {
            let delta = read_signed_varint(bytes)?;
            for _end_line_and_columns in 0..3 {
                read_varint(bytes)?;
            }
            Some(Step::Delta(delta))
        }
        NO_COLUMNS => read_signed_varint(bytes).map(Step::Delta),
        ONE_LINE_FIRST..=ONE_LINE_LAST => {
            skip_payload(bytes, 2)?;
            Some(Step::Delta(i64::from(code - ONE_LINE_FIRST)))
        }
        _short_form => {
            skip_payload(bytes, 1)?;
            Some(Step::Delta(0))
        }
    }
}

/// Skips `count` bytes of an entry's payload; None if one is missing or starts a new entry.
fn skip_payload(bytes: &mut slice::Iter<'_, u8>, count: usize) -> Option<()> {
    (0..count).try_for_each(|_| read_payload_byte(bytes).map(drop))
}

/// The next byte of an entry's payload; None if it is missing or starts a new entry.
fn read_payload_byte(bytes: &mut slice::Iter<'_, u8>) -> Option<u8> {
    bytes.next().copied().filter(|byte| byte & ENTRY_START == 0)
}

/// A varint; None if it is cut short, longer than `MAX_CHUNKS` or over 32 bits, none of which
/// CPython writes.
fn read_varint(bytes: &mut slice::Iter<'_, u8>) -> Option<u32> {
    let mut value: u64 = 0;
    for chunk_index in 0..MAX_CHUNKS {
        let chunk = read_payload_byte(bytes)?;
        value |= u64::from(chunk & CHUNK_VALUE) << (chunk_index * CHUNK_BITS);
        if chunk & CHUNK_MORE == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

/// An svarint: a varint holding the magnitude shifted left by one, with bit 0 set if negative.
fn read_signed_varint(bytes: &mut slice::Iter<'_, u8>) -> Option<i64> {
    let raw = read_varint(bytes)?;
    let magnitude = i64::from(raw >> 1);
    Some(if raw & 1 == 0 { magnitude } else { -magnitude })
}

/// `line` as a source line: CPython keeps lines in a C `int` and numbers them from 1, so
/// anything else is not one.
fn source_line(line: i64) -> Option<u32> {
    let line = i32::try_from(line).ok().filter(|&line| line >= 1)?;
    u32::try_from(line).ok()
}

#[cfg(test)]
mod tests;
