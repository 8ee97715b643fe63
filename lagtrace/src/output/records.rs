//! The records of a `--spans` file besides the spans themselves: a header
//! first (what was traced, how) and the summary last (the figures of the
//! whole trace and lagtrace's health). Spans are the lines without a
//! `record` field, as they always were; these two carry `"record":
//! "header"` and `"record": "summary"`. The summary object is also what
//! `--summary-json` writes.
//!
//! [`FORMAT_VERSION`] grows when a reader of an older version would
//! misread a file; adding fields does not change it.
use serde::{Deserialize, Serialize};

use crate::aggregate::summary::{CauseRow, SummaryBuilder, ThreadSummary};

/// The version of the recorded-file format written by this lagtrace.
/// 2: a span's `blame` no longer holds `frame` and `group` (derived from
/// its other fields), which format-1 readers require; this lagtrace reads
/// both.
pub const FORMAT_VERSION: u32 = 2;

/// A non-span line of a `--spans` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "lowercase")]
pub enum Record {
    Header(Header),
    Summary(SummaryRecord),
}

/// One traced process, as it was at attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    /// How lagtrace saw it: `python3, pid 7 in its namespace`.
    pub describe: String,
}

/// The first record: enough to render every output from the file alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub lagtrace_version: String,
    pub targets: Vec<TargetInfo>,
    pub threshold_ns: u64,
    /// Sampling frequency in Hz (0: no sampling).
    pub frequency_hz: u64,
    /// What clocked the on-CPU samples (files from before it: the clock).
    #[serde(default)]
    pub sampler: SamplerKind,
    pub kernel_release: String,
    pub start_unix_ns: u64,
}

/// The clock of the on-CPU samples (see `probes::sampling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// A CPU clock per thread (`-F N`), or per CPU as its fallback.
    #[default]
    Clock,
    /// The kernel's scheduler tick.
    Tick,
    /// No on-CPU samples (`-F 0`).
    Off,
}

impl Header {
    /// The header of a trace starting now on this host.
    pub fn now(
        targets: Vec<TargetInfo>,
        threshold_ns: u64,
        frequency_hz: u64,
        sampler: SamplerKind,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            lagtrace_version: env!("CARGO_PKG_VERSION").into(),
            targets,
            threshold_ns,
            frequency_hz,
            sampler,
            kernel_release: kernel_release(),
            start_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// One process's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// As the summary's title shows it (`python3, pid 7 in its namespace`).
    pub describe: String,
    pub exited: bool,
    /// A thread of it ran at least one loop iteration.
    pub active: bool,
    pub threads: Vec<ThreadSummary>,
    pub top_causes: Vec<CauseRow>,
}

/// lagtrace's own health: what it lost or could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Kernel events lost to a full ring buffer.
    pub lost_events: u64,
    /// Samples dropped before their span crossed the threshold.
    pub samples_dropped: u64,
    /// Spans over the per-second budget: counted, not symbolized or written.
    pub spans_refused: u64,
    /// Spans still arriving at exit, dropped unread.
    pub spans_unread_at_exit: u64,
    /// Stacks folded into `[other stacks]` past the aggregation limits.
    pub stacks_overflow: u64,
    /// Kernel stack captures that failed.
    pub kernel_stack_errors: u64,
    /// Samples lost for want of kernel sample room.
    pub no_sample_room: u64,
    /// Scheduler events of loop threads that reached no program (the
    /// kernel does not promise a run per event; why it skipped them on a
    /// 6.18 VM is not known), found and healed when the thread's next event
    /// showed them. Each moves a wait's end to that
    /// event, so its on-CPU/off-CPU split is less exact.
    #[serde(default)]
    pub sched_events_missed: u64,
    /// User stack walks by how they ended (`root`, `depth`, `no-table`…).
    pub user_stack_ends: std::collections::BTreeMap<String, u64>,
    /// Python code objects read from the targets, and entries found stale.
    pub code_objects_read: u64,
    pub code_objects_stale: u64,
    /// The native unwind tables built for the targets (what `-v` logs).
    #[serde(default)]
    pub unwind_tables: UnwindTables,
}

/// The native unwind tables of the trace: totals, and each file (the first
/// `unwind::tables::MAX_FILE_STATS` of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwindTables {
    pub files_loaded: u64,
    pub rows: u64,
    /// Bytes of kernel map the rows take.
    pub bytes: u64,
    pub build_ns: u64,
    pub load_ns: u64,
    pub files_without_cfi: u64,
    pub files_over_budget: u64,
    pub mappings_dropped: u64,
    pub procs_dropped: u64,
    pub files: Vec<UnwindFile>,
}

/// One file's unwind table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwindFile {
    pub path: std::path::PathBuf,
    pub rows: u64,
    /// Bytes of kernel map its rows take.
    pub bytes: u64,
    pub fdes: u64,
    pub unsupported_rows: u64,
    pub build_ns: u64,
    pub load_ns: u64,
}

/// The last record, and the `--summary-json` file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    /// Traced wall time.
    pub wall_ns: u64,
    pub processes: Vec<ProcessSummary>,
    pub health: Health,
    /// A `SIGUSR1` snapshot: the window of spans it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<SnapshotWindow>,
}

/// The spans a snapshot summary covers: those starting in
/// `from_unix_ns..to_unix_ns` (as `lagtrace report --since --until`
/// selects them), less `spans_not_kept` pushed out by the window's cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotWindow {
    pub from_unix_ns: u64,
    pub to_unix_ns: u64,
    pub spans_not_kept: u64,
}

impl SummaryRecord {
    /// This summary with its span figures and top causes taken from the
    /// spans given to `spans` instead: the iteration figures (which the
    /// kernel counts for the whole trace) stay. `lagtrace report` uses it
    /// for the spans it keeps, a snapshot for the spans of its window.
    /// Spans of processes the record folded into its pid-0 row count there.
    pub fn with_spans(&self, spans: &mut SummaryBuilder, top_causes: usize) -> SummaryRecord {
        if self.processes.iter().any(|p| p.pid == 0) {
            spans.fold_unlisted(|pid| self.processes.iter().any(|p| p.pid == pid));
        }
        let processes = self
            .processes
            .iter()
            .map(|p| ProcessSummary {
                threads: spans.rebuild(&p.threads, self.wall_ns),
                top_causes: spans.top_causes(p.pid, top_causes),
                ..p.clone()
            })
            .collect();
        SummaryRecord {
            processes,
            ..self.clone()
        }
    }

    /// The record as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(&Record::Summary(self.clone())).expect("a summary always serializes")
    }
}
