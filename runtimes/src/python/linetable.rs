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
mod tests {
    use super::line_of;

    /// A real code object's location table with CPython's own answers for it, dumped from
    /// Debian's `/usr/bin/python3` (3.11.2): `co_firstlineno`, `co_linetable` and the start line
    /// of each `co_positions()` item, one item per code unit, inline caches included. The dump
    /// script checked that `co_positions()` has `len(co_code) // 2` items and that `co_lines()`
    /// gives the same line as it for every code unit. The functions come from one source file,
    /// compiled whole, with `def`s at lines 1, 10, 21, 28, 46 and 5000 (blank lines before the
    /// last); each fixture shows its function's source.
    struct Fixture {
        first_line: i32,
        linetable: &'static [u8],
        /// The start line per code unit, 0 standing for None.
        co_positions: &'static [u32],
    }

    /// What `line_of` must say for a fixture line: CPython's 0 (None, or module code's
    /// `RESUME`) is not a source line.
    fn expected(line: u32) -> Option<u32> {
        (line != 0).then_some(line)
    }

    const FIXTURES: [(&str, &Fixture); 12] = [
        ("module", &MODULE),
        ("simple", &SIMPLE),
        ("nested_call", &NESTED_CALL),
        ("genexpr", &NESTED_CALL_LOCALS_GENEXPR),
        ("with_lambda_and_comp", &WITH_LAMBDA_AND_COMP),
        ("lambda", &WITH_LAMBDA_AND_COMP_LOCALS_LAMBDA),
        ("listcomp", &WITH_LAMBDA_AND_COMP_LOCALS_LISTCOMP),
        ("long_jumps", &LONG_JUMPS),
        ("guarded", &GUARDED),
        ("high_line", &HIGH_LINE),
        ("module, no columns", &MODULE_NO_COLUMNS),
        ("simple, no columns", &SIMPLE_NO_COLUMNS),
    ];

    #[test]
    fn agrees_with_co_positions_for_every_code_unit() {
        for (name, fixture) in FIXTURES {
            for (index, &line) in (0..).zip(fixture.co_positions) {
                let got = line_of(fixture.linetable, fixture.first_line, index);
                assert_eq!(got, expected(line), "{name}, code unit {index}");
            }
        }
    }

    #[test]
    fn past_the_last_code_unit_is_none() {
        for (name, fixture) in FIXTURES {
            let units = u32::try_from(fixture.co_positions.len()).unwrap();
            for index in [units, units + 1, u32::MAX] {
                let got = line_of(fixture.linetable, fixture.first_line, index);
                assert_eq!(got, None, "{name}, code unit {index}");
            }
        }
    }

    #[test]
    fn a_cut_real_table_gives_its_lines_or_none() {
        for (name, fixture) in FIXTURES {
            let last = u32::try_from(fixture.co_positions.len() - 1).unwrap();
            for cut in 0..fixture.linetable.len() {
                let table = &fixture.linetable[..cut];
                for (index, &line) in (0..).zip(fixture.co_positions) {
                    let got = line_of(table, fixture.first_line, index);
                    assert!(
                        got.is_none() || got == expected(line),
                        "{name}, cut at {cut}"
                    );
                }
                assert_eq!(
                    line_of(table, fixture.first_line, last),
                    None,
                    "{name}, {cut}"
                );
            }
        }
    }

