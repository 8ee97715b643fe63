//! The wait points as BPF trampolines on the kernel functions every epoll
//! wait and every futex call goes through: `do_epoll_wait` (epoll_wait,
//! epoll_pwait and epoll_pwait2 all call it) and `do_futex`.
//!
//! Why: a trampoline runs only when the function runs, so a host's other
//! syscalls pay nothing, unlike any syscall tracepoint. It needs fentry
//! (5.5+ on x86-64, with BTF and ftrace: userspace probes for it and falls
//! back to the tracepoint modes).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::{
    iteration::target,
    probes::{
        epoll::{wait_entered, wait_returned},
        futex::{futex_entered, futex_returned},
    },
};

#[fentry(function = "do_epoll_wait")]
pub fn fentry_epoll_wait(_ctx: FEntryContext) -> u32 {
    let _ = wait_entered(bpf_get_current_pid_tgid());
    0
}

#[fexit(function = "do_epoll_wait")]
pub fn fexit_epoll_wait(ctx: FExitContext) -> u32 {
    let _ = wait_returned(&ctx, bpf_get_current_pid_tgid());
    0
}

/// `do_futex(u32 *uaddr, int op, u32 val, ktime_t *timeout, …)`: `op` is
/// the second argument, the timeout (NULL for none) the fourth.
#[fentry(function = "do_futex")]
pub fn fentry_futex(ctx: FEntryContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(cfg) = target((pid_tgid >> 32) as u32) {
        let _ = futex_entered(&ctx, pid_tgid, cfg, ctx.arg::<u64>(1), ctx.arg::<u64>(3));
    }
    0
}

/// fexit sees the same arguments as fentry.
#[fexit(function = "do_futex")]
pub fn fexit_futex(ctx: FExitContext) -> u32 {
    let _ = futex_returned(&ctx, bpf_get_current_pid_tgid(), || {
        Some((ctx.arg::<u64>(1), ctx.arg::<u64>(3)))
    });
    0
}
