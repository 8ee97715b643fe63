//! Feeding `--metrics` from the session, once a second: the kernel's loop
//! threads (histograms), what selected each target (`service`), and
//! lagtrace's own health. Spans are fed as they finish (`pipeline.rs`).
use lagtrace_common::ThreadState;

use super::{pipeline::Pipeline, select::Selection};
use crate::{
    output::metrics::{Health, self_usage},
    probes::Probes,
};

pub(super) fn update(
    p: &mut Pipeline,
    probes: &Probes,
    threads: &[(u32, ThreadState)],
    selection: &Selection,
    exited: &[u32],
) {
    let Some(m) = p.metrics.clone() else { return };
    let mut rows = Vec::new();
    for (tid, t) in threads.iter().filter(|(_, t)| t.is_loop_thread()) {
        let Some(comm) = p.target(t.tgid).map(|x| x.comm.clone()) else {
            continue;
        };
        let name = p.names.get(t.tgid, *tid, &[]);
        rows.push((*tid, comm, name, t));
    }
    m.threads(&rows);
    for t in p.targets.iter() {
        if let Some(s) = selection.service(t.pid) {
            m.set_service(t.pid, s);
        }
    }
    for pid in exited {
        m.exited(*pid);
    }
    let c = probes.counters().unwrap_or_default();
    let (cpu_seconds, rss_bytes) = self_usage();
    m.health(Health {
        lost_events: c.ringbuf_lost,
        dropped_samples: c.samples_dropped + c.no_sample_room,
        stack_errors: c.kernel_stack_errors,
        sched_missed: c.sched_missed,
        cpu_seconds,
        rss_bytes,
        targets: (p.targets.len() - exited.len()) as u64,
    });
}
