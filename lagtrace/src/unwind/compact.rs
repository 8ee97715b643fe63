//! From gimli's CFI rows to the compact rows the kernel walks.
//!
//! x86_64 code uses a handful of rules: CFA = rsp+off or rbp+off, the return
//! address at CFA-8, rbp saved at CFA+off or unchanged. PLT stubs use one
//! well-known CFA expression, signal trampolines are marked in their CIE,
//! and the outermost frames (`_start`, `clone`) leave the return address
//! undefined. Everything else becomes `CFA_NONE` (the kernel then tries the
//! frame pointer), so no rule is ever approximated.
//! Pure: it takes section bytes and returns rows, for tests without root.
use gimli::{
    CfaRule, CieOrFde, RegisterRule, UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use lagtrace_common::{
    CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, RBP_SAVED, UnwindRow,
};

pub type R<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// Counts of what a file's CFI held, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    pub fdes: u64,
    /// gimli rows seen, before merging.
    pub rows_in: u64,
    /// Rows whose rule is none of the supported ones.
    pub unsupported: u64,
    /// FDEs skipped: unparsable, or above 4 GiB.
    pub skipped_fdes: u64,
}

/// The rule of one gimli row, as a compact row at `pc`.
pub fn compact_row<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    row: &UnwindTableRow<usize>,
    signal: bool,
    pc: u32,
) -> UnwindRow {
    let none = UnwindRow {
        pc,
        ..Default::default()
    };
    if signal {
        return UnwindRow {
            pc,
            rule: CFA_SIGNAL,
            ..Default::default()
        };
    }
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                pc,
                rule: CFA_END,
                ..Default::default()
            };
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return none,
    }
    let (kind, cfa_off) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(off) = u16::try_from(*offset) else {
                return none;
            };
            match *register {
                X86_64::RSP => (CFA_RSP, off),
                X86_64::RBP => (CFA_RBP, off),
                _ => return none,
            }
        }
        CfaRule::Expression(e) => {
            match e.get(section).ok().and_then(|e| plt_threshold(e.0.slice())) {
                Some(t) => (CFA_PLT, u16::from(t)),
                None => return none,
            }
        }
    };
    let (rbp_flag, rbp_off) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => (0, 0),
        Some(RegisterRule::Offset(o)) if o % 8 == 0 && i8::try_from(o / 8).is_ok() => {
            (RBP_SAVED, (o / 8) as i8)
        }
        _ => return none,
    };
    UnwindRow {
        pc,
        cfa_off,
        rule: kind | rbp_flag,
        rbp_off,
    }
}

/// The PLT's CFA expression, `rsp + 8 + ((rip & 15) >= N) << 3`, as binutils
/// emits it for `.plt` (N = 11, or 10 with IBT): returns N.
pub fn plt_threshold(expr: &[u8]) -> Option<u8> {
    const BREG7: u8 = 0x77;
    const BREG16: u8 = 0x80;
    const LIT0: u8 = 0x30;
    const AND: u8 = 0x1a;
    const GE: u8 = 0x2a;
    const SHL: u8 = 0x24;
    const PLUS: u8 = 0x22;
    match expr {
        [BREG7, 8, BREG16, 0, l15, AND, ln, GE, l3, SHL, PLUS]
            if *l15 == LIT0 + 15 && *l3 == LIT0 + 3 && (LIT0..LIT0 + 32).contains(ln) =>
        {
            Some(ln - LIT0)
        }
        _ => None,
    }
}

/// Every row of every FDE in `section`, compacted, sorted and merged: each
/// row holds from its `pc` to the next row's; gaps between FDEs get a
/// `CFA_NONE` row.
pub fn compact_section<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &gimli::BaseAddresses,
) -> (Vec<UnwindRow>, CompactStats) {
    let mut stats = CompactStats::default();
    // (start, end, rows of the FDE)
    let mut fdes: Vec<(u64, u64, Vec<UnwindRow>)> = Vec::new();
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // A damaged entry ends the walk: later offsets can't be trusted.
            Err(_) => {
                stats.skipped_fdes += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            stats.skipped_fdes += 1;
            continue;
        };
        stats.fdes += 1;
        let (start, end) = (fde.initial_address(), fde.end_address());
        if end > u64::from(u32::MAX) || start >= end {
            stats.skipped_fdes += 1;
            continue;
        }
        let signal = fde.cie().is_signal_trampoline();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            stats.skipped_fdes += 1;
            continue;
        };
        let mut rows = Vec::new();
        while let Ok(Some(row)) = table.next_row() {
            stats.rows_in += 1;
            let r = compact_row(section, row, signal, row.start_address() as u32);
            if r.rule == CFA_NONE {
                stats.unsupported += 1;
            }
            rows.push(r);
        }
        fdes.push((start, end, rows));
    }
    fdes.sort_by_key(|f| f.0);
    let mut out: Vec<UnwindRow> = Vec::new();
    let mut push = |r: UnwindRow| {
        match out.last_mut() {
            // A later FDE starting where the last ended replaces its gap row.
            Some(last) if last.pc == r.pc => *last = r,
            // Same rule as the row before: nothing to add.
            Some(last) if same_rule(last, &r) => {}
            _ => out.push(r),
        }
    };
    for (i, (_, end, rows)) in fdes.iter().enumerate() {
        for r in rows {
            push(*r);
        }
        let next_start = fdes.get(i + 1).map(|f| f.0);
        if next_start != Some(*end) {
            push(UnwindRow {
                pc: *end as u32,
                ..Default::default()
            });
        }
    }
    (out, stats)
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.cfa_off, a.rule, a.rbp_off) == (b.cfa_off, b.rule, b.rbp_off)
}

/// The row that covers `pc` (the last with `row.pc <= pc`), as the kernel
/// finds it.
pub fn lookup(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
    let i = rows.partition_point(|r| r.pc <= pc);
    rows.get(i.checked_sub(1)?)
}
