//! The records a live trace hands its outputs besides spans: the header at
//! attach and the summary at the end (see `output/records.rs`), built from
//! the pipeline's state and the kernel's counters.
use super::pipeline::Pipeline;
use crate::{
    aggregate::summary::OTHER_PROCESSES,
    events::StackEnd,
    output::records::{
        Header, Health, ProcessSummary, SamplerKind, SummaryRecord, TargetInfo, UnwindFile,
        UnwindTables,
    },
    probes::{Counters, SampleClock},
    target::Target,
    unwind::TableStats,
};

/// Rows of top causes per process.
pub(super) const TOP_CAUSES: usize = 5;

pub(super) fn header(targets: &[Target], threshold_ns: u64, sampling: &SampleClock) -> Header {
    let targets = targets
        .iter()
        .map(|t| TargetInfo {
            pid: t.pid,
            comm: t.comm.clone(),
            describe: t.describe(),
        })
        .collect();
    let kind = match sampling {
        SampleClock::Off => SamplerKind::Off,
        SampleClock::Tick(_) => SamplerKind::Tick,
        SampleClock::Clock(_) => SamplerKind::Clock,
    };
    Header::now(targets, threshold_ns, sampling.hz(), kind)
}

pub(super) fn summary(
    p: &Pipeline,
    c: &Counters,
    tables: &TableStats,
    wall_ns: u64,
    exited: &[u32],
) -> SummaryRecord {
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
        .chain(p.summary.has_folded().then(|| ProcessSummary {
            pid: 0,
            comm: OTHER_PROCESSES.into(),
            describe: format!(
                "{} processes that exited, folded together",
                p.summary.folded_processes
            ),
            exited: true,
            active: true,
            threads: p.summary.build(0, wall_ns),
            top_causes: p.summary.top_causes(0, TOP_CAUSES),
        }))
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
        sched_events_missed: c.sched_missed,
        user_stack_ends: StackEnd::ALL
            .iter()
            .zip(c.user_ends)
            .filter(|(_, n)| *n > 0)
            .map(|(e, n)| (format!("{e:?}").to_lowercase(), n))
            .collect(),
        code_objects_read,
        code_objects_stale,
        unwind_tables: unwind_tables(tables),
    };
    SummaryRecord {
        wall_ns,
        processes,
        health,
        window: None,
    }
}

/// Bytes of kernel map per unwind row.
const ROW_BYTES: u64 = std::mem::size_of::<lagtrace_common::UnwindRow>() as u64;

/// The unwind tables' figures as the summary records them.
pub(super) fn unwind_tables(s: &TableStats) -> UnwindTables {
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    UnwindTables {
        files_loaded: s.files_loaded,
        rows: s.rows,
        bytes: s.rows * ROW_BYTES,
        build_ns: ns(s.build_time),
        load_ns: ns(s.load_time),
        files_without_cfi: s.files_without_cfi,
        files_over_budget: s.files_over_budget,
        mappings_dropped: s.mappings_dropped,
        procs_dropped: s.procs_dropped,
        files: s
            .files
            .iter()
            .map(|f| UnwindFile {
                path: f.path.clone(),
                rows: f.rows,
                bytes: f.rows * ROW_BYTES,
                fdes: f.fdes,
                unsupported_rows: f.unsupported_rows,
                build_ns: ns(f.build_time),
                load_ns: ns(f.load_time),
            })
            .collect(),
    }
}
