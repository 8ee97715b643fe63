//! The scheduler accounting of `sched.rs` through tp_btf: the same
//! `switch_out`/`switch_in`/`woken` logic, fed from the tracepoints' typed
//! arguments (`task_struct` pointers) instead of the classic record.
//!
//! Why: sched_switch fires for every context switch on the host, and the
//! classic tracepoint first formats a record for it (two comms, pids,
//! priorities, state). tp_btf hands over the raw arguments, so a switch of
//! a task lagtrace does not trace costs only the program's tid lookups.
//!
//! `sched_switch(bool preempt, struct task_struct *prev, struct task_struct
//! *next, …)`: the first three arguments are the same on every kernel since
//! 4.x (5.18 appended `prev_state`). The current task is still `prev`. The
//! `pid` and `__state` (`state` before 5.14) offsets in `task_struct` come
//! from the kernel's BTF via `Config`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use lagtrace_common::CFG_SCHED;

use crate::{
    iteration::{config, thread},
    probes::sched::{switch_in, switch_out, woken},
};

/// What the classic tracepoint reports for a preempted task (`R+`): no
/// sleep bit, so `switch_out` counts runqueue time.
const PREEMPTED_STATE: i64 = 0x100;
/// The state bits `switch_out` looks at (sleep, stop, trace); the rest of
/// `__state` (TASK_WAKEKILL, TASK_NOLOAD, …) is not in the classic report.
const REPORTED_STATE_MASK: i64 = 0xff;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> u32 {
    try_switch::<true, false>(&ctx).unwrap_or(0)
}

/// The same for kernels without `bpf_loop` (see `stacks::capture`).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf_fp(ctx: BtfTracePointContext) -> u32 {
    try_switch::<false, false>(&ctx).unwrap_or(0)
}

/// The same, also ending an iteration where its thread falls asleep in an
/// epoll wait: the sched program of `--attach exit-tp`, which hooks only
/// the waits' returns (5.17+: it needs `bpf_loop` and `bpf_task_pt_regs`).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf_wait(ctx: BtfTracePointContext) -> u32 {
    try_switch::<true, true>(&ctx).unwrap_or(0)
}

/// A `task_struct` field at `off`, read as `T`.
#[inline(always)]
fn task_field<T>(task: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly;
    // `task` is a tracepoint's task pointer and `off` is from kernel BTF.
    unsafe { bpf_probe_read_kernel((task as usize + off as usize) as *const T) }.ok()
}

fn try_switch<const WALK: bool, const WAIT: bool>(ctx: &BtfTracePointContext) -> Option<u32> {
    let cfg = config()?;
    if cfg.flags & CFG_SCHED == 0 {
        return None;
    }
    let prev_tid = bpf_get_current_pid_tgid() as u32;
    if thread(prev_tid).is_some() {
        let preempt = ctx.arg::<u64>(0) & 1 != 0;
        let state = if preempt {
            PREEMPTED_STATE
        } else {
            // `__state` is an unsigned int (a long `state` before 5.14,
            // whose low half it reads on little-endian).
            let raw: u32 = task_field(ctx.arg::<u64>(1), cfg.task_state_off)?;
            i64::from(raw) & REPORTED_STATE_MASK
        };
        switch_out::<_, WALK, WAIT>(ctx, cfg, prev_tid, state);
    }
    let next: i32 = task_field(ctx.arg::<u64>(2), cfg.task_pid_off)?;
    switch_in(next as u32);
    Some(0)
}

/// `sched_wakeup(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> u32 {
    try_wakeup(&ctx).unwrap_or(0)
}

fn try_wakeup(ctx: &BtfTracePointContext) -> Option<u32> {
    let cfg = config()?;
    if cfg.flags & CFG_SCHED == 0 {
        return None;
    }
    let pid: i32 = task_field(ctx.arg::<u64>(0), cfg.task_pid_off)?;
    woken(pid as u32)
}
