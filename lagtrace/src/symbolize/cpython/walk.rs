//! The frame walk of `lagtrace-ebpf/src/python.rs`, in userspace, from the
//! same `PyOffsets`: the reference the kernel walk is written against, and
//! the check at attach that the offsets fit the target (its frames resolve
//! to code objects). Never used per sample.
use lagtrace_common::{
    MAX_PY_FRAMES, PY_FRAME_ENTRY, PY_INSTR_LASTI_BYTES, PY_INSTR_LASTI_UNITS, PY_OFF_NONE,
    PyFrameRec, STACK_END_BAD_FRAME, STACK_END_DEPTH, STACK_END_READ_ERROR, STACK_END_ROOT,
};

use super::{interp::Interpreter, mem::Mem};

/// Most thread states looked at when searching the interpreter's list.
pub const MAX_THREADS_WALKED: usize = 64;

/// Which thread's frames to walk.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    /// The thread with this `native_thread_id` (3.11+).
    NativeTid(u64),
    /// The first thread in the interpreter's list that has a frame.
    FirstWithFrame,
}

fn off(v: u16) -> Option<u64> {
    (v != PY_OFF_NONE).then_some(u64::from(v))
}

/// The innermost frame of a thread state, or 0.
pub(super) fn top_frame(mem: &Mem, it: &Interpreter, tstate: u64) -> std::io::Result<u64> {
    let o = &it.layout.kernel;
    let f = mem.u64(tstate + u64::from(o.tstate_frame))?;
    match off(o.cframe_current_frame) {
        Some(c) if f != 0 => mem.u64(f + c),
        _ => Ok(f),
    }
}

/// The thread state to walk, or `None`.
pub fn thread_state(mem: &Mem, it: &Interpreter, pick: Pick) -> Option<u64> {
    let o = &it.layout.kernel;
    let interp = mem.u64(it.interp_head_addr()).ok()?;
    let mut ts = mem.u64(interp + u64::from(o.interp_tstate_head)).ok()?;
    for _ in 0..MAX_THREADS_WALKED {
        if ts == 0 {
            return None;
        }
        let hit = match pick {
            Pick::NativeTid(tid) => {
                let native = it.layout.native_thread_id?;
                mem.u64(ts + u64::from(native)).ok()? == tid
            }
            Pick::FirstWithFrame => top_frame(mem, it, ts).ok()? != 0,
        };
        if hit {
            return Some(ts);
        }
        ts = mem.u64(ts + u64::from(o.tstate_next)).ok()?;
    }
    None
}

/// Frames of a thread state, innermost first, and how the walk ended.
pub fn walk(mem: &Mem, it: &Interpreter, tstate: u64) -> (Vec<PyFrameRec>, u8) {
    let o = &it.layout.kernel;
    let mut out: Vec<PyFrameRec> = Vec::new();
    let Ok(mut frame) = top_frame(mem, it, tstate) else {
        return (out, STACK_END_READ_ERROR);
    };
    // Shim frames do not count toward the depth but bound the loop too.
    for _ in 0..2 * MAX_PY_FRAMES {
        if frame == 0 {
            return (out, STACK_END_ROOT);
        }
        if out.len() == MAX_PY_FRAMES {
            return (out, STACK_END_DEPTH);
        }
        let step = || -> std::io::Result<(Option<PyFrameRec>, u64)> {
            let back = mem.u64(frame + u64::from(o.frame_back))?;
            if let Some(owner) = off(o.frame_owner)
                && o.owner_cstack != u8::MAX
                && mem.u8(frame + owner)? == o.owner_cstack
            {
                return Ok((None, back));
            }
            let code = mem.u64(frame + u64::from(o.frame_code))?;
            let instr = u64::from(o.frame_instr);
            let instr_offset = match o.instr_kind {
                PY_INSTR_LASTI_BYTES => (mem.u32(frame + instr)? as i32).max(0) as u32,
                PY_INSTR_LASTI_UNITS => (mem.u32(frame + instr)? as i32).max(0) as u32 * 2,
                _ => {
                    let base = code + u64::from(o.code_adaptive);
                    mem.u64(frame + instr)?.saturating_sub(base) as u32
                }
            };
            let entry = match off(o.frame_is_entry) {
                Some(e) => mem.u8(frame + e)? != 0,
                // Before 3.11 every Python frame has its own eval call.
                None => off(o.frame_owner).is_none(),
            };
            let flags = if entry { PY_FRAME_ENTRY } else { 0 };
            Ok((
                Some(PyFrameRec {
                    code,
                    instr_offset,
                    flags,
                }),
                back,
            ))
        };
        let Ok((rec, back)) = step() else {
            return (out, STACK_END_READ_ERROR);
        };
        match rec {
            Some(r) => out.push(r),
            // A C-stack shim: the frame inside it was entered from C.
            None => {
                if let Some(last) = out.last_mut() {
                    last.flags |= PY_FRAME_ENTRY;
                }
            }
        }
        if back == frame {
            return (out, STACK_END_BAD_FRAME);
        }
        frame = back;
    }
    (out, STACK_END_BAD_FRAME)
}
