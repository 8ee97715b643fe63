//! The native user-stack unwinder: from the task's user registers, frame by
//! frame, with the compact `.eh_frame` rows userspace loaded (see
//! `lagtrace/src/unwind/`), falling back to the frame pointer where no row
//! covers a PC (JIT code, files without tables).
//!
//! Per frame: binary-search the process's mapping of the PC, then the
//! file's rows; compute the CFA; read the return address at CFA-8 and rbp
//! where the row says it was saved. The frame loop runs in `bpf_loop`
//! (5.17+), whose callback the verifier checks once; kernels before 5.17
//! would need the loop split over tail calls. `bpf_task_pt_regs` is 5.15+.
//! It must never loop forever or guess: every step checks that the stack
//! pointer grew, and each way a walk ends is recorded and counted.
//! For a node target, each frame stepped by its frame pointer is kept for
//! `v8.rs`, which looks for a JS function below that pointer.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_user,
    generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_task_pt_regs},
};
use lagtrace_common::{
    CFA_END, CFA_MASK, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, MAX_USER_FRAMES, RBP_SAVED,
    SAMPLE_F_FP_FALLBACK, STACK_END_BAD_FRAME, STACK_END_DEPTH, STACK_END_NO_TABLE, STACK_END_NONE,
    STACK_END_READ_ERROR, STACK_END_ROOT, UNWIND_MAX_MAPPINGS, UnwindRow,
};

use crate::{
    maps::{SCRATCH, UNWIND_PROCS, UNWIND_ROWS},
    v8,
};

/// Offsets in x86_64 `struct pt_regs` (arch/x86/include/asm/ptrace.h).
const REGS_BP: usize = 4 * 8;
const REGS_IP: usize = 16 * 8;
const REGS_SP: usize = 19 * 8;
/// The syscall number on syscall entry; an exception's error code or an
/// interrupt's negated vector otherwise (it is overwritten on every entry).
const REGS_ORIG_AX: usize = 15 * 8;
/// Offsets in the `ucontext_t` a signal handler returns through
/// (`uc_mcontext` at 40; gregs REG_RBP 10, REG_RSP 15, REG_RIP 16).
const UC_RBP: u64 = 40 + 10 * 8;
const UC_RSP: u64 = 40 + 15 * 8;
const UC_RIP: u64 = 40 + 16 * 8;
/// Lowest kernel address on x86_64: a user PC is below it.
const USER_TOP: u64 = 0x0000_8000_0000_0000;
/// Binary-search steps: enough for `UNWIND_MAX_MAPPINGS` and for the rows
/// of one file (up to 2^22).
const MAP_STEPS: usize = 9;
const ROW_STEPS: usize = 23;

/// The walk's state between frames (on the BPF stack of the caller; the
/// `bpf_loop` callback gets a pointer to it).
#[repr(C)]
struct Walk {
    ip: u64,
    sp: u64,
    bp: u64,
    /// `UNWIND_PROCS` slot of the process; 0: none.
    slot: u32,
    n: u32,
    /// `STACK_END_*` once the walk is over.
    end: u32,
    /// `SAMPLE_F_*` bits found.
    flags: u32,
    /// The next PC is exact (the interrupted instruction), not a return
    /// address: look it up as is, not at `ip - 1`.
    exact: u32,
    /// Index of the mapping the last frame was in: callers are mostly in
    /// the same file, so it is tried before a search.
    last_map: u32,
    /// 1 for a node target: frames stepped by their frame pointer are
    /// kept for `v8::frames`.
    v8_on: u32,
    /// Frame-pointer steps kept in the sample's `lang`.
    js: u32,
    /// The frame pointer the last step followed (0: it used a table).
    fp_bp: u64,
}

/// How the frame loop's step ended, as `bpf_loop` wants it.
const CONTINUE: i64 = 0;
const STOP: i64 = 1;

/// What [`unwind_user`] found: native frames, how the walk ended, the
/// `SAMPLE_F_*` bits, and how many frames it stepped by their frame
/// pointer, each left in `lang` as (frame pointer, native index) for
/// `v8::frames`.
pub struct Unwound {
    pub frames: u16,
    pub end: u8,
    pub flags: u32,
    pub fp_steps: u16,
}

