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
pub mod pyobj;
pub mod reader;
mod table;
pub mod task;
pub mod walk;

use std::collections::HashMap;

use lagtrace_common::PyFrameRec;

pub use interp::{InterpError, Interpreter};

use super::frame::Frame;

pub use super::frame::python_short_path as short_path;

/// The Python targets of a trace and their code objects.
#[derive(Default)]
pub struct PyFrames {
    procs: HashMap<u32, (Interpreter, code::CodeCache)>,
    /// Code objects are read on this thread, not the caller's.
    reader: reader::Reader,
    /// Frames named `[unknown python]` since the last `take_deferred`
    /// because their code object's read has not answered yet.
    deferred: u64,
    /// The asyncio Task of open spans (`task.rs`).
    tasks: task::TaskNames,
}

impl PyFrames {
    pub fn add(&mut self, it: Interpreter) {
        let cache = code::CodeCache::new(it.pid, it.layout.code, self.reader.clone());
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

    /// One frame: `qualname (dir/file.py:line)`, or `[unknown python]`
    /// when its code object cannot be read (or is still being read: see
    /// [`PyFrames::take_deferred`]).
    pub fn frame(&mut self, pid: u32, rec: &PyFrameRec) -> Frame {
        let Some((_, cache)) = self.procs.get_mut(&pid) else {
            return Frame::unknown_python();
        };
        match cache.get_line(rec.code, rec.instr_offset) {
            Some((c, line)) => Frame::python(
                c.name.clone(),
                c.filename.clone(),
                line.and_then(|l| u32::try_from(l).ok()),
            ),
            None => {
                if cache.is_pending(rec.code) {
                    self.deferred += 1;
                }
                Frame::unknown_python()
            }
        }
    }

    /// Frames left unknown since the last call because their code object
    /// was still being read; resets the count.
    pub fn take_deferred(&mut self) -> u64 {
        std::mem::take(&mut self.deferred)
    }

    /// Reads queued or running on the reader thread.
    pub fn reads_in_flight(&self) -> usize {
        self.reader.busy()
    }

    /// Read, on the reader thread, which asyncio Task `tid` of `pid` runs
    /// now, while its `iteration` is open; once per iteration.
    pub fn look_up_task(&mut self, pid: u32, tid: u32, iteration: u64) {
        if let Some((it, _)) = self.procs.get(&pid) {
            self.tasks.start(&self.reader, it, tid, iteration);
        }
    }

    /// The Task that `tid`'s span of `iteration` ran, checked
    /// against the span (`end_ns`, the code objects of its Python frames).
    /// A read still running counts as deferred, so the span can be parked.
    pub fn task_name(
        &mut self,
        pid: u32,
        tid: u32,
        iteration: u64,
        end_ns: u64,
        codes: &[u64],
    ) -> Option<task::RunningTask> {
        match self.tasks.name(pid, tid, iteration, end_ns, codes) {
            task::Lookup::Waiting => {
                self.deferred += 1;
                None
            }
            task::Lookup::Known(name) => name,
        }
    }

    /// Forget Task look-ups of threads that are gone.
    pub fn retain_tasks(&mut self, live_tid: impl Fn(u32) -> bool) {
        let procs = &self.procs;
        self.tasks.retain(live_tid, |pid| procs.contains_key(&pid));
    }

    /// A sample's Python frames (innermost first in `recs`), outermost first.
    pub fn frames(&mut self, pid: u32, recs: &[PyFrameRec]) -> Vec<Frame> {
        recs.iter().rev().map(|r| self.frame(pid, r)).collect()
    }
}

/// True when the object at `addr` is of type `code`: its `ob_type`'s
/// `tp_name` (offset 24 in `PyTypeObject` on every 3.x) reads "code".
fn is_code_object(mem: &mem::Mem, addr: u64) -> bool {
    let name = mem
        .u64(addr + 8)
        .and_then(|ty| mem.u64(ty + 24))
        .and_then(|p| mem.array::<5>(p));
    matches!(name, Ok(n) if &n == b"code\0")
}

/// Check at attach that the layout fits the target: walk a thread's frames
/// in userspace with the kernel's offsets and read their code objects.
/// Returns how many frames resolved (0 when no thread ran Python code, so
/// nothing could be checked); an error when frames were found but some of
/// them are not readable code objects. A few tries, as the target runs on.
pub fn check(it: &Interpreter) -> Result<usize, String> {
    let mem = mem::Mem { pid: it.pid };
    let o = &it.layout.kernel;
    // `PyThreadState` starts with `prev`, `next`, `interp` on 3.8-3.13: the
    // first thread must point back at its interpreter.
    let back = mem.u64(it.interp_head_addr()).and_then(|interp| {
        let ts = mem.u64(interp + u64::from(o.interp_tstate_head))?;
        Ok((interp, ts, mem.u64(ts + 16)?))
    });
    if !matches!(back, Ok((interp, ts, owner)) if ts != 0 && owner == interp) {
        return Err(format!(
            "no interpreter with threads at _PyRuntime with the CPython 3.{} layout",
            it.version.1
        ));
    }
    let mut found = 0;
    for _ in 0..3 {
        let Some(ts) = walk::thread_state(&mem, it, walk::Pick::FirstWithFrame) else {
            continue;
        };
        let (recs, _) = walk::walk(&mem, it, ts);
        found = found.max(recs.len());
        let resolved = recs
            .iter()
            .filter(|r| {
                is_code_object(&mem, r.code)
                    && code::read_code(&mem, &it.layout.code, r.code).is_ok()
            })
            .count();
        // Every frame of a right layout is a code object; a wrong one
        // wanders into other memory within a frame or two.
        if resolved > 0 && resolved == recs.len() {
            return Ok(resolved);
        }
    }
    if found > 0 {
        return Err(format!(
            "its frames do not read as code objects with the CPython 3.{} layout",
            it.version.1
        ));
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
