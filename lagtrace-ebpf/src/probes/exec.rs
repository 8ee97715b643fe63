//! `--name`, `--cgroup`: a process that starts a new program after attach
//! may be a target. Every exec on the host is sent, as a small record, to
//! userspace, which matches it against the selection (a regex on the
//! command line cannot run here) and enrolls it before its loop starts.
//!
//! sched_process_exec fires after the new program is in place, in the
//! context of the exec'ing task: its comm and cgroup are the new ones.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_get_current_cgroup_id,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use lagtrace_common::{CFG_SELECT, CTR_RINGBUF_LOST, EVENT_EXEC, EventHeader, ExecEvent};

use crate::{
    iteration::{bump, config},
    maps::EXECS,
};

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    try_process_exec().unwrap_or(0)
}

fn try_process_exec() -> Option<u32> {
    if config()?.flags & CFG_SELECT == 0 {
        return None;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(mut entry) = EXECS.reserve::<ExecEvent>(0) else {
        bump(CTR_RINGBUF_LOST);
        return None;
    };
    entry.write(ExecEvent {
        header: EventHeader {
            kind: EVENT_EXEC,
            size: core::mem::size_of::<ExecEvent>() as u32,
            tgid: (id >> 32) as u32,
            tid: id as u32,
        },
        // SAFETY: the helper only reads the current task's cgroup.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    entry.submit(0);
    Some(0)
}
