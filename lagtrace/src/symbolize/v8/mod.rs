//! Node.js JS frames without any flag: the kernel reads them from V8's own
//! frames during the native walk (`lagtrace-ebpf/src/v8.rs`) and pushes,
//! per JS frame, the function's `SharedFunctionInfo` address, the index of
//! the native frame it was found in, and a check of the function's name
//! word. This module names them (`metadata` gives V8's layouts from the
//! node binary's `v8dbg_*` symbols, `heap` reads the objects) and puts them
//! in place of the native frames they stand for (`merge`).
//!
//! V8's GC moves objects: an address read at the sample can hold another
//! object when lagtrace reads it. So every read checks instance types, and
//! a cached function is used for a frame only when the name word the
//! kernel saw matches the one read here; on a mismatch the function is
//! read again, and until it matches the frame is `[unknown js]`. It must
//! never name a function that was not on the stack.
//!
//! Reads run on a reader thread (`cpython::reader`), never on the thread
//! that drains the ring buffer; a frame whose read has not answered yet is
//! `[unknown js]` and counted as deferred, so its span can wait for it.
pub mod heap;
pub mod merge;
pub mod metadata;

use std::{
    collections::HashMap,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use lagtrace_common::{LANG_CHECK_SHIFT, LANG_FRAME_JS, LangFrameRec, js_name_check};

use super::{
    cpython::{
        mem::Mem,
        reader::{Pending, Poll, Reader},
    },
    frame::{Frame, FrameKind},
};
pub use heap::FunctionInfo;
use heap::Heap;
use metadata::V8Layout;

/// The module of JS frames read from V8's frames.
pub const V8_MODULE: &str = "[v8]";
/// A JS frame whose function could not be read (or not yet).
pub const UNKNOWN_JS: &str = "[unknown js]";
/// Bound on cached functions per process.
const MAX_FUNCTIONS: usize = 1 << 16;
/// How long an address whose read failed stays `[unknown js]` before it
/// is read again (the GC may have put a function there since).
const RETRY: Duration = Duration::from_secs(1);
/// Most reads awaiting a late answer per process.
const MAX_PENDING: usize = 256;

/// True when the environment says `LAGTRACE_V8=off`: node targets keep
/// native frames only (to compare costs, or to work around a V8 build
/// lagtrace misreads).
pub fn turned_off() -> bool {
    std::env::var_os("LAGTRACE_V8").is_some_and(|v| v == "off")
}

/// True for a language frame the kernel read from V8.
pub fn is_js(rec: &LangFrameRec) -> bool {
    rec.flags & LANG_FRAME_JS != 0
}

/// A function as named here.
type Resolved = FunctionInfo;

impl FunctionInfo {
    fn frame(&self) -> Frame {
        let name = if self.name.is_empty() {
            "(anonymous)".to_string()
        } else {
            self.name.clone()
        };
        Frame {
            kind: FrameKind::Js,
            function: name,
            file: self.script.clone(),
            line: self.line,
            module: Some(V8_MODULE.into()),
            offset: None,
            inlined: false,
        }
    }
}

enum Slot {
    Ready(Arc<Resolved>),
    /// The read failed (not a function there, or it moved while read):
    /// tried again after [`RETRY`].
    Failed(Instant),
    Pending(Pending<io::Result<Resolved>>),
}

impl Slot {
    fn answer(r: io::Result<Resolved>) -> Self {
        match r {
            Ok(r) => Slot::Ready(Arc::new(r)),
            Err(_) => Slot::Failed(Instant::now()),
        }
    }
}

struct Proc {
    layout: Option<Arc<V8Layout>>,
    functions: HashMap<u64, Slot>,
}

/// The node targets of a trace and their functions.
#[derive(Default)]
pub struct JsFrames {
    procs: HashMap<u32, Proc>,
    reader: Reader,
    deferred: u64,
    /// Functions read, and cached ones found stale by the name check.
    pub reads: u64,
    pub stale: u64,
}

/// Read one function (on the reader thread).
fn read_function(pid: u32, layout: &V8Layout, sfi: u64) -> io::Result<Resolved> {
    let heap = Heap {
        mem: Mem { pid },
        l: layout,
    };
    heap.function(sfi)
}

impl JsFrames {
    /// Forget a target (it exec'd or exited).
    pub fn remove(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// One JS frame: its function, or `[unknown js]` when it cannot be read,
    /// is still being read, or no longer matches what the kernel saw.
    pub fn frame(&mut self, pid: u32, rec: &LangFrameRec) -> Frame {
        let Self {
            procs,
            reader,
            deferred,
            reads,
            stale,
        } = self;
        let proc = procs.entry(pid).or_insert_with(|| Proc {
            layout: metadata::for_pid(pid)
                .map_err(|e| log::debug!("pid {pid}: no V8 layout: {e}"))
                .ok(),
            functions: HashMap::new(),
        });
        let Some(layout) = proc.layout.clone() else {
            return Frame::marker(UNKNOWN_JS);
        };
        let want = rec.flags >> LANG_CHECK_SHIFT;
        let matches = |r: &Resolved| js_name_check(r.name_word) == want;
        if let Some(slot) = proc.functions.get_mut(&rec.code) {
            if let Slot::Pending(p) = slot {
                match p.poll() {
                    Poll::Ready(r) => *slot = Slot::answer(r),
                    Poll::NotYet => {
                        *deferred += 1;
                        return Frame::marker(UNKNOWN_JS);
                    }
                    Poll::Lost => *slot = Slot::Failed(Instant::now()),
                }
            }
            match slot {
                Slot::Ready(r) if matches(r) => return r.frame(),
                // Another function at this address, or the same one renamed
                // (lazily compiled: its name moved into a ScopeInfo): read
                // it again.
                Slot::Ready(_) => *stale += 1,
                Slot::Failed(at) if at.elapsed() >= RETRY => {}
                _ => return Frame::marker(UNKNOWN_JS),
            }
        }
        let pending = proc
            .functions
            .values()
            .filter(|s| matches!(s, Slot::Pending(_)))
            .count();
        if pending >= MAX_PENDING {
            return Frame::marker(UNKNOWN_JS);
        }
        if proc.functions.len() >= MAX_FUNCTIONS {
            proc.functions.clear();
        }
        *reads += 1;
        let code = rec.code;
        let (now, later) = reader.run(move || read_function(pid, &layout, code));
        let slot = match now {
            Poll::Ready(r) => Slot::answer(r),
            Poll::NotYet => Slot::Pending(later),
            Poll::Lost => Slot::Failed(Instant::now()),
        };
        let frame = match &slot {
            Slot::Ready(r) if matches(r) => r.frame(),
            Slot::Pending(_) => {
                *deferred += 1;
                Frame::marker(UNKNOWN_JS)
            }
            _ => Frame::marker(UNKNOWN_JS),
        };
        proc.functions.insert(code, slot);
        frame
    }

    /// Frames left unknown since the last call because their read has not
    /// answered yet; resets the count.
    pub fn take_deferred(&mut self) -> u64 {
        std::mem::take(&mut self.deferred)
    }

    /// Reads queued or running on the reader thread.
    pub fn reads_in_flight(&self) -> usize {
        self.reader.busy()
    }
}
