//! Scheduler accounting: splits an open iteration into on-CPU, off-CPU
//! (sleeping or blocked) and runqueue (runnable, waiting for a CPU) time, and
//! captures the stack where the loop thread left the CPU.
//!
//! sched_switch fires for every context switch on the host, so the first
//! thing done is a lookup of the two tids in THREADS, which holds only loop
//! threads of targets. Field offsets come from tracefs via `Config`.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use lagtrace_common::{
    CFG_FAULT_SKIP_SWITCH_IN, CFG_SCHED, CFG_WAIT_BY_SWITCH, CTR_SCHED_MISSED, Config,
    PHASE_OFF_CPU, PHASE_ON_CPU, PHASE_RUNQUEUE, SAMPLE_OFF_CPU, SAMPLE_RUNQUEUE, SAMPLE_STOPPED,
    THREAD_IN_ITER, THREAD_WAKE_BEGINS,
};

use crate::{
    iteration::{
        begin, bump, close_phase, config, copy_sample, end, now_ns, resume, running, scratch,
        thread, thread_samples,
    },
    probes::stacks::capture,
    unwind::current_syscall,
};

/// Bits of `prev_state` that mean the task went to sleep; preemption (R+)
/// reports only bit 0x100, a runnable task 0.
const SLEEP_STATE_MASK: i64 = 0xff;
/// `__TASK_STOPPED` and `__TASK_TRACED` as sched_switch reports them
/// (`1 << (task_state_index - 1)`, see `__trace_sched_switch_state` in
/// include/trace/events/sched.h): a SIGSTOP or a debugger, not the code.
const STOPPED_STATE_MASK: i64 = 0x04 | 0x08;
/// A plain sleep (`TASK_INTERRUPTIBLE`, `TASK_UNINTERRUPTIBLE`): how a
/// thread waits in a syscall.
const PLAIN_SLEEP_MASK: i64 = 0x01 | 0x02;

/// Whether the current task, going to sleep in state `state`, sleeps in an
/// epoll wait. A task asleep in the kernel is inside a syscall or a page
/// fault; a fault overwrites the syscall number with its error code, and a
/// stopped task (whose number may be stale) is excluded by its state.
#[inline(always)]
fn sleeps_in_epoll_wait(state: i64) -> bool {
    if state & PLAIN_SLEEP_MASK == 0 || state & STOPPED_STATE_MASK != 0 {
        return false;
    }
    matches!(current_syscall(), Some(nr) if lagtrace_common::syscalls::EPOLL_WAITS.contains(&nr))
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    try_sched_switch::<true>(&ctx).unwrap_or(0)
}

/// The same for kernels without `bpf_loop` (see `stacks::capture`).
#[tracepoint]
pub fn sched_switch_fp(ctx: TracePointContext) -> u32 {
    try_sched_switch::<false>(&ctx).unwrap_or(0)
}

fn try_sched_switch<const WALK: bool>(ctx: &TracePointContext) -> Option<u32> {
    let cfg = config()?;
    if cfg.flags & CFG_SCHED == 0 {
        return None;
    }
    let prev: i32 = unsafe { ctx.read_at(cfg.switch_prev_pid_off as usize) }.ok()?;
    let next: i32 = unsafe { ctx.read_at(cfg.switch_next_pid_off as usize) }.ok()?;
    if thread(prev as u32).is_some() {
        let state: i64 = unsafe { ctx.read_at(cfg.switch_prev_state_off as usize) }.ok()?;
        switch_out::<_, WALK, false>(ctx, cfg, prev as u32, state);
    }
    switch_in(next as u32);
    Some(0)
}

