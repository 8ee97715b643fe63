//! CPython frames read at the instant of a sample: the current thread's
//! `PyThreadState`, then its frame chain, pushing (code object address,
//! instruction offset) per frame into the sample. Userspace resolves each
//! code object once (`lagtrace/src/symbolize/cpython/`).
//!
//! Every offset comes from the target's `PyTarget` entry (`PY_TARGETS`), so
//! the code here has no per-version branches beyond what the offsets say:
//! the version differences are decided in userspace
//! (`symbolize/cpython/layout.rs`), and `symbolize/cpython/walk.rs` is the
//! same walk in userspace, tested on 3.8–3.13.
//!
//! The thread is found by its `pthread_self()` value, which CPython stores
//! as `PyThreadState.thread_id` on every version and which on x86-64 is the
//! thread's fs base (`task->thread.fsbase`): no tid matching, so threads of
//! 3.8–3.10 and of containers are told apart as well.
//!
//! Each frame is read with one `bpf_probe_read_user` of the bytes its
//! fields span (`frame_span`), into a per-CPU buffer, and the fields are
//! taken from there: a helper call per field cost about four times as
//! much per frame (see bench/PYFRAMES.md).
//!
//! It must not trust the target: every loop is bounded, a failed read ends
//! the walk with `STACK_END_READ_ERROR`, a frame that points to itself with
//! `STACK_END_BAD_FRAME`.
use core::mem::size_of;

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    },
};
use lagtrace_common::{
    LangFrameRec, MAX_PY_FRAMES, PY_FRAME_ENTRY, PY_INSTR_LASTI_BYTES, PY_INSTR_LASTI_UNITS,
    PY_INSTR_POINTER, PY_OFF_NONE, PyOffsets, PyTarget, STACK_END_BAD_FRAME, STACK_END_DEPTH,
    STACK_END_NONE, STACK_END_READ_ERROR, STACK_END_ROOT, StackSample,
};

use crate::maps::{PY_FRAME_BUF, PY_TARGETS, PY_TSTATE};

/// Thread states looked at when searching the interpreter's list. New
/// threads go to the head, so a loop that runs in the main thread of a
/// process with hundreds of workers sits at the tail: the search runs in
/// `bpf_loop` and its result is remembered per thread (`PY_TSTATE`).
const MAX_THREADS_WALKED: u32 = 4096;

/// A `T` at `addr` in the current task's memory.
#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies from any user address and fails
    // cleanly (no fault) where nothing is mapped.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The current task's fs base: its `pthread_self()` on x86-64.
#[inline(always)]
fn fsbase(t: &PyTarget) -> Option<u64> {
    // SAFETY: the current task pointer is valid while the program runs;
    // `task_fsbase` comes from the kernel's own BTF and the read is checked.
    unsafe {
        let task = bpf_get_current_task();
        bpf_probe_read_kernel((task + u64::from(t.task_fsbase)) as *const u64).ok()
    }
}

/// Bytes of one frame read at once: every field the walk needs lies in
/// them on every version (the last, `f_lasti` of 3.8's `PyFrameObject`,
/// ends at 108).
pub const PY_FRAME_READ: usize = 128;

/// Where one frame is read to (`PY_FRAME_BUF`, per CPU): a map value, so
/// the fields can be taken at offsets known only at run time.
#[repr(C)]
pub struct PyFrameBuf {
    pub bytes: [u8; PY_FRAME_READ],
}

/// State of the search of the thread list, shared with its callback.
#[repr(C)]
struct Search {
    ts: u64,
    me: u64,
    id_off: u64,
    next_off: u64,
    found: u64,
}