/// Unwind the current task's user stack into the scratch sample's `user`
/// (and, with `v8`, its frame-pointer steps into `lang`). None when the task has no
/// user registers (a kernel thread): the caller then uses `bpf_get_stack`.
#[inline(always)]
pub fn unwind_user(slot: u32, v8: bool) -> Option<Unwound> {
    let regs = current_regs()?;
    let ip = read_kernel(regs + REGS_IP)?;
    if ip == 0 || ip >= USER_TOP {
        return None;
    }
    let mut w = Walk {
        ip,
        sp: read_kernel(regs + REGS_SP)?,
        bp: read_kernel(regs + REGS_BP)?,
        slot,
        n: 0,
        end: STACK_END_NONE as u32,
        flags: 0,
        exact: 1,
        last_map: 0,
        v8_on: u32::from(v8),
        js: 0,
        fp_bp: 0,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects, and `w`
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_USER_FRAMES as u32,
            step as *mut c_void,
            (&mut w as *mut Walk).cast(),
            0,
        )
    };
    let end = if w.end == STACK_END_NONE as u32 {
        STACK_END_DEPTH
    } else {
        w.end as u8
    };
    Some(Unwound {
        frames: w.n as u16,
        end,
        flags: w.flags,
        fp_steps: w.js.min(v8::MAX_JS_FRAMES) as u16,
    })
}

/// The number of the syscall the current task last entered, read from its
/// saved user registers (x86-64 `orig_ax`). Only meaningful while the task
/// is asleep in the kernel: a task running user code keeps its last one.
#[inline(always)]
pub fn current_syscall() -> Option<u64> {
    read_kernel(current_regs()? + REGS_ORIG_AX)
}

/// The address of the current task's saved user registers (`pt_regs`),
/// to be read only through `read_kernel`; None for a kernel thread.
#[inline(always)]
fn current_regs() -> Option<usize> {
    // SAFETY: helpers on the current task; the returned pt_regs pointer is
    // only read through bpf_probe_read_kernel by the callers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
    (regs != 0).then_some(regs)
}

