//! On-CPU sampling: a perf_event program on a software CPU clock opened per
//! target thread. It does work only for a loop thread inside an open
//! iteration that is old enough to become a span (`SAMPLE_MIN_AGE_SHIFT`).
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::perf_event, programs::PerfEventContext};
use lagtrace_common::{CFG_SAMPLING, SAMPLE_MIN_AGE_SHIFT, SAMPLE_ON_CPU, THREAD_IN_ITER};

use crate::{
    iteration::{config, now_ns, push_sample, running, scratch, thread},
    probes::stacks::capture,
};

#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    try_on_cpu_sample::<true>(&ctx).unwrap_or(0)
}

/// The same sampler for kernels without `bpf_loop`: frame-pointer stacks,
/// no Python frames (see `stacks::capture`).
#[perf_event]
pub fn on_cpu_sample_fp(ctx: PerfEventContext) -> u32 {
    try_on_cpu_sample::<false>(&ctx).unwrap_or(0)
}

fn try_on_cpu_sample<const WALK: bool>(ctx: &PerfEventContext) -> Option<u32> {
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
    push_sample(t, tid, now, s);
    Some(0)
}
