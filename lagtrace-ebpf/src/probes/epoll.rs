//! The wait points: `sys_exit_epoll_*` opens a loop iteration and
//! `sys_enter_epoll_*` closes it. One program of each kind is attached to
//! epoll_wait, epoll_pwait and epoll_pwait2. The other attach modes
//! (`syscalls.rs`, `fentry.rs`) call the same [`wait_returned`] and
//! [`wait_entered`], so every mode gives the same spans.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use lagtrace_common::THREAD_IN_ITER;

use crate::iteration::{begin, end, now_ns, target, thread, thread_or_insert};

#[tracepoint]
pub fn epoll_exit(ctx: TracePointContext) -> u32 {
    try_epoll_exit(&ctx).unwrap_or(0)
}

fn try_epoll_exit(ctx: &TracePointContext) -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    target((pid_tgid >> 32) as u32)?;
    wait_returned(ctx, pid_tgid)?;
    Some(0)
}

/// An epoll wait of a thread of a target returned: an iteration starts.
/// The caller has checked that `pid_tgid` belongs to a target.
#[inline(always)]
pub fn wait_returned<C: EbpfContext>(ctx: &C, pid_tgid: u64) -> Option<()> {
    let t = thread_or_insert(ctx, pid_tgid as u32, (pid_tgid >> 32) as u32)?;
    begin(t, now_ns());
    Some(())
}

#[tracepoint]
pub fn epoll_enter(_ctx: TracePointContext) -> u32 {
    try_epoll_enter().unwrap_or(0)
}

fn try_epoll_enter() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    target((pid_tgid >> 32) as u32)?;
    wait_entered(pid_tgid)?;
    Some(0)
}

/// A thread of a target enters an epoll wait: its iteration ends. The
/// caller has checked that `pid_tgid` belongs to a target.
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
