//! `--children`: a process forked by a target becomes a target, with the
//! parent's settings, before it runs a single instruction of its own.
//!
//! sched_process_fork also fires for new threads; their tids land in
//! TARGETS as well, where they never match a tgid and userspace prunes them.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use lagtrace_common::{CFG_CHILDREN, CTR_TARGETS_FULL};

use crate::{
    iteration::{bump, config, target},
    maps::TARGETS,
};

#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    try_process_fork(&ctx).unwrap_or(0)
}

fn try_process_fork(ctx: &TracePointContext) -> Option<u32> {
    let cfg = config()?;
    if cfg.flags & CFG_CHILDREN == 0 {
        return None;
    }
    // The forking task is the current one.
    let parent = *target((bpf_get_current_pid_tgid() >> 32) as u32)?;
    let child: i32 = unsafe { ctx.read_at(cfg.fork_child_off as usize) }.ok()?;
    if TARGETS.insert(child as u32, parent, 0).is_err() {
        // Counted, and reported: a fork storm past the table's size.
        bump(CTR_TARGETS_FULL);
    }
    Some(0)
}
