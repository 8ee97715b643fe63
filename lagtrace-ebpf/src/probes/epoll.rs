//! The wait points: `sys_exit_epoll_*` opens a loop iteration and
//! `sys_enter_epoll_*` closes it. One program of each kind is attached to
//! epoll_wait, epoll_pwait and epoll_pwait2. The other attach modes
//! (`syscalls.rs`, `fentry.rs`) call the same [`wait_returned`] and
//! [`wait_entered`], so every mode gives the same spans.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use lagtrace_common::{CFG_WAIT_BY_SWITCH, THREAD_IN_ITER};

use crate::iteration::{begin, config, end, now_ns, target, thread, thread_or_insert};

#[tracepoint]
pub fn epoll_exit(ctx: TracePointContext) -> u32 {
    try_epoll_exit(&ctx).unwrap_or(0)
}

fn try_epoll_exit(ctx: &TracePointContext) -> Option<u32> {
    wait_returned(ctx, bpf_get_current_pid_tgid())?;
    Some(0)
}

/// An epoll wait returned: if the thread is a known loop thread, or a
/// thread of a target, an iteration starts. With [`CFG_WAIT_BY_SWITCH`]
/// (no hook on the wait's entry) a thread still inside an iteration did not
/// sleep in the wait, and its iteration ends here.
///
/// A known loop thread costs one map lookup here, the loop's hot path; only
/// a thread not seen yet is looked up in the targets as well. (Userspace
/// stops tracing only processes that exited, whose threads wait no more.)
#[inline(always)]
pub fn wait_returned<C: EbpfContext>(ctx: &C, pid_tgid: u64) -> Option<()> {
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let t = match thread(tid) {
        Some(t) if t.tgid == tgid => t,
        _ => {
            target(tgid)?;
            thread_or_insert(ctx, tid, tgid, 0)?
        }
    };
    // An epoll wait makes a loop thread of one on probation (a worker that
    // drives the runtime's I/O).
    t.probation = 0;
    let now = now_ns();
    if t.flags & THREAD_IN_ITER != 0 && config()?.flags & CFG_WAIT_BY_SWITCH != 0 {
        end(t, tid, now);
    }
    begin(t, now);
    Some(())
}

#[tracepoint]
pub fn epoll_enter(_ctx: TracePointContext) -> u32 {
    try_epoll_enter().unwrap_or(0)
}

fn try_epoll_enter() -> Option<u32> {
    wait_entered(bpf_get_current_pid_tgid())?;
    Some(0)
}

/// A thread enters an epoll wait: if it is a loop thread inside an
/// iteration, the iteration ends. Only loop threads of targets are in the
/// thread table, so one lookup filters every other thread.
#[inline(always)]
pub fn wait_entered(pid_tgid: u64) -> Option<()> {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let t = thread(tid)?;
    if t.flags & THREAD_IN_ITER == 0 || t.tgid != tgid {
        return None;
    }
    end(t, tid, now_ns());
    Some(())
}
