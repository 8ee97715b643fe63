//! CPython frames read by the kernel at the instant of each sample, and
//! resolved here: the kernel pushes (code object address, instruction
//! offset) pairs; this module finds each target's interpreter and layout
//! at attach (`interp`, `layout`, `debug_offsets`, the generated `table`)
//! and turns the pairs into `qualname (dir/file.py:line)` (`code`,
//! `linetable`).
//!
//! It must not read the target per sample: a code object is read once and
//! re-checked at most once a second (see `code.rs`).
pub mod code;
pub mod debug_offsets;
pub mod interp;
pub mod layout;
pub mod linetable;
pub mod mem;
mod table;
pub mod walk;

use std::collections::HashMap;

use lagtrace_common::PyFrameRec;

pub use interp::{InterpError, Interpreter};

/// `dir/file.py`: the file and its parent folder, which tells
/// `json/decoder.py` from `app/decoder.py` without a full path.
pub fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

/// The Python targets of a trace and their code objects.
#[derive(Default)]
pub struct PyFrames {
    procs: HashMap<u32, (Interpreter, code::CodeCache)>,
}

impl PyFrames {
    pub fn add(&mut self, it: Interpreter) {
        let cache = code::CodeCache::new(it.pid, it.layout.code);
        self.procs.insert(it.pid, (it, cache));
    }

    /// Forget a target (it exec'd another program); true if it was one.
    pub fn remove(&mut self, pid: u32) -> bool {
        self.procs.remove(&pid).is_some()
    }

    pub fn has(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn any(&self) -> bool {
        !self.procs.is_empty()
    }

    /// Code objects read and entries found stale, over all targets.
    pub fn reads(&self) -> (u64, u64) {
        self.procs
            .values()
            .fold((0, 0), |(r, s), (_, c)| (r + c.reads, s + c.stale))
    }

    /// One frame's name: `qualname (dir/file.py:line)`, or `[unknown python]`
    /// when its code object cannot be read.
    pub fn frame(&mut self, pid: u32, rec: &PyFrameRec) -> String {
        let Some((_, cache)) = self.procs.get_mut(&pid) else {
            return "[unknown python]".into();
        };
        match cache.get_line(rec.code, rec.instr_offset) {
            Some((c, Some(line))) => format!("{} ({}:{line})", c.name, short_path(&c.filename)),
            Some((c, None)) => format!("{} ({})", c.name, short_path(&c.filename)),
            None => "[unknown python]".into(),
        }
    }

    /// A sample's Python frames (innermost first in `recs`), outermost first.
    pub fn frames(&mut self, pid: u32, recs: &[PyFrameRec]) -> Vec<String> {
        recs.iter().rev().map(|r| self.frame(pid, r)).collect()
    }
}

#[cfg(test)]
mod tests;
