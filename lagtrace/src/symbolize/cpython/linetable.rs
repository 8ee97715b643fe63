//! Instruction offset → line, in each version's line-table format.
//!
//! Formats (CPython's Objects/lnotab_notes.txt and Objects/locations.md):
//! - `co_lnotab` (≤3.9): byte pairs (bytecode delta, line delta as i8);
//! - `co_linetable` of 3.10: byte pairs (bytecode length, line delta as i8,
//!   -128 = no line), each covering `[start, start + length)`;
//! - `co_linetable` of 3.11+: location entries, each covering 1–8 code units
//!   with a line delta in one of five encodings.
//!
//! The table comes from the target: every loop is bounded by its length.
use super::layout::LineTable;

/// The line of the instruction at byte `offset`, or `None` when the table
/// says the instruction has none (or ends before it).
pub fn line_of(kind: LineTable, table: &[u8], firstlineno: i64, offset: u64) -> Option<i64> {
    match kind {
        LineTable::Lnotab => Some(lnotab(table, firstlineno, offset)),
        LineTable::Pep626 => pep626(table, firstlineno, offset),
        LineTable::Locations => locations(table, firstlineno, offset),
    }
}

/// `PyCode_Addr2Line` of 3.8/3.9.
fn lnotab(table: &[u8], firstlineno: i64, offset: u64) -> i64 {
    let (mut line, mut addr) = (firstlineno, 0u64);
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// `_PyLineTable_NextAddressRange` of 3.10.
fn pep626(table: &[u8], firstlineno: i64, offset: u64) -> Option<i64> {
    let (mut line, mut end) = (firstlineno, 0u64);
    for pair in table.chunks_exact(2) {
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if offset < end {
            return here;
        }
    }
    None
}

/// A varint of the location table: 6-bit chunks, low first, bit 6 = more.
fn varint(it: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut b = it.next()?;
    let mut v = u64::from(b & 63);
    let mut shift = 0;
    while b & 64 != 0 && shift < 60 {
        b = it.next()?;
        shift += 6;
        v |= u64::from(b & 63) << shift;
    }
    Some(v)
}

fn svarint(it: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let u = varint(it)?;
    Some(if u & 1 != 0 {
        -((u >> 1) as i64)
    } else {
        (u >> 1) as i64
    })
}

/// The location table of 3.11+ (Objects/locations.md).
fn locations(table: &[u8], firstlineno: i64, offset: u64) -> Option<i64> {
    let mut it = table.iter().copied().peekable();
    let (mut line, mut start) = (firstlineno, 0u64);
    while let Some(first) = it.next() {
        if first & 0x80 == 0 {
            return None; // not at an entry start: a corrupt table
        }
        let code = (first >> 3) & 15;
        let end = start + 2 * (u64::from(first & 7) + 1);
        let here = match code {
            15 => None,
            14 => {
                line += svarint(&mut it)?;
                varint(&mut it)?; // end line delta
                varint(&mut it)?; // column + 1
                varint(&mut it)?; // end column + 1
                Some(line)
            }
            13 => {
                line += svarint(&mut it)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                it.next()?;
                it.next()?;
                Some(line)
            }
            _ => {
                it.next()?;
                Some(line)
            }
        };
        if offset < end {
            return here;
        }
        start = end;
        // Bytes until the next entry start belong to this entry.
        while it.peek().is_some_and(|b| b & 0x80 == 0) {
            it.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_adds_deltas_up_to_the_offset() {
        // 0..6 line 10, 6..10 line 11, 10.. line 9.
        let t = [6, 1, 4, (-2i8) as u8];
        assert_eq!(lnotab(&t, 10, 0), 10);
        assert_eq!(lnotab(&t, 10, 6), 11);
        assert_eq!(lnotab(&t, 10, 9), 11);
        assert_eq!(lnotab(&t, 10, 12), 9);
    }

    #[test]
    fn pep626_ranges_and_no_line() {
        let t = [4, 0, 6, 2, 2, 0x80];
        assert_eq!(pep626(&t, 5, 0), Some(5));
        assert_eq!(pep626(&t, 5, 5), Some(7));
        assert_eq!(pep626(&t, 5, 10), None);
        assert_eq!(pep626(&t, 5, 12), None);
    }

    #[test]
    fn location_entries_of_each_kind() {
        // short form (code 0, 1 unit), one-line form +1 (code 11, 2 units),
        // no-column form -3 (code 13, 1 unit), long form +2 (code 14), none.
        let t = [
            0x80,
            0x05, //
            0x80 | (11 << 3) | 1,
            4,
            9, //
            0x80 | (13 << 3),
            7, // svarint 7 = -(3)
            0x80 | (14 << 3),
            4,
            0,
            1,
            1, // +2
            0x80 | (15 << 3),
        ];
        assert_eq!(locations(&t, 20, 0), Some(20));
        assert_eq!(locations(&t, 20, 2), Some(21));
        assert_eq!(locations(&t, 20, 4), Some(21));
        assert_eq!(locations(&t, 20, 6), Some(18));
        assert_eq!(locations(&t, 20, 8), Some(20));
        assert_eq!(locations(&t, 20, 10), None);
        assert_eq!(locations(&t, 20, 100), None);
    }
}
