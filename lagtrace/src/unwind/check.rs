//! Tests of the compaction against gimli's own row iteration on real
//! binaries: libc, pyenv's libpython3.11 and the tokio test app. Every
//! compacted rule, looked up as the kernel looks it up, must mean exactly
//! what gimli's row at that PC says (or be `CFA_NONE` where gimli's rule is
//! one the kernel does not follow).
use std::path::{Path, PathBuf};

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, UnwindTableRow, X86_64,
};
use lagtrace_common::{
    CFA_END, CFA_MASK, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, RBP_SAVED, UnwindRow,
};
use object::{Object, ObjectSection};

use super::compact::{compact_section, lookup};

/// Does compacted `got` mean what gimli's `row` says?
fn agrees(got: &UnwindRow, row: &UnwindTableRow<usize>, signal: bool) -> bool {
    let ra = row.register(X86_64::RA);
    let rbp = row.register(X86_64::RBP);
    let cfa = row.cfa();
    let rbp_ok = |r: &UnwindRow| match (r.rule & RBP_SAVED != 0, &rbp) {
        (true, Some(RegisterRule::Offset(o))) => *o == i64::from(r.rbp_off) * 8,
        (false, None | Some(RegisterRule::SameValue)) => true,
        _ => false,
    };
    let cfa_is = |reg, off: u16| {
        matches!(cfa, CfaRule::RegisterAndOffset { register, offset }
            if *register == reg && *offset == i64::from(off))
    };
    let ra_at_cfa_8 = matches!(ra, Some(RegisterRule::Offset(-8)));
    match got.rule & CFA_MASK {
        CFA_SIGNAL => signal,
        _ if signal => false,
        CFA_END => matches!(ra, Some(RegisterRule::Undefined)),
        CFA_RSP => ra_at_cfa_8 && cfa_is(X86_64::RSP, got.cfa_off) && rbp_ok(got),
        CFA_RBP => ra_at_cfa_8 && cfa_is(X86_64::RBP, got.cfa_off) && rbp_ok(got),
        CFA_PLT => ra_at_cfa_8 && matches!(cfa, CfaRule::Expression(_)) && rbp_ok(got),
        // Not followed: gimli's rule must be one the kernel can't follow.
        CFA_NONE => {
            let supported_cfa = matches!(cfa, CfaRule::RegisterAndOffset { register, offset }
                    if (*register == X86_64::RSP || *register == X86_64::RBP)
                        && u16::try_from(*offset).is_ok());
            let supported_rbp = matches!(rbp, None | Some(RegisterRule::SameValue))
                || matches!(rbp, Some(RegisterRule::Offset(o))
                    if o % 8 == 0 && i8::try_from(o / 8).is_ok());
            let end = matches!(ra, Some(RegisterRule::Undefined));
            !(end || ra_at_cfa_8 && supported_cfa && supported_rbp)
        }
        _ => false,
    }
}

/// Check every FDE's rows of `path` at their first, middle and last PC.
/// Returns the number of PCs checked, or None (with a SKIP) if absent.
fn check_file(path: &Path) -> Option<u64> {
    let Ok(data) = std::fs::read(path) else {
        println!("SKIP: {} not found", path.display());
        return None;
    };
    let obj = object::File::parse(&*data).expect("ELF");
    let sec = obj.section_by_name(".eh_frame").expect(".eh_frame");
    let bytes = sec.uncompressed_data().expect("section data");
    let mut eh = EhFrame::new(&bytes, LittleEndian);
    eh.set_address_size(8);
    let text = obj.section_by_name(".text").map_or(0, |s| s.address());
    let got = obj.section_by_name(".got").map_or(0, |s| s.address());
    let bases = BaseAddresses::default()
        .set_eh_frame(sec.address())
        .set_text(text)
        .set_got(got);
    let (rows, stats) = compact_section(&eh, &bases);
    assert!(!rows.is_empty() && stats.fdes > 0, "{}", path.display());
    assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc), "rows sorted");
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = eh.entries(&bases);
    let (mut checked, mut bad) = (0u64, Vec::new());
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let signal = fde.cie().is_signal_trampoline();
        let mut table = fde.rows(&eh, &bases, &mut ctx).expect("rows");
        while let Ok(Some(row)) = table.next_row() {
            let (start, end) = (row.start_address(), row.end_address());
            for pc in [start, start + (end - start) / 2, end - 1] {
                let got = lookup(&rows, pc as u32).expect("a row covers every FDE's PC");
                checked += 1;
                if !agrees(got, row, signal) {
                    bad.push(format!(
                        "pc {pc:#x}: compact {got:?}, gimli {:?}",
                        row.cfa()
                    ));
                }
            }
        }
    }
    // FDEs may overlap (rare, e.g. a cold part): allow a handful that way.
    assert!(
        bad.len() as u64 * 1000 <= checked,
        "{}: {} of {checked} PCs disagree with gimli, e.g. {:?}",
        path.display(),
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    println!(
        "CHECK {}: {checked} PCs agree with gimli ({} disagree), {} rows from {} gimli rows",
        path.display(),
        bad.len(),
        rows.len(),
        stats.rows_in
    );
    Some(checked)
}

fn pyenv_libpython(version: &str) -> Option<PathBuf> {
    let root = format!(
        "{}/.pyenv/versions",
        std::env::var("HOME").unwrap_or_default()
    );
    let dir = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{version}."))
        })?;
    let lib = dir.path().join(format!("lib/libpython{version}.so.1.0"));
    lib.exists().then_some(lib)
}

#[test]
fn libc_rows_agree_with_gimli() {
    check_file(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"));
}

#[test]
fn libpython311_rows_agree_with_gimli() {
    match pyenv_libpython("3.11") {
        Some(p) => {
            check_file(&p);
        }
        None => println!("SKIP: no pyenv CPython 3.11 with libpython3.11.so"),
    }
}

#[test]
fn tokio_test_app_rows_agree_with_gimli() {
    // Unit tests run from target/<profile>/deps; the test app sits next to it.
    let exe = std::env::current_exe().expect("test exe");
    let app = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tokio_stalls"));
    match app.filter(|p| p.exists()) {
        Some(p) => {
            check_file(&p);
        }
        None => {
            println!("SKIP: tokio_stalls not built (cargo build --release -p lagtrace-testapps)")
        }
    }
}

#[test]
fn plt_expression_is_recognised() {
    // binutils' .plt CFA: rsp + 8 + ((rip & 15) >= 11) << 3.
    let expr = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
    assert_eq!(super::compact::plt_threshold(&expr), Some(11));
    assert_eq!(super::compact::plt_threshold(&expr[..10]), None);
}