/// A loop thread inside an iteration leaves the CPU: asleep, or preempted.
/// `state` is `prev_state` as the classic tracepoint reports it (see
/// `sched_btf.rs` for the tp_btf variant's equivalent).
///
/// With `WAIT` (the program of `--attach exit-tp`, see
/// [`CFG_WAIT_BY_SWITCH`]), a thread falling asleep in an epoll wait ends
/// its iteration here, as the wait's entry would in the other modes.
#[inline(always)]
pub fn switch_out<C: EbpfContext, const WALK: bool, const WAIT: bool>(
    ctx: &C,
    cfg: &Config,
    prev: u32,
    state: i64,
) -> Option<()> {
    let t = thread(prev)?;
    if t.flags & THREAD_IN_ITER == 0 || t.tgid != (bpf_get_current_pid_tgid() >> 32) as u32 {
        return None;
    }
    let now = now_ns();
    // It is leaving the CPU, so it was on one: close a wait whose end was
    // not seen before its stack is replaced by this one.
    running(t, prev, now);
    if WAIT && cfg.flags & CFG_WAIT_BY_SWITCH != 0 && sleeps_in_epoll_wait(state) {
        end(t, prev, now);
        return Some(());
    }
    close_phase(t, now);
    let sleeping = state & SLEEP_STATE_MASK != 0;
    t.phase = if sleeping {
        PHASE_OFF_CPU
    } else {
        PHASE_RUNQUEUE
    };
    // A preemption inside a short iteration is the common case on a busy
    // host (a woken task takes the CPU), and its stack would be dropped with
    // the iteration: capture it only once the iteration is long. Runqueue
    // time is accounted either way.
    if !sleeping && now.saturating_sub(t.iter_start_ns) < cfg.threshold_ns {
        t.pending_kind = 0;
        return Some(());
    }
    // The current task is still `prev`, so this is the stack it waits in.
    let kind = if state & STOPPED_STATE_MASK != 0 {
        SAMPLE_STOPPED
    } else if sleeping {
        SAMPLE_OFF_CPU
    } else {
        SAMPLE_RUNQUEUE
    };
    t.pending_kind = 0;
    let slots = thread_samples(prev)?;
    let s = scratch()?;
    s.ts_ns = now;
    s.weight_ns = 0;
    s.kind = kind;
    capture::<_, WALK>(ctx, t.tgid, s);
    if !copy_sample(&mut slots.pending, s) {
        return Some(());
    }
    t.pending_kind = kind;
    t.pending_since_ns = now;
    Some(())
}

/// A loop thread inside an iteration runs again: its wait becomes a sample
/// weighted by the time it was away.
#[inline(always)]
pub fn switch_in(next: u32) -> Option<()> {
    let t = thread(next)?;
    if t.flags & THREAD_IN_ITER == 0 {
        if t.flags & THREAD_WAKE_BEGINS != 0 {
            // Woken from the wait it was found parked in (see
            // THREAD_WAKE_BEGINS): that wait's return starts nothing now.
            t.in_futex_wait = 0;
            begin(t, now_ns());
        }
        return None;
    }
    if config()?.flags & CFG_FAULT_SKIP_SWITCH_IN != 0 {
        return None;
    }
    if t.phase == PHASE_ON_CPU {
        // Its switch off the CPU was never seen (see `running`): the time
        // it was away stays counted as on-CPU.
        bump(CTR_SCHED_MISSED);
    }
    resume::<true>(t, next, now_ns());
    Some(())
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    try_sched_wakeup(&ctx).unwrap_or(0)
}

fn try_sched_wakeup(ctx: &TracePointContext) -> Option<u32> {
    let cfg = config()?;
    if cfg.flags & CFG_SCHED == 0 {
        return None;
    }
    let pid: i32 = unsafe { ctx.read_at(cfg.wakeup_pid_off as usize) }.ok()?;
    woken(pid as u32)
}

/// A task was woken: a loop thread asleep inside an iteration now waits for
/// a CPU.
#[inline(always)]
pub fn woken(pid: u32) -> Option<u32> {
    let t = thread(pid)?;
    if t.flags & THREAD_IN_ITER == 0 || t.phase != PHASE_OFF_CPU {
        return None;
    }
    close_phase(t, now_ns());
    t.phase = PHASE_RUNQUEUE;
    Some(0)
}
