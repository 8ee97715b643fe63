//! The wait points through the generic syscall hooks, `raw_syscalls`'
//! `sys_enter`/`sys_exit`, as a raw tracepoint or as tp_btf.
//!
//! Why: enabling any classic `syscalls:` tracepoint makes every syscall of
//! every process on the host take the traced slow path *and* format a trace
//! record for the one it hits. These hooks skip the record: the program gets
//! `pt_regs` and the syscall number. They run for every syscall of the host,
//! so the target check comes first and the syscall number after it.
//!
//! x86-64 only: the syscall numbers (`lagtrace_common::syscalls`) and the
//! `pt_regs` offsets below are that ABI's
//! (arch/x86/entry/syscalls/syscall_64.tbl, arch/x86/include/asm/ptrace.h);
//! userspace offers these modes only there.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use lagtrace_common::syscalls::{EPOLL_PWAIT, EPOLL_PWAIT2, EPOLL_WAIT, FUTEX};

use crate::{
    iteration::target,
    probes::{
        epoll::{wait_entered, wait_returned},
        futex::{futex_entered, futex_returned},
    },
};

/// `struct pt_regs` on x86-64: `r10` and `si` (the fourth and second
/// syscall arguments, kept through the return as well) and `orig_ax` (the
/// syscall number, kept through the return).
const PT_REGS_R10: usize = 56;
const PT_REGS_SI: usize = 104;
const PT_REGS_ORIG_AX: usize = 120;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_sys_enter(ctx: RawTracePointContext) -> u32 {
    sys_enter(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(1)).map_or(0, |()| 0)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    sys_exit(&ctx, ctx.arg::<u64>(0)).map_or(0, |()| 0)
}

#[btf_tracepoint(function = "sys_enter")]
pub fn btf_sys_enter(ctx: BtfTracePointContext) -> u32 {
    sys_enter(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(1)).map_or(0, |()| 0)
}

#[btf_tracepoint(function = "sys_exit")]
pub fn btf_sys_exit(ctx: BtfTracePointContext) -> u32 {
    sys_exit(&ctx, ctx.arg::<u64>(0)).map_or(0, |()| 0)
}

/// A word of the syscall's saved registers `regs` (a `struct pt_regs *`).
#[inline(always)]
fn reg(regs: u64, offset: usize) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly;
    // the pointer is the tracepoint's own `regs` argument.
    unsafe { bpf_probe_read_kernel((regs as usize + offset) as *const u64) }.ok()
}

#[inline(always)]
fn sys_enter<C: EbpfContext>(ctx: &C, regs: u64, nr: u64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = target((pid_tgid >> 32) as u32)?;
    match nr {
        EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2 => wait_entered(pid_tgid),
        FUTEX => futex_entered(
            ctx,
            pid_tgid,
            cfg,
            reg(regs, PT_REGS_SI)?,
            reg(regs, PT_REGS_R10)?,
        ),
        _ => None,
    }
}

#[inline(always)]
fn sys_exit<C: EbpfContext>(ctx: &C, regs: u64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    target((pid_tgid >> 32) as u32)?;
    match reg(regs, PT_REGS_ORIG_AX)? {
        EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2 => wait_returned(ctx, pid_tgid),
        FUTEX => futex_returned(ctx, pid_tgid, || {
            Some((reg(regs, PT_REGS_SI)?, reg(regs, PT_REGS_R10)?))
        }),
        _ => None,
    }
}
