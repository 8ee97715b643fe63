//! The records a live trace hands its outputs besides spans: the header at
//! attach and the summary at the end (see `output/records.rs`), built from
//! the pipeline's state and the kernel's counters.
use super::pipeline::Pipeline;
use crate::{
    events::StackEnd,
    output::records::{Header, Health, ProcessSummary, SummaryRecord, TargetInfo},
    probes::Counters,
    target::Target,
};

/// Rows of top causes per process.
const TOP_CAUSES: usize = 5;

pub(super) fn header(targets: &[Target], threshold_ns: u64, frequency_hz: u64) -> Header {
    let targets = targets
        .iter()
        .map(|t| TargetInfo {
            pid: t.pid,
            comm: t.comm.clone(),
            describe: t.describe(),
        })
        .collect();
    Header::now(targets, threshold_ns, frequency_hz)
}

pub(super) fn summary(p: &Pipeline, c: &Counters, wall_ns: u64, exited: &[u32]) -> SummaryRecord {
    let processes = p
        .targets
        .iter()
        .map(|t| ProcessSummary {
            pid: t.pid,
            comm: t.comm.clone(),
            describe: t.describe(),
            exited: exited.contains(&t.pid),
            active: p.summary.has_activity(t.pid),
            threads: p.summary.build(t.pid, wall_ns),
            top_causes: p.summary.top_causes(t.pid, TOP_CAUSES),
        })
        .collect();
    let (code_objects_read, code_objects_stale) = p.symbolizer.python.reads();
    let health = Health {
        lost_events: c.ringbuf_lost,
        samples_dropped: c.samples_dropped,
        spans_refused: p.budget.refused,
        spans_unread_at_exit: p.unread_at_exit,
        stacks_overflow: p.outputs.overflow(),
        kernel_stack_errors: c.kernel_stack_errors,
        no_sample_room: c.no_sample_room,
        user_stack_ends: StackEnd::ALL
            .iter()
            .zip(c.user_ends)
            .filter(|(_, n)| *n > 0)
            .map(|(e, n)| (format!("{e:?}").to_lowercase(), n))
            .collect(),
        code_objects_read,
        code_objects_stale,
    };
    SummaryRecord {
        wall_ns,
        processes,
        health,
    }
}
