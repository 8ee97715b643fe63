//! Stack capture shared by the sampler and the scheduler probes: fills this
//! CPU's scratch [`StackSample`] (the record is far larger than the 512-byte
//! BPF stack, and the unwinder's loop writes into it).
//!
//! Native user frames come from the `.eh_frame` unwinder (`unwind.rs`) from
//! the task's user registers; only a task without them (a kernel thread)
//! gets `bpf_get_stack(BPF_F_USER_STACK)`, the kernel's frame-pointer walk.
//! Kernel frames come from `bpf_get_stack(0)`.
//! Python frames are filled by [`fill_python`]; a node target's JS frames
//! by the native walk itself (`v8.rs`). Every failure is counted by kind,
//! never guessed.
use core::mem::size_of;

use aya_ebpf::{EbpfContext, bindings::BPF_F_USER_STACK, helpers::generated::bpf_get_stack};
use lagtrace_common::{
    CTR_KERNEL_STACK_ERRORS, CTR_USER_END, MAX_KERNEL_FRAMES, MAX_USER_FRAMES,
    SAMPLE_F_KERNEL_FP_WALK, STACK_END_DEPTH, STACK_END_KINDS, STACK_END_NONE,
    STACK_END_READ_ERROR, STACK_END_ROOT, StackSample,
};

use crate::{
    iteration::{bump, target},
    maps::V8_TARGETS,
    unwind::unwind_user,
};

/// Fill the scratch sample `s`'s frames from the current task of process
/// `tgid`. The caller sets `ts_ns`, `weight_ns` and `kind`.
///
/// `WALK`: unwind with the tables and walk Python frames, which need
/// `bpf_loop` (5.17+) and `bpf_task_pt_regs` (5.15+). Programs built with
/// `WALK = false` call neither, so they load on older kernels, where native
/// stacks come from the kernel's frame-pointer walk and Python frames are
/// off (the loader picks the variant; see `probes/loader.rs`).
#[inline(always)]
pub fn capture<C: EbpfContext, const WALK: bool>(ctx: &C, tgid: u32, s: &mut StackSample) {
    s.flags = 0;
    if !WALK {
        kernel_user_walk(ctx, s);
        capture_kernel(ctx, s);
        s.lang_len = 0;
        s.lang_end = 0;
        return;
    }
    let slot = target(tgid).map_or(0, |t| t.unwind_slot);
    // SAFETY: a map value, read-only here; userspace writes it only before
    // it starts tracing the target.
    let v8 = unsafe { V8_TARGETS.get(tgid) };
    let mut steps = 0;
    match unwind_user(slot, v8.is_some()) {
        Some(u) => {
            s.user_len = u.frames;
            s.flags |= u.flags;
            steps = u.fp_steps;
            end_user(s, u.end);
        }
        None => kernel_user_walk(ctx, s),
    }
    capture_kernel(ctx, s);
    if let Some(o) = v8 {
        // A node target: its language frames are the JS frames among the
        // frames the native walk stepped by their frame pointer.
        let js = crate::v8::frames(o, s, steps);
        s.lang_len = js;
        s.lang_end = if js > 0 {
            STACK_END_ROOT
        } else {
            STACK_END_NONE
        };
    } else {
        fill_python(ctx, s);
    }
}

/// Native user frames by the kernel's frame-pointer walk, for a task
/// without user registers.
#[inline(always)]
fn kernel_user_walk<C: EbpfContext>(ctx: &C, s: &mut StackSample) {
    const BYTES: u32 = (MAX_USER_FRAMES * size_of::<u64>()) as u32;
    // SAFETY: `s.user` is a map value of exactly BYTES bytes; the helper
    // writes at most `size` bytes.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            s.user.as_mut_ptr().cast(),
            BYTES,
            BPF_F_USER_STACK.into(),
        )
    };
    s.flags |= SAMPLE_F_KERNEL_FP_WALK;
    if n < 0 {
        s.user_len = 0;
        end_user(s, STACK_END_READ_ERROR);
        return;
    }
    let frames = (n as usize / size_of::<u64>()).min(MAX_USER_FRAMES);
    s.user_len = frames as u16;
    // The kernel stops at `perf_event_max_stack` (127 by default): a full
    // buffer means the walk was cut, anything shorter ran out of frames.
    let end = if frames + 1 >= MAX_USER_FRAMES {
        STACK_END_DEPTH
    } else {
        STACK_END_ROOT
    };
    end_user(s, end);
}

/// Record how the user walk ended, and count it.
#[inline(always)]
pub fn end_user(s: &mut StackSample, end: u8) {
    s.user_end = end;
    if (end as usize) < STACK_END_KINDS {
        bump(CTR_USER_END + end as u32);
    }
}

/// Kernel frames, innermost first (empty for a sample taken in user mode).
#[inline(always)]
fn capture_kernel<C: EbpfContext>(ctx: &C, s: &mut StackSample) {
    const BYTES: u32 = (MAX_KERNEL_FRAMES * size_of::<u64>()) as u32;
    // SAFETY: `s.kernel` is a map value of exactly BYTES bytes.
    let n = unsafe { bpf_get_stack(ctx.as_ptr(), s.kernel.as_mut_ptr().cast(), BYTES, 0) };
    if n < 0 {
        s.kernel_len = 0;
        bump(CTR_KERNEL_STACK_ERRORS);
        return;
    }
    s.kernel_len = ((n as usize / size_of::<u64>()).min(MAX_KERNEL_FRAMES)) as u16;
}

/// Python frames, read in the kernel at this instant (`python.rs`).
#[inline(always)]
fn fill_python<C: EbpfContext>(_ctx: &C, s: &mut StackSample) {
    crate::python::walk(s);
}