    #[test]
    fn damaged_real_tables_never_panic_nor_give_impossible_lines() {
        for (_, fixture) in FIXTURES {
            let units = u32::try_from(fixture.co_positions.len()).unwrap();
            let sample: Vec<u32> = (0..units).step_by(5).chain([units - 1]).collect();
            for at in 0..fixture.linetable.len() {
                for damage in [0x40, 0x7f, 0x80, 0xc0, 0xff] {
                    let mut table = fixture.linetable.to_vec();
                    table[at] ^= damage;
                    assert_possible_lines(&table, fixture.first_line, sample.iter().copied());
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_nor_give_impossible_lines() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            let len = usize::try_from(xorshift(&mut state) % 48).unwrap();
            let table: Vec<u8> = (0..len)
                .map(|_| xorshift(&mut state).to_le_bytes()[0])
                .collect();
            let [a, b, c, d, ..] = xorshift(&mut state).to_le_bytes();
            let first_line = i32::from_le_bytes([a, b, c, d]);
            let covered = u32::try_from(table.len() * 8 + 1).unwrap();
            assert_possible_lines(&table, first_line, 0..covered);
            assert_possible_lines(&table, 1, 0..covered);
        }
    }

    /// A step of Marsaglia's xorshift64: cheap, deterministic bytes for the garbage tests.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Looks up `indices` and one far past any table: none panics, and every line is one
    /// CPython could have (`1..=i32::MAX`).
    fn assert_possible_lines(table: &[u8], first_line: i32, indices: impl Iterator<Item = u32>) {
        let max = u32::try_from(i32::MAX).unwrap();
        for index in indices.chain([u32::MAX]) {
            if let Some(line) = line_of(table, first_line, index) {
                assert!(
                    (1..=max).contains(&line),
                    "{table:02x?} {first_line} {index}"
                );
            }
        }
    }

    /// The first byte of an entry with `code` covering `units` code units.
    fn entry(code: u8, units: u8) -> u8 {
        0x80 | (code << 3) | (units - 1)
    }

    /// `value` as a varint: 6-bit chunks, lowest first, bit 6 set on all but the last.
    fn varint(mut value: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        while value >= 0x40 {
            bytes.push(0x40 | (value & 0x3f).to_le_bytes()[0]);
            value >>= 6;
        }
        bytes.push(value.to_le_bytes()[0]);
        bytes
    }

    /// `value` as an svarint: the magnitude shifted left by one, bit 0 set if negative.
    fn svarint(value: i32) -> Vec<u8> {
        let magnitude = value.unsigned_abs() << 1;
        varint(if value < 0 { magnitude | 1 } else { magnitude })
    }

    #[test]
    fn the_line_carries_over_every_entry_kind() {
        let table = [
            vec![entry(3, 2), 0x25],
            vec![entry(12, 1), 0x04, 0x09],
            vec![entry(15, 3)],
            [vec![entry(13, 1)], svarint(-1)].concat(),
            [
                vec![entry(14, 1)],
                svarint(100),
                varint(2),
                varint(5),
                varint(300),
            ]
            .concat(),
            vec![entry(11, 1), 0x00, 0x7f],
            vec![entry(10, 8), 0x00, 0x7f],
        ]
        .concat();
        let lines: Vec<_> = (0..18).map(|index| line_of(&table, 10, index)).collect();
        let mut want = vec![
            Some(10),
            Some(10),
            Some(12),
            None,
            None,
            None,
            Some(11),
            Some(111),
        ];
        want.extend([Some(112); 9]);
        want.push(None);
        assert_eq!(lines, want);
    }

    #[test]
    fn multi_chunk_deltas_both_ways() {
        let table = [
            vec![entry(13, 1)],
            svarint(4999),
            vec![entry(13, 1)],
            svarint(-4900),
            vec![entry(14, 1)],
            svarint(70),
            varint(200),
            varint(1),
            varint(129),
        ]
        .concat();
        assert_eq!(line_of(&table, 1, 0), Some(5000));
        assert_eq!(line_of(&table, 1, 1), Some(100));
        assert_eq!(line_of(&table, 1, 2), Some(170));
    }

    #[test]
    fn malformed_tables_are_none() {
        let short = entry(0, 1);
        let long = entry(14, 1);
        let no_columns = entry(13, 1);
        let cases: [&[u8]; 13] = [
            &[],
            &[0x05, short, 0x00],
            &[0x00; 16],
            &[short],
            &[short, 0x80],
            &[entry(10, 1), 0x05],
            &[no_columns],
            &[no_columns, 0x40],
            &[no_columns, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x01],
            &[no_columns, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x3f],
            &[long, 0x02, 0x00, 0x01],
            &[long, 0x02, 0x00, 0x01, short, 0x00],
            &[entry(11, 1), 0x00, 0x80],
        ];
        for table in cases {
            assert_eq!(line_of(table, 1, 0), None, "{table:02x?}");
        }
    }

    #[test]
    fn a_bad_entry_spoils_the_lines_after_it_only() {
        let table = [entry(13, 1), 0x02, 0x12, entry(0, 1), 0x00];
        assert_eq!(line_of(&table, 7, 0), Some(8));
        assert_eq!(line_of(&table, 7, 1), None);
    }

    #[test]
    fn lines_outside_one_to_i32_max_are_none() {
        let up = [vec![entry(13, 1)], svarint(i32::MAX)].concat();
        assert_eq!(line_of(&up, 0, 0), Some(u32::try_from(i32::MAX).unwrap()));
        assert_eq!(line_of(&up, 1, 0), None);
        assert_eq!(line_of(&up, i32::MAX, 0), None);
        let down = [vec![entry(13, 1)], svarint(-i32::MAX)].concat();
        assert_eq!(line_of(&down, i32::MIN, 0), None);
        assert_eq!(line_of(&down, i32::MAX, 0), None);
        assert_eq!(line_of(&[entry(0, 1), 0x00], 0, 0), None);
        assert_eq!(line_of(&[entry(0, 1), 0x00], -3, 0), None);
    }

    #[test]
    fn huge_deltas_pile_up_without_overflow() {
        let step = [vec![entry(13, 8)], svarint(i32::MAX)].concat();
        let table = step.repeat(10_000);
        let max = u32::try_from(i32::MAX).unwrap();
        assert_eq!(line_of(&table, -i32::MAX, 0), None);
        assert_eq!(line_of(&table, -i32::MAX, 8), Some(max));
        assert_eq!(line_of(&table, -i32::MAX, 16), None);
        assert_eq!(line_of(&table, i32::MAX, 79_999), None);
        assert_eq!(line_of(&table, i32::MAX, 80_000), None);
    }

    /// The module: `RESUME` on line 0 (long form, negative delta), then each `def`, the last a
    /// 4954-line jump (3-chunk varint). 21 code units, 112 table bytes.
    const MODULE: Fixture = Fixture {
        first_line: 1,
        linetable: &[
            0xf0, 0x03, 0x01, 0x01, 0x01, 0xf0, 0x02, 0x06, 0x01, 0x11, 0xf0, 0x00, 0x06, 0x01,
            0x11, 0xf0, 0x00, 0x06, 0x01, 0x11, 0xf0, 0x12, 0x08, 0x01, 0x12, 0xf0, 0x00, 0x08,
            0x01, 0x12, 0xf0, 0x00, 0x08, 0x01, 0x12, 0xf0, 0x16, 0x04, 0x01, 0x22, 0xf0, 0x00,
            0x04, 0x01, 0x22, 0xf0, 0x00, 0x04, 0x01, 0x22, 0xf0, 0x0e, 0x0f, 0x01, 0x0f, 0xf0,
            0x00, 0x0f, 0x01, 0x0f, 0xf0, 0x00, 0x0f, 0x01, 0x0f, 0xf0, 0x24, 0x07, 0x01, 0x14,
            0xf0, 0x00, 0x07, 0x01, 0x14, 0xf0, 0x00, 0x07, 0x01, 0x14, 0xf0, 0x74, 0x5a, 0x02,
            0x5e, 0x02, 0x01, 0x0f, 0xf0, 0x00, 0x5e, 0x02, 0x01, 0x0f, 0xf0, 0x00, 0x5e, 0x02,
            0x01, 0x0f, 0xf0, 0x00, 0x5e, 0x02, 0x01, 0x0f, 0xf0, 0x00, 0x5e, 0x02, 0x01, 0x0f,
        ],
        co_positions: &[
            0, 1, 1, 1, 10, 10, 10, 21, 21, 21, 28, 28, 28, 46, 46, 46, 5000, 5000, 5000, 5000,
            5000,
        ],
    };

    /// A loop, with a blank line and a comment line (no code) before it. 34 code units, 54 table
    /// bytes.
    ///
    /// ```text
    /// def simple(a, b):
    ///     total = a + b
    ///
    ///     # a comment line and the blank line above carry no code
    ///     for i in range(b):
    ///         total += i * a
    ///     return total
    /// ```
    const SIMPLE: Fixture = Fixture {
        first_line: 1,
        linetable: &[
            0x80, 0x00, 0xd8, 0x0c, 0x0d, 0x90, 0x01, 0x89, 0x45, 0x80, 0x45, 0xf5, 0x06, 0x00,
            0x0e, 0x13, 0x90, 0x31, 0x89, 0x58, 0x8c, 0x58, 0xf0, 0x00, 0x01, 0x05, 0x17, 0xf0,
            0x00, 0x01, 0x05, 0x17, 0x88, 0x01, 0xd8, 0x08, 0x0d, 0x90, 0x11, 0x90, 0x51, 0x91,
            0x15, 0x89, 0x0e, 0x88, 0x05, 0x88, 0x05, 0xd8, 0x0b, 0x10, 0x80, 0x4c,
        ],
        co_positions: &[
            1, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6,
            6, 6, 6, 7, 7,
        ],
    };

    /// A call whose arguments span lines, around a generator expression. 55 code units, 74 table
    /// bytes.
    ///
    /// ```text
    /// def nested_call(xs):
    ///     result = max(
    ///         len(xs),
    ///         sum(
    ///             x * 2
    ///             for x in xs
    ///         ),
    ///     )
    ///     return result
    /// ```
    const NESTED_CALL: Fixture = Fixture {
        first_line: 10,
        linetable: &[
            0x80, 0x00, 0xdd, 0x0d, 0x10, 0xdd, 0x08, 0x0b, 0x88, 0x42, 0x89, 0x07, 0x8c, 0x07,
            0xdd, 0x08, 0x0b, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xe0,
            0x15, 0x17, 0xf0, 0x05, 0x03, 0x0c, 0x0a, 0xf1, 0x00, 0x03, 0x0c, 0x0a, 0xf4, 0x00,
            0x03, 0x0c, 0x0a, 0xf1, 0x00, 0x03, 0x09, 0x0a, 0xf4, 0x00, 0x03, 0x09, 0x0a, 0xf1,
            0x05, 0x06, 0x0e, 0x06, 0xf4, 0x00, 0x06, 0x0e, 0x06, 0x80, 0x46, 0xf0, 0x0e, 0x00,
            0x0c, 0x12, 0x80, 0x4d,
        ],
        co_positions: &[
            10, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 13,
            13, 13, 13, 13, 13, 13, 13, 15, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
            13, 11, 11, 11, 11, 11, 11, 11, 11, 18, 18,
        ],
    };

    /// The generator expression in `nested_call`. 16 code units, 58 table bytes.
    const NESTED_CALL_LOCALS_GENEXPR: Fixture = Fixture {
        first_line: 13,
        linetable: &[
            0xe8, 0x00, 0xe8, 0x00, 0x80, 0x00, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03,
            0x0c, 0x0a, 0xe0, 0x10, 0x11, 0xf0, 0x03, 0x00, 0x0d, 0x0e, 0x90, 0x01, 0x89, 0x45,
            0xf0, 0x03, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03, 0x0c,
            0x0a, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03, 0x0c, 0x0a, 0xf0, 0x00, 0x03,
            0x0c, 0x0a,
        ],
        co_positions: &[
            13, 13, 13, 13, 13, 15, 14, 14, 14, 14, 13, 13, 13, 13, 13, 13,
        ],
    };

    /// A two-line lambda and a list comprehension (its own code object in 3.11). 46 code units, 60
    /// table bytes.
    ///
    /// ```text
    /// def with_lambda_and_comp(items):
    ///     key = lambda item: (item[1],
    ///                         item[0])
    ///     pairs = [(i, v) for i, v in enumerate(items) if v]
    ///     return sorted(pairs, key=key)
    /// ```
    const WITH_LAMBDA_AND_COMP: Fixture = Fixture {
        first_line: 21,
        linetable: &[
            0x80, 0x00, 0xf0, 0x02, 0x01, 0x0b, 0x21, 0xf0, 0x00, 0x01, 0x0b, 0x21, 0x80, 0x43,
            0xe0, 0x0c, 0x36, 0xd0, 0x0c, 0x36, 0xa5, 0x09, 0xa8, 0x25, 0xd1, 0x20, 0x30, 0xd4,
            0x20, 0x30, 0xd0, 0x0c, 0x36, 0xd1, 0x0c, 0x36, 0xd4, 0x0c, 0x36, 0x80, 0x45, 0xdd,
            0x0b, 0x11, 0x90, 0x25, 0x98, 0x53, 0xd0, 0x0b, 0x21, 0xd1, 0x0b, 0x21, 0xd4, 0x0b,
            0x21, 0xd0, 0x04, 0x21,
        ],
        co_positions: &[
            21, 22, 22, 22, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
            24, 24, 24, 24, 24, 24, 24, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25,
            25, 25,
        ],
    };

    /// The lambda in `with_lambda_and_comp`. 17 code units, 22 table bytes.
    const WITH_LAMBDA_AND_COMP_LOCALS_LAMBDA: Fixture = Fixture {
        first_line: 22,
        linetable: &[
            0x80, 0x00, 0x98, 0x04, 0x98, 0x51, 0x9c, 0x07, 0xd8, 0x18, 0x1c, 0x98, 0x51, 0x9c,
            0x07, 0xf0, 0x03, 0x01, 0x18, 0x21, 0x80, 0x00,
        ],
        co_positions: &[
            22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23, 23, 23, 23, 23, 22, 22,
        ],
    };

    /// The comprehension in `with_lambda_and_comp`. 16 code units, 37 table bytes.
    const WITH_LAMBDA_AND_COMP_LOCALS_LISTCOMP: Fixture = Fixture {
        first_line: 24,
        linetable: &[
            0x80, 0x00, 0xd0, 0x0c, 0x36, 0xd0, 0x0c, 0x36, 0xd0, 0x0c, 0x36, 0x99, 0x04, 0x98,
            0x01, 0x98, 0x31, 0xb0, 0x41, 0xd0, 0x0c, 0x36, 0x88, 0x61, 0x90, 0x11, 0x88, 0x56,
            0xd0, 0x0c, 0x36, 0xd0, 0x0c, 0x36, 0xd0, 0x0c, 0x36,
        ],
        co_positions: &[
            24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
        ],
    };

    /// A loop body over 256 code units: jumps of more than 64 units (the one back needs
    /// `EXTENDED_ARG`), runs of long lines. 303 code units, 486 table bytes.
    ///
    /// ```text
    /// def long_jumps(n):
    ///     acc = 0
    ///     for i in range(n):
    ///         if i % 3 == 0:
    ///             acc += i * 2 + n - 1
    ///         elif i % 5 == 0:
    ///             acc -= i // 2 + n * 3
    ///         else:
    ///             acc ^= (i << 2) | (n >> 1)
    ///         acc = acc + i + i + i + i + i + i + i + i + i + i + i + i + i + i + i
    ///         acc = acc - i - i - i - i - i - i - i - i - i - i - i - i - i - i - i
    ///         acc = acc * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1 * 1
    ///         acc = (acc + 1) % 1000003 + (acc - 1) % 1000033 + (acc * 7) % 1000037
    ///         acc = (acc + 2) % 1000003 + (acc - 2) % 1000033 + (acc * 9) % 1000037
    ///         acc = (acc + 3) % 1000003 + (acc - 3) % 1000033 + (acc * 11) % 1000037
    ///     return acc
    /// ```
    const LONG_JUMPS: Fixture = Fixture {
        first_line: 28,
        linetable: &[
            0x80, 0x00, 0xd8, 0x0a, 0x0b, 0x80, 0x43, 0xdd, 0x0d, 0x12, 0x90, 0x31, 0x89, 0x58,
            0x8c, 0x58, 0xf0, 0x00, 0x0c, 0x05, 0x4f, 0x01, 0xf1, 0x00, 0x0c, 0x05, 0x4f, 0x01,
            0x88, 0x01, 0xd8, 0x0b, 0x0c, 0x88, 0x71, 0x89, 0x35, 0x90, 0x41, 0x8a, 0x3a, 0x88,
            0x3a, 0xd8, 0x0c, 0x0f, 0x90, 0x31, 0x90, 0x71, 0x91, 0x35, 0x98, 0x31, 0x91, 0x39,
            0x98, 0x71, 0x91, 0x3d, 0xd1, 0x0c, 0x20, 0x88, 0x43, 0x88, 0x43, 0xd8, 0x0d, 0x0e,
            0x90, 0x11, 0x89, 0x55, 0x90, 0x61, 0x8a, 0x5a, 0x88, 0x5a, 0xd8, 0x0c, 0x0f, 0x90,
            0x31, 0x98, 0x01, 0x91, 0x36, 0x98, 0x41, 0xa0, 0x01, 0x99, 0x45, 0x91, 0x3e, 0xd1,
            0x0c, 0x21, 0x88, 0x43, 0x88, 0x43, 0xe0, 0x0c, 0x0f, 0x90, 0x41, 0x98, 0x11, 0x91,
            0x46, 0x98, 0x71, 0xa0, 0x41, 0x99, 0x76, 0xd1, 0x13, 0x26, 0xd1, 0x0c, 0x26, 0x88,
            0x43, 0xd8, 0x0e, 0x11, 0x90, 0x41, 0x89, 0x67, 0x98, 0x01, 0x89, 0x6b, 0x98, 0x41,
            0x89, 0x6f, 0xa0, 0x01, 0xd1, 0x0e, 0x21, 0xa0, 0x41, 0xd1, 0x0e, 0x25, 0xa8, 0x01,
            0xd1, 0x0e, 0x29, 0xa8, 0x41, 0xd1, 0x0e, 0x2d, 0xb0, 0x01, 0xd1, 0x0e, 0x31, 0xb0,
            0x41, 0xd1, 0x0e, 0x35, 0xb8, 0x01, 0xd1, 0x0e, 0x39, 0xb8, 0x41, 0xd1, 0x0e, 0x3d,
            0xc0, 0x01, 0xd1, 0x0e, 0x41, 0xc0, 0x41, 0xd1, 0x0e, 0x45, 0xc8, 0x01, 0xd1, 0x0e,
            0x49, 0xc8, 0x41, 0xd1, 0x0e, 0x4d, 0x88, 0x03, 0xd8, 0x0e, 0x11, 0x90, 0x41, 0x89,
            0x67, 0x98, 0x01, 0x89, 0x6b, 0x98, 0x41, 0x89, 0x6f, 0xa0, 0x01, 0xd1, 0x0e, 0x21,
            0xa0, 0x41, 0xd1, 0x0e, 0x25, 0xa8, 0x01, 0xd1, 0x0e, 0x29, 0xa8, 0x41, 0xd1, 0x0e,
            0x2d, 0xb0, 0x01, 0xd1, 0x0e, 0x31, 0xb0, 0x41, 0xd1, 0x0e, 0x35, 0xb8, 0x01, 0xd1,
            0x0e, 0x39, 0xb8, 0x41, 0xd1, 0x0e, 0x3d, 0xc0, 0x01, 0xd1, 0x0e, 0x41, 0xc0, 0x41,
            0xd1, 0x0e, 0x45, 0xc8, 0x01, 0xd1, 0x0e, 0x49, 0xc8, 0x41, 0xd1, 0x0e, 0x4d, 0x88,
            0x03, 0xd8, 0x0e, 0x11, 0x90, 0x41, 0x89, 0x67, 0x98, 0x01, 0x89, 0x6b, 0x98, 0x41,
            0x89, 0x6f, 0xa0, 0x01, 0xd1, 0x0e, 0x21, 0xa0, 0x41, 0xd1, 0x0e, 0x25, 0xa8, 0x01,
            0xd1, 0x0e, 0x29, 0xa8, 0x41, 0xd1, 0x0e, 0x2d, 0xb0, 0x01, 0xd1, 0x0e, 0x31, 0xb0,
            0x41, 0xd1, 0x0e, 0x35, 0xb8, 0x01, 0xd1, 0x0e, 0x39, 0xb8, 0x41, 0xd1, 0x0e, 0x3d,
            0xc0, 0x01, 0xd1, 0x0e, 0x41, 0xc0, 0x41, 0xd1, 0x0e, 0x45, 0xc8, 0x01, 0xd1, 0x0e,
            0x49, 0x88, 0x03, 0xd8, 0x0f, 0x12, 0x90, 0x51, 0x89, 0x77, 0x98, 0x27, 0xd1, 0x0e,
            0x21, 0xa0, 0x53, 0xa8, 0x31, 0xa1, 0x57, 0xb0, 0x07, 0xd1, 0x24, 0x37, 0xd1, 0x0e,
            0x37, 0xb8, 0x33, 0xc0, 0x11, 0xb9, 0x37, 0xc0, 0x67, 0xd1, 0x3a, 0x4d, 0xd1, 0x0e,
            0x4d, 0x88, 0x03, 0xd8, 0x0f, 0x12, 0x90, 0x51, 0x89, 0x77, 0x98, 0x27, 0xd1, 0x0e,
            0x21, 0xa0, 0x53, 0xa8, 0x31, 0xa1, 0x57, 0xb0, 0x07, 0xd1, 0x24, 0x37, 0xd1, 0x0e,
            0x37, 0xb8, 0x33, 0xc0, 0x11, 0xb9, 0x37, 0xc0, 0x67, 0xd1, 0x3a, 0x4d, 0xd1, 0x0e,
            0x4d, 0x88, 0x03, 0xd8, 0x0f, 0x12, 0x90, 0x51, 0x89, 0x77, 0x98, 0x27, 0xd1, 0x0e,
            0x21, 0xa0, 0x53, 0xa8, 0x31, 0xa1, 0x57, 0xb0, 0x07, 0xd1, 0x24, 0x37, 0xd1, 0x0e,
            0x37, 0xb8, 0x33, 0xc0, 0x12, 0xb9, 0x38, 0xc0, 0x77, 0xd1, 0x3a, 0x4e, 0xd1, 0x0e,
            0x4e, 0x88, 0x03, 0x89, 0x03, 0xd8, 0x0b, 0x0e, 0x80, 0x4a,
        ],
        co_positions: &[
            28, 29, 29, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 31,
            31, 31, 31, 31, 31, 31, 31, 31, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
            32, 33, 33, 33, 33, 33, 33, 33, 33, 33, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
            34, 34, 34, 36, 36, 36, 36, 36, 36, 36, 36, 36, 36, 36, 36, 36, 36, 37, 37, 37, 37, 37,
            37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37,
            37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 38, 38,
            38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38,
            38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38, 38,
            38, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39,
            39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39,
            39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
            40, 40, 40, 40, 40, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41,
            41, 41, 41, 41, 41, 41, 41, 41, 41, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42,
            42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 43, 43,
        ],
    };

    /// `try`/`with`/`except`/`finally`: compiler-made cleanup code with no location (code 15). 116
    /// code units, 212 table bytes.
    ///
    /// ```text
    /// def guarded(path):
    ///     try:
    ///         with open(path) as f:
    ///             return f.read()
    ///     except OSError as e:
    ///         return str(e)
    ///     finally:
    ///         path = None
    /// ```
    const GUARDED: Fixture = Fixture {
        first_line: 46,
        linetable: &[
            0x80, 0x00, 0xf0, 0x02, 0x06, 0x05, 0x14, 0xdd, 0x0d, 0x11, 0x90, 0x24, 0x89, 0x5a,
            0x8c, 0x5a, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0x98, 0x31, 0xd8, 0x13, 0x14, 0x97, 0x36,
            0x92, 0x36, 0x91, 0x38, 0x94, 0x38, 0xf0, 0x03, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01,
            0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf1, 0x00,
            0x01, 0x09, 0x1c, 0xf4, 0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0,
            0x0a, 0x00, 0x10, 0x14, 0x88, 0x04, 0x88, 0x04, 0xf0, 0x0b, 0x01, 0x09, 0x1c, 0xf0,
            0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c,
            0xf8, 0xf8, 0xf8, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0,
            0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c, 0xf0, 0x00, 0x01, 0x09, 0x1c,
            0xf8, 0xe5, 0x0b, 0x12, 0xf0, 0x00, 0x01, 0x05, 0x16, 0xf0, 0x00, 0x01, 0x05, 0x16,
            0xf0, 0x00, 0x01, 0x05, 0x16, 0xdd, 0x0f, 0x12, 0x90, 0x31, 0x89, 0x76, 0x8c, 0x76,
            0x88, 0x0d, 0x88, 0x0d, 0x88, 0x0d, 0x88, 0x0d, 0x88, 0x0d, 0xe0, 0x0f, 0x13, 0x88,
            0x04, 0x88, 0x04, 0xf8, 0xf8, 0xf8, 0xf8, 0xf0, 0x07, 0x01, 0x05, 0x16, 0xf8, 0xf8,
            0xf8, 0xf0, 0x05, 0x01, 0x09, 0x1c, 0xf0, 0x0a, 0x00, 0x10, 0x14, 0x88, 0x04, 0x88,
            0x04, 0x88, 0x04, 0xf8, 0x88, 0x74, 0x88, 0x04, 0x88, 0x0b, 0x88, 0x0b, 0x88, 0x0b,
            0x88, 0x0b,
        ],
        co_positions: &[
            46, 47, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 49, 49, 49, 49,
            49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 49, 48, 48, 48, 48, 48, 48, 48,
            48, 48, 48, 48, 48, 53, 53, 53, 48, 48, 48, 48, 0, 0, 0, 48, 48, 48, 48, 48, 0, 50, 50,
            50, 50, 50, 50, 50, 50, 50, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51,
            51, 51, 51, 51, 53, 53, 53, 0, 0, 0, 0, 50, 0, 0, 0, 48, 53, 53, 53, 53, 0, 53, 53, 53,
            53, 53, 53,
        ],
    };

    /// Starting at line 5000, with a 150-line gap (2-chunk varint) and multi-line expressions (long
    /// form). 38 code units, 85 table bytes.
    ///
    /// ```text
    /// def high_line(x):
    ///     y = x + 1
    ///     # (lines 5002-5151 blank)
    ///     z = y * 2
    ///     while z > 0:
    ///         z -= 1
    ///         y = (y +
    ///              z)
    ///     return [y, z,
    ///             x]
    /// ```
    const HIGH_LINE: Fixture = Fixture {
        first_line: 5000,
        linetable: &[
            0x80, 0x00, 0xd8, 0x08, 0x09, 0x88, 0x41, 0x89, 0x05, 0x80, 0x41, 0xf0, 0x6e, 0x04,
            0x00, 0x09, 0x0a, 0x88, 0x41, 0x89, 0x05, 0x80, 0x41, 0xd8, 0x0a, 0x0b, 0x88, 0x61,
            0x8a, 0x25, 0x88, 0x25, 0xd8, 0x08, 0x09, 0x88, 0x51, 0x89, 0x06, 0x88, 0x01, 0xd8,
            0x0d, 0x0e, 0xd8, 0x0d, 0x0e, 0xf1, 0x03, 0x01, 0x0e, 0x0f, 0x88, 0x01, 0xf0, 0x05,
            0x00, 0x0b, 0x0c, 0x88, 0x61, 0x8a, 0x25, 0x88, 0x25, 0xf0, 0x08, 0x00, 0x0d, 0x0e,
            0x88, 0x71, 0xd8, 0x0c, 0x0d, 0xf0, 0x03, 0x01, 0x0c, 0x0f, 0xf0, 0x00, 0x01, 0x05,
            0x0f,
        ],
        co_positions: &[
            5000, 5001, 5001, 5001, 5001, 5001, 5152, 5152, 5152, 5152, 5152, 5153, 5153, 5153,
            5153, 5153, 5153, 5154, 5154, 5154, 5154, 5154, 5155, 5156, 5155, 5155, 5155, 5153,
            5153, 5153, 5153, 5153, 5153, 5157, 5157, 5158, 5157, 5157,
        ],
    };

    /// The module compiled under `-X no_debug_ranges`: code-13 entries only. 21 code units, 44
    /// table bytes.
    const MODULE_NO_COLUMNS: Fixture = Fixture {
        first_line: 1,
        linetable: &[
            0xe8, 0x03, 0xe8, 0x02, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x12, 0xe8, 0x00, 0xe8, 0x00,
            0xe8, 0x16, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x0e, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x24,
            0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x74, 0x5a, 0x02, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x00,
            0xe8, 0x00,
        ],
        co_positions: &[
            0, 1, 1, 1, 10, 10, 10, 21, 21, 21, 28, 28, 28, 46, 46, 46, 5000, 5000, 5000, 5000,
            5000,
        ],
    };

    /// `simple` compiled under `-X no_debug_ranges`: code-13 entries only. 34 code units, 42 table
    /// bytes.
    const SIMPLE_NO_COLUMNS: Fixture = Fixture {
        first_line: 1,
        linetable: &[
            0xe8, 0x00, 0xe8, 0x02, 0xe8, 0x00, 0xe9, 0x00, 0xe8, 0x00, 0xed, 0x06, 0xe8, 0x00,
            0xe9, 0x00, 0xec, 0x00, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x02, 0xe8, 0x00,
            0xe8, 0x00, 0xe9, 0x00, 0xe9, 0x00, 0xe8, 0x00, 0xe8, 0x00, 0xe8, 0x02, 0xe8, 0x00,
        ],
        co_positions: &[
            1, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6,
            6, 6, 6, 7, 7,
        ],
    };
}