/// One thread state of the list: 0 goes on, 1 stops.
extern "C" fn search_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` that `thread_state` passed to bpf_loop,
    // on its stack for the whole loop.
    let s = unsafe { &mut *(ctx as *mut Search) };
    if s.ts == 0 {
        return 1;
    }
    match user::<u64>(s.ts + s.id_off) {
        Some(id) if id == s.me => {
            s.found = s.ts;
            return 1;
        }
        Some(_) => {}
        None => return 1,
    }
    match user::<u64>(s.ts + s.next_off) {
        // A state that points to itself would loop to the bound.
        Some(next) if next != s.ts => {
            s.ts = next;
            0
        }
        _ => 1,
    }
}

/// The current thread's `PyThreadState`, or `None` (not a Python thread).
/// A thread's state stays put while it lives, so the one found last time
/// is tried first, and kept only while its `thread_id` is still this
/// thread's (a freed and reused state fails the check).
#[inline(always)]
fn thread_state(t: &PyTarget) -> Option<u64> {
    let o = &t.offsets;
    let me = fsbase(t)?;
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a map value read by copy.
    if let Some(&ts) = unsafe { PY_TSTATE.get(tid) }
        && user::<u64>(ts + u64::from(o.tstate_thread_id)) == Some(me)
    {
        return Some(ts);
    }
    let interp: u64 = user(t.interp_head_addr)?;
    let mut s = Search {
        ts: user(interp + u64::from(o.interp_tstate_head))?,
        me,
        id_off: u64::from(o.tstate_thread_id),
        next_off: u64::from(o.tstate_next),
        found: 0,
    };
    // SAFETY: `search_step` matches bpf_loop's callback type and `s`
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_THREADS_WALKED,
            search_step as *mut c_void,
            &mut s as *mut Search as *mut c_void,
            0,
        )
    };
    if s.found == 0 {
        return None;
    }
    let _ = PY_TSTATE.insert(tid, s.found, 0);
    Some(s.found)
}

/// The innermost frame of a thread state (0 when it runs no Python code).
#[inline(always)]
fn top_frame(o: &PyOffsets, ts: u64) -> Option<u64> {
    let f: u64 = user(ts + u64::from(o.tstate_frame))?;
    if o.cframe_current_frame != PY_OFF_NONE && f != 0 {
        return user(f + u64::from(o.cframe_current_frame));
    }
    Some(f)
}

/// The bytes of a frame the walk reads: from its start to the end of the
/// last field it needs. 0 when that is past [`PY_FRAME_READ`].
#[inline(always)]
fn frame_span(o: &PyOffsets) -> u32 {
    let instr = if o.instr_kind == PY_INSTR_POINTER {
        size_of::<u64>()
    } else {
        size_of::<i32>()
    } as u32;
    let mut end = (u32::from(o.frame_back) + 8)
        .max(u32::from(o.frame_code) + 8)
        .max(u32::from(o.frame_instr) + instr);
    for off in [o.frame_owner, o.frame_is_entry] {
        if off != PY_OFF_NONE {
            end = end.max(u32::from(off) + 1);
        }
    }
    if end as usize > PY_FRAME_READ { 0 } else { end }
}

/// The `T` at byte `off` of a frame read into `buf`; `None` past its end.
#[inline(always)]
fn field<T: Copy>(buf: &PyFrameBuf, off: u16) -> Option<T> {
    let off = off as usize;
    if off > PY_FRAME_READ - size_of::<T>() {
        return None;
    }
    // SAFETY: `off + size_of::<T>()` is within the buffer (checked above),
    // and the read makes no assumption about alignment.
    Some(unsafe { core::ptr::read_unaligned(buf.bytes.as_ptr().add(off).cast::<T>()) })
}

/// One frame, from its bytes in `buf`: `None` for a field out of range,
/// `Some((None, back))` for a C-stack shim frame, else its record and the
/// next (outer) frame.
#[inline(always)]
fn parse_frame(o: &PyOffsets, buf: &PyFrameBuf) -> Option<(Option<LangFrameRec>, u64)> {
    let back: u64 = field(buf, o.frame_back)?;
    if o.frame_owner != PY_OFF_NONE && o.owner_cstack != u8::MAX {
        let owner: u8 = field(buf, o.frame_owner)?;
        if owner == o.owner_cstack {
            return Some((None, back));
        }
    }
    let code: u64 = field(buf, o.frame_code)?;
    let instr_offset = if o.instr_kind == PY_INSTR_LASTI_BYTES {
        field::<i32>(buf, o.frame_instr)?.max(0) as u32
    } else if o.instr_kind == PY_INSTR_LASTI_UNITS {
        (field::<i32>(buf, o.frame_instr)?.max(0) as u32).wrapping_mul(2)
    } else {
        let p: u64 = field(buf, o.frame_instr)?;
        p.saturating_sub(code + u64::from(o.code_adaptive)) as u32
    };
    let entry = if o.frame_is_entry != PY_OFF_NONE {
        field::<u8>(buf, o.frame_is_entry)? != 0
    } else {
        // Before 3.11 every Python frame has its own eval call.
        o.frame_owner == PY_OFF_NONE
    };
    Some((
        Some(LangFrameRec {
            code,
            instr_offset,
            flags: if entry { PY_FRAME_ENTRY } else { 0 },
        }),
        back,
    ))
}

/// One frame read whole into `buf` (`span` bytes, see [`frame_span`]).
#[inline(always)]
fn read_frame(
    o: &PyOffsets,
    buf: &mut PyFrameBuf,
    span: u32,
    frame: u64,
) -> Option<(Option<LangFrameRec>, u64)> {
    // 1..=PY_FRAME_READ for the verifier, branch-free: `walk` checked
    // that `span` is in that range (a compare would be turned into a
    // wrapping subtraction whose bounds the verifier loses).
    let span = (span.wrapping_sub(1) & (PY_FRAME_READ as u32 - 1)) + 1;
    // SAFETY: `buf` is a per-CPU map value of PY_FRAME_READ bytes and
    // `span` is at most that; bpf_probe_read_user fails cleanly (no fault)
    // where nothing is mapped.
    let r =
        unsafe { probe_read_user_raw(buf.bytes.as_mut_ptr().cast(), span, frame as *const c_void) };
    if r != 0 {
        return None;
    }
    parse_frame(o, buf)
}

/// State of the frame loop, shared with its `bpf_loop` callback.
#[repr(C)]
struct Walk {
    o: PyOffsets,
    s: *mut StackSample,
    /// This CPU's frame buffer (`PY_FRAME_BUF`).
    buf: *mut PyFrameBuf,
    frame: u64,
    len: u32,
    /// Bytes read per frame ([`frame_span`]).
    span: u32,
    end: u8,
}

/// One turn of the frame loop: 0 goes on, 1 stops (`bpf_loop`'s contract).
/// The verifier checks a `bpf_loop` callback once, not once per turn.
extern "C" fn step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `walk` passed to bpf_loop, on its
    // stack for the whole loop; `w.s` is the sample it was given and
    // `w.buf` this CPU's frame buffer, both map values.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let s = unsafe { &mut *w.s };
    let buf = unsafe { &mut *w.buf };
    let frame = w.frame;
    if frame == 0 {
        w.end = STACK_END_ROOT;
        return 1;
    }
    let len = w.len as usize;
    if len >= MAX_PY_FRAMES {
        w.end = STACK_END_DEPTH;
        return 1;
    }
    let Some((rec, back)) = read_frame(&w.o, buf, w.span, frame) else {
        w.end = STACK_END_READ_ERROR;
        return 1;
    };
    match rec {
        Some(r) => {
            if let Some(slot) = s.lang.get_mut(len) {
                *slot = r;
            }
            w.len += 1;
        }
        // A C-stack shim: the frame inside it was entered from C.
        None => {
            if let Some(last) = len.checked_sub(1).and_then(|i| s.lang.get_mut(i)) {
                last.flags |= PY_FRAME_ENTRY;
            }
        }
    }
    if back == frame {
        w.end = STACK_END_BAD_FRAME;
        return 1;
    }
    w.frame = back;
    0
}

/// Fill `s.lang`, `s.lang_len` and `s.lang_end` for the current task.
#[inline(always)]
pub fn walk(s: &mut StackSample) {
    s.lang_len = 0;
    s.lang_end = STACK_END_NONE;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a map value, read-only here; userspace writes it only before
    // it starts tracing the target.
    let Some(t) = (unsafe { PY_TARGETS.get(tgid) }) else {
        return;
    };
    let Some(ts) = thread_state(t) else {
        s.lang_end = STACK_END_READ_ERROR;
        return;
    };
    let Some(frame) = top_frame(&t.offsets, ts) else {
        s.lang_end = STACK_END_READ_ERROR;
        return;
    };
    let span = frame_span(&t.offsets);
    let Some(buf) = PY_FRAME_BUF.get_ptr_mut(0).filter(|_| span != 0) else {
        s.lang_end = STACK_END_READ_ERROR;
        return;
    };
    let mut w = Walk {
        o: t.offsets,
        s: s as *mut StackSample,
        buf,
        frame,
        len: 0,
        span,
        // Still walking after the last turn: shim frames took the turns.
        end: STACK_END_BAD_FRAME,
    };
    // Shim frames take a turn but no slot: twice the slots bounds the loop.
    // SAFETY: `step` matches bpf_loop's callback type and `w` outlives the
    // call.
    unsafe {
        bpf_loop(
            2 * MAX_PY_FRAMES as u32,
            step as *mut c_void,
            &mut w as *mut Walk as *mut c_void,
            0,
        )
    };
    s.lang_len = w.len.min(MAX_PY_FRAMES as u32) as u16;
    s.lang_end = w.end;
}
