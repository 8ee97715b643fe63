//! Thread exit: an iteration cut short by the thread's exit is no stall, so
//! the open iteration is closed without a span. The entry stays for
//! userspace to read its histogram one last time, then userspace deletes it.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use crate::iteration::thread;

#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    try_thread_exit().unwrap_or(0)
}

fn try_thread_exit() -> Option<u32> {
    // sched_process_exit fires in the context of the exiting thread.
    let tid = bpf_get_current_pid_tgid() as u32;
    let t = thread(tid)?;
    t.flags = 0;
    t.nbuf = 0;
    Some(0)
}
