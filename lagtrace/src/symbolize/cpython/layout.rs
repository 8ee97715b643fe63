//! The layout of one CPython version: the offsets the kernel's frame walk
//! needs (`PyOffsets`, shared with the kernel) and those the code-object
//! reader needs, built from the generated per-version table (3.8–3.12) or
//! the target's own `_Py_DebugOffsets` (3.13+, see `debug_offsets.rs`).
//!
//! What differs between versions beyond plain offsets (how a frame records
//! its instruction, the line-table format, C-stack shim frames) is decided
//! here and only here, from the minor version.
use lagtrace_common::{
    PY_INSTR_LASTI_BYTES, PY_INSTR_LASTI_UNITS, PY_INSTR_POINTER, PY_OFF_NONE, PyOffsets,
};

use super::table::TABLE;

/// A field the version lacks, in [`RawOffsets`].
pub const NONE: u32 = u32::MAX;

/// One line of the generated table: `offsetof()` values from the headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOffsets {
    pub minor: u32,
    pub runtime_interp_head: u32,
    pub interp_tstate_head: u32,
    pub tstate_next: u32,
    pub tstate_thread_id: u32,
    pub tstate_native_thread_id: u32,
    pub tstate_frame: u32,
    pub cframe_current_frame: u32,
    pub frame_back: u32,
    pub frame_code: u32,
    pub frame_instr: u32,
    pub frame_owner: u32,
    pub frame_is_entry: u32,
    pub code_adaptive: u32,
    pub code_filename: u32,
    pub code_name: u32,
    pub code_qualname: u32,
    pub code_firstlineno: u32,
    pub code_linetable: u32,
    pub object_type: u32,
    pub bytes_size: u32,
    pub bytes_data: u32,
    pub unicode_length: u32,
    pub unicode_state: u32,
    pub unicode_ascii_size: u32,
    pub unicode_compact_size: u32,
}

/// How a code object maps instruction offsets to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// `co_lnotab` (≤3.9): (bytecode delta, signed line delta) pairs.
    Lnotab,
    /// `co_linetable` of 3.10: (bytecode length, signed line delta) pairs.
    Pep626,
    /// `co_linetable` of 3.11+: the location table of PEP 657.
    Locations,
}

/// What the code-object reader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u32,
    pub name: u32,
    /// `co_qualname` (3.11+); older versions name functions by `co_name`.
    pub qualname: Option<u32>,
    pub firstlineno: u32,
    pub linetable: u32,
    pub line_table: LineTable,
    pub bytes_size: u32,
    pub bytes_data: u32,
    pub unicode_length: u32,
    pub unicode_state: u32,
    pub unicode_ascii_size: u32,
    pub unicode_compact_size: u32,
}

/// Everything lagtrace knows about one CPython version's structs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u32,
    /// Offset of `interpreters.head` in `_PyRuntime`.
    pub runtime_interp_head: u32,
    /// `PyThreadState.native_thread_id` (3.11+), for userspace's own walk.
    pub native_thread_id: Option<u32>,
    pub kernel: PyOffsets,
    pub code: CodeLayout,
}

/// `FRAME_OWNED_BY_CSTACK` (Include/internal/pycore_frame.h, 3.12+).
const FRAME_OWNED_BY_CSTACK: u8 = 3;

fn off16(v: u32) -> Option<u16> {
    match v {
        NONE => Some(PY_OFF_NONE),
        v => u16::try_from(v).ok().filter(|&v| v != PY_OFF_NONE),
    }
}

impl RawOffsets {
    /// The layout, or `None` when an offset does not fit the kernel's
    /// 16-bit fields (a corrupt `_Py_DebugOffsets`).
    pub fn layout(&self) -> Option<Layout> {
        let m = self.minor;
        let kernel = PyOffsets {
            interp_tstate_head: off16(self.interp_tstate_head)?,
            tstate_next: off16(self.tstate_next)?,
            tstate_thread_id: off16(self.tstate_thread_id)?,
            tstate_frame: off16(self.tstate_frame)?,
            cframe_current_frame: off16(self.cframe_current_frame)?,
            frame_back: off16(self.frame_back)?,
            frame_code: off16(self.frame_code)?,
            frame_instr: off16(self.frame_instr)?,
            frame_owner: off16(self.frame_owner)?,
            frame_is_entry: off16(self.frame_is_entry)?,
            code_adaptive: off16(self.code_adaptive)?,
            instr_kind: match m {
                ..=9 => PY_INSTR_LASTI_BYTES,
                10 => PY_INSTR_LASTI_UNITS,
                _ => PY_INSTR_POINTER,
            },
            owner_cstack: if m >= 12 {
                FRAME_OWNED_BY_CSTACK
            } else {
                u8::MAX
            },
            _pad: [0; 8],
        };
        let code = CodeLayout {
            filename: self.code_filename,
            name: self.code_name,
            qualname: (self.code_qualname != NONE).then_some(self.code_qualname),
            firstlineno: self.code_firstlineno,
            linetable: self.code_linetable,
            line_table: match m {
                ..=9 => LineTable::Lnotab,
                10 => LineTable::Pep626,
                _ => LineTable::Locations,
            },
            bytes_size: self.bytes_size,
            bytes_data: self.bytes_data,
            unicode_length: self.unicode_length,
            unicode_state: self.unicode_state,
            unicode_ascii_size: self.unicode_ascii_size,
            unicode_compact_size: self.unicode_compact_size,
        };
        Some(Layout {
            minor: m,
            runtime_interp_head: self.runtime_interp_head,
            native_thread_id: (self.tstate_native_thread_id != NONE)
                .then_some(self.tstate_native_thread_id),
            kernel,
            code,
        })
    }
}

/// The generated table's entry for 3.`minor`.
pub fn table_entry(minor: u32) -> Option<&'static RawOffsets> {
    TABLE.iter().find(|r| r.minor == minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_version_gives_a_layout() {
        for minor in 8..=13 {
            let raw = table_entry(minor).expect("3.8-3.13 in the table");
            let l = raw.layout().expect("fits");
            assert_eq!(l.kernel.frame_owner == PY_OFF_NONE, minor < 11, "3.{minor}");
            assert_eq!(
                l.kernel.cframe_current_frame == PY_OFF_NONE,
                !(11..=12).contains(&minor),
                "3.{minor}"
            );
            assert_eq!(l.code.qualname.is_some(), minor >= 11, "3.{minor}");
        }
    }
}
