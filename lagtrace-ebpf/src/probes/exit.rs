//! Thread exit: a thread that exits inside a long iteration (the process
//! killed, `os._exit`, `pthread_exit`) closes it as an unfinished span, so a
//! stall that ends in death is reported; a short one is dropped. The entry
//! stays for userspace to read its histogram one last time, then userspace
//! deletes it.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use crate::iteration::{end_at_exit, now_ns, thread};

#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    try_thread_exit().unwrap_or(0)
}

fn try_thread_exit() -> Option<u32> {
    // sched_process_exit fires in the context of the exiting thread.
    let tid = bpf_get_current_pid_tgid() as u32;
    let t = thread(tid)?;
    end_at_exit(t, tid, now_ns());
    t.flags = 0;
    t.nbuf = 0;
    Some(0)
}
