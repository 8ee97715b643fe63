//! On-CPU sampling. Two clocks drive the same sampler: a perf_event
//! program on a software CPU clock opened per target thread (`-F N`, or
//! where the tick cannot serve), or the kernel's own scheduler tick (a
//! tracepoint on the tick's hrtimer, the default). Either does work only
//! for a loop thread inside an open iteration that is old enough to become
//! a span (`SAMPLE_MIN_AGE_SHIFT`).
//!
//! Why the tick: a CPU running a thread takes its tick anyway, so sampling
//! on it adds no interrupt. A per-thread clock adds one per sample and is
//! switched in and out with its thread at every context switch; on a VM
//! that costs a busy server several percent of its CPU (bench/ATTACH.md).
use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{perf_event, tracepoint},
    programs::{PerfEventContext, TracePointContext},
};
use lagtrace_common::{
    CFG_SAMPLING, SAMPLE_F_IN_IRQ, SAMPLE_MIN_AGE_SHIFT, SAMPLE_ON_CPU, THREAD_IN_ITER,
};

use crate::{
    iteration::{config, now_ns, push_sample, running, scratch, thread},
    probes::stacks::capture,
};

#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    sample_current::<_, true>(&ctx, 0).unwrap_or(0)
}

/// The same sampler for kernels without `bpf_loop`: frame-pointer stacks,
/// no Python frames (see `stacks::capture`).
#[perf_event]
pub fn on_cpu_sample_fp(ctx: PerfEventContext) -> u32 {
    sample_current::<_, false>(&ctx, 0).unwrap_or(0)
}

/// `timer:hrtimer_expire_entry`: every hrtimer of the host expiring. Only
/// the scheduler tick's is a sample; the task it interrupted is current.
#[tracepoint]
pub fn tick_sample(ctx: TracePointContext) -> u32 {
    try_tick::<true>(&ctx).unwrap_or(0)
}

#[tracepoint]
pub fn tick_sample_fp(ctx: TracePointContext) -> u32 {
    try_tick::<false>(&ctx).unwrap_or(0)
}

fn try_tick<const WALK: bool>(ctx: &TracePointContext) -> Option<u32> {
    let cfg = config()?;
    // SAFETY: tick_fn_off is the `function` field's offset, read from this
    // kernel's tracefs; read_at checks the read through the kernel.
    let function: u64 = unsafe { ctx.read_at(cfg.tick_fn_off as usize) }.ok()?;
    if function != cfg.tick_fn {
        return None;
    }
    sample_current::<_, WALK>(ctx, SAMPLE_F_IN_IRQ)
}

/// One on-CPU sample of the current task, if it is a loop thread in an
/// iteration old enough; `flags` are added to the sample's.
#[inline(always)]
fn sample_current<C: EbpfContext, const WALK: bool>(ctx: &C, flags: u32) -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 {
        return None;
    }
    // THREADS holds only loop threads of targets: one lookup rejects the rest.
    let t = thread(tid)?;
    if t.flags & THREAD_IN_ITER == 0 || t.tgid != (pid_tgid >> 32) as u32 {
        return None;
    }
    let cfg = config()?;
    if cfg.flags & CFG_SAMPLING == 0 {
        return None;
    }
    let now = now_ns();
    running(t, tid, now);
    // Too young to be part of a span yet (SAMPLE_MIN_AGE_SHIFT): no walk.
    if now.saturating_sub(t.iter_start_ns) < cfg.threshold_ns >> SAMPLE_MIN_AGE_SHIFT {
        return None;
    }
    let s = scratch()?;
    s.ts_ns = now;
    s.weight_ns = 0;
    s.kind = SAMPLE_ON_CPU;
    capture::<_, WALK>(ctx, t.tgid, s);
    s.flags |= flags;
    push_sample(t, tid, now, s);
    Some(0)
}