#[inline(always)]
fn read_kernel(addr: usize) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes of kernel memory into `v`; a fault is an error.
    let r = unsafe { bpf_probe_read_kernel((&mut v as *mut u64).cast(), 8, addr as *const c_void) };
    (r == 0).then_some(v)
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copes with any address, faults included.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// One frame: record the PC, then find the caller's registers.
extern "C" fn step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` passed to bpf_loop by `unwind_user`.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        w.end = STACK_END_READ_ERROR as u32;
        return STOP;
    };
    let n = w.n as usize;
    if n >= MAX_USER_FRAMES {
        w.end = STACK_END_DEPTH as u32;
        return STOP;
    }
    // SAFETY: per-CPU scratch sample, being filled by this program alone.
    unsafe { (*s).user[n & (MAX_USER_FRAMES - 1)] = w.ip };
    w.n += 1;
    w.fp_bp = 0;
    let r = caller(w);
    // A frame stepped by its frame pointer may be a JS frame: keep the
    // pointer and the frame's index in the next free language slot for
    // `v8::frames`, which reads them after the walk (reading them here
    // would make the verifier check the reads once per path of `caller`).
    if w.v8_on != 0 && w.fp_bp != 0 && w.js < v8::MAX_JS_FRAMES {
        // SAFETY: as above; the index is masked to the array.
        unsafe {
            let slot = &mut (*s).lang[(w.js as usize) & (v8::MAX_JS_FRAMES as usize - 1)];
            slot.code = w.fp_bp;
            slot.flags = n as u32;
        }
        w.js += 1;
    }
    match r {
        Ok(()) => CONTINUE,
        Err(end) => {
            w.end = end as u32;
            STOP
        }
    }
}

/// Replace `w`'s registers by those of the caller's frame.
#[inline(always)]
fn caller(w: &mut Walk) -> Result<(), u8> {
    let pc = if w.exact != 0 { w.ip } else { w.ip - 1 };
    w.exact = 0;
    let Some(row) = find_row(w, pc) else {
        return frame_pointer_step(w);
    };
    let cfa = match row.rule & CFA_MASK {
        CFA_RSP => w.sp.wrapping_add(row.cfa_off as u64),
        CFA_RBP => w.bp.wrapping_add(row.cfa_off as u64),
        CFA_PLT => {
            let pushed = if (w.ip & 15) >= row.cfa_off as u64 {
                8
            } else {
                0
            };
            w.sp + 8 + pushed
        }
        CFA_SIGNAL => return signal_step(w),
        CFA_END => return Err(STACK_END_ROOT),
        _ => return frame_pointer_step(w),
    };
    let ra = read_user(cfa.wrapping_sub(8)).ok_or(STACK_END_READ_ERROR)?;
    if row.rule & RBP_SAVED != 0 {
        let at = cfa.wrapping_add((row.rbp_off as i64 * 8) as u64);
        w.bp = read_user(at).ok_or(STACK_END_READ_ERROR)?;
    }
    next(w, ra, cfa)
}

/// Move to the caller at `ra` whose stack pointer is `sp`.
#[inline(always)]
fn next(w: &mut Walk, ra: u64, sp: u64) -> Result<(), u8> {
    if ra == 0 {
        return Err(STACK_END_ROOT);
    }
    if sp <= w.sp || ra >= USER_TOP {
        return Err(STACK_END_BAD_FRAME);
    }
    w.ip = ra;
    w.sp = sp;
    Ok(())
}

/// No row covers the PC: follow the frame-pointer chain, if there is one.
#[inline(always)]
fn frame_pointer_step(w: &mut Walk) -> Result<(), u8> {
    let bp = w.bp;
    if bp == 0 || bp < w.sp {
        return Err(STACK_END_NO_TABLE);
    }
    w.fp_bp = bp;
    let saved_bp = read_user(bp).ok_or(STACK_END_NO_TABLE)?;
    let ra = read_user(bp + 8).ok_or(STACK_END_NO_TABLE)?;
    w.flags |= SAMPLE_F_FP_FALLBACK;
    w.bp = saved_bp;
    next(w, ra, bp + 16)
}

/// A signal trampoline: the interrupted registers are in the `ucontext_t`
/// at the stack pointer.
#[inline(always)]
fn signal_step(w: &mut Walk) -> Result<(), u8> {
    let uc = w.sp;
    let bp = read_user(uc + UC_RBP).ok_or(STACK_END_READ_ERROR)?;
    let sp = read_user(uc + UC_RSP).ok_or(STACK_END_READ_ERROR)?;
    let ip = read_user(uc + UC_RIP).ok_or(STACK_END_READ_ERROR)?;
    w.bp = bp;
    next(w, ip, sp)?;
    w.exact = 1;
    Ok(())
}

/// 1 if `a <= b`, else 0, without a branch: both are below 2^63, so the
/// sign of `b - a` says it. Branch-free searches keep the verifier from
/// forking a state per comparison (a branchy search over 2^21 rows, in a
/// loop callback, exceeds its 1M-instruction budget).
#[inline(always)]
fn le(a: u64, b: u64) -> u64 {
    (b.wrapping_sub(a) >> 63) ^ 1
}

/// The row that covers `addr` (file-relative) in its mapping.
#[inline(always)]
fn find_row(w: &mut Walk, addr: u64) -> Option<UnwindRow> {
    if w.slot == 0 {
        return None;
    }
    let procs = UNWIND_PROCS.get(w.slot)?;
    let count = procs.count as u64;
    if count == 0 || count > UNWIND_MAX_MAPPINGS as u64 {
        return None;
    }
    let last = &procs.maps[(w.last_map as usize) & (UNWIND_MAX_MAPPINGS - 1)];
    let base = if u64::from(w.last_map) < count && last.start <= addr && addr < last.end {
        u64::from(w.last_map)
    } else {
        // The last mapping whose start is <= addr.
        let (mut base, mut n) = (0u64, count);
        for _ in 0..MAP_STEPS {
            let half = n / 2;
            let start = procs.maps[((base + half) as usize) & (UNWIND_MAX_MAPPINGS - 1)].start;
            base += half * le(start, addr);
            n -= half;
        }
        base
    };
    w.last_map = base as u32;
    let m = &procs.maps[(base as usize) & (UNWIND_MAX_MAPPINGS - 1)];
    if addr < m.start || addr >= m.end || addr < m.bias || m.row_count == 0 {
        return None;
    }
    let pc = addr - m.bias;
    if pc > u32::MAX as u64 {
        return None;
    }
    // The last row whose pc is <= pc: as many halvings as the file needs.
    let (mut base, mut n) = (m.row_start as u64, m.row_count as u64);
    for _ in 0..ROW_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        let row_pc = UNWIND_ROWS.get((base + half) as u32)?.pc as u64;
        base += half * le(row_pc, pc);
        n -= half;
    }
    let row = *UNWIND_ROWS.get(base as u32)?;
    if row.pc as u64 > pc {
        return None;
    }
    Some(row)
}
