//! The worker model's second wait point: a runtime worker with nothing to do
//! parks on a futex (tokio's multi-thread workers do), not in epoll_wait.
//! For targets in the worker model, a futex wait ends the iteration and its
//! return starts the next one. Other futex operations (wake, requeue) are
//! not waits and are ignored. Epoll-model targets never get here: a lock
//! taken inside an asyncio callback is blocking, not idling. The other
//! attach modes call the same [`futex_entered`] and [`futex_returned`].
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use lagtrace_common::{
    MODEL_WORKER, THREAD_IN_ITER, TargetConfig, WORKER_COMM_PREFIX, WORKER_PROBATION, is_futex_wait,
};

use crate::iteration::{begin, end, now_ns, target, thread, thread_or_insert};

/// `op` is the second syscall argument: 8-byte slots from offset 16.
const OP_OFFSET: usize = 24;
/// `utime`, the fourth: the wait's timeout, NULL for none.
const TIMEOUT_OFFSET: usize = 40;

#[tracepoint]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    try_futex_enter(&ctx).unwrap_or(0)
}

fn try_futex_enter(ctx: &TracePointContext) -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = target((pid_tgid >> 32) as u32)?;
    // SAFETY: OP_OFFSET is inside sys_enter_futex's record; read_at checks
    // the read through the kernel.
    let op: u64 = unsafe { ctx.read_at(OP_OFFSET) }.ok()?;
    // SAFETY: as above, for the fourth argument.
    let timeout: u64 = unsafe { ctx.read_at(TIMEOUT_OFFSET) }.ok()?;
    futex_entered(ctx, pid_tgid, cfg, op, timeout)?;
    Some(0)
}

/// A thread of target `cfg` enters futex operation `op` with `timeout` (a
/// pointer, 0 for none): a wait ends the iteration of a worker-model target.
#[inline(always)]
pub fn futex_entered<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    cfg: &TargetConfig,
    op: u64,
    timeout: u64,
) -> Option<()> {
    if cfg.model != MODEL_WORKER {
        return None;
    }
    if !is_futex_wait(op) {
        return None;
    }
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let t = match thread(tid) {
        Some(t) if t.tgid == tgid => t,
        _ => thread_or_insert(ctx, tid, tgid, first_probation(timeout))?,
    };
    t.in_futex_wait = 1;
    if t.flags & THREAD_IN_ITER != 0 {
        end(t, tid, now_ns());
    }
    Some(())
}

/// The probation of a thread first seen entering a futex wait. A plain
/// thread waiting for a lock looks the same as a parked worker, so it
/// counts once it has shown a worker's rhythm (`WORKER_PROBATION`); a
/// thread named like a tokio worker parking with no timeout is one at once
/// (`WORKER_COMM_PREFIX`).
#[inline(always)]
fn first_probation(timeout: u64) -> u32 {
    if timeout == 0
        && let Ok(comm) = bpf_get_current_comm()
        && comm.starts_with(WORKER_COMM_PREFIX)
    {
        0
    } else {
        WORKER_PROBATION
    }
}

#[tracepoint]
pub fn futex_exit(ctx: TracePointContext) -> u32 {
    // The exit record has no arguments: see `futex_returned`.
    futex_returned(&ctx, bpf_get_current_pid_tgid(), || None).map_or(0, |()| 0)
}

/// A futex operation of any thread returned. `call` gives its `(op,
/// timeout)` where the attach mode can read them at the return.
#[inline(always)]
pub fn futex_returned<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    call: impl FnOnce() -> Option<(u64, u64)>,
) -> Option<()> {
    let Some(t) = thread(pid_tgid as u32) else {
        return parked_before_armed(ctx, pid_tgid, call);
    };
    // Only the return of a wait seen entering starts an iteration: a thread
    // that merely wakes others (a plain thread notifying the runtime) is no
    // worker. A worker parked since before attach was marked as waiting by
    // userspace (`target::parked`).
    if t.in_futex_wait == 0 || t.tgid != (pid_tgid >> 32) as u32 {
        return None;
    }
    t.in_futex_wait = 0;
    begin(t, now_ns());
    Some(())
}

/// A worker's park that began before the programs were armed, seen at its
/// return: the kernel never saw it enter, and the /proc scan missed it
/// (the thread was on its way into the wait, or just woken, so it read as
/// running). Taken in here as an epoll return takes in its thread, by the
/// rule of [`futex_entered`]: an untimed wait by a thread named like a
/// worker. Modes that cannot read the call at its return (the classic exit
/// tracepoint has no arguments) rely on the scan alone.
#[inline(always)]
fn parked_before_armed<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    call: impl FnOnce() -> Option<(u64, u64)>,
) -> Option<()> {
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if target(tgid)?.model != MODEL_WORKER {
        return None;
    }
    let (op, timeout) = call()?;
    if !is_futex_wait(op) || first_probation(timeout) != 0 {
        return None;
    }
    let t = thread_or_insert(ctx, tid, tgid, 0)?;
    begin(t, now_ns());
    Some(())
}
