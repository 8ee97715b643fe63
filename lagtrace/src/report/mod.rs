//! `lagtrace report FILE.jsonl [filters] [outputs]`: a recorded `--spans`
//! file rendered again, filtered, as any output. The spans go through the
//! same [`Outputs`] as in a live run (samply's "one converter for capture
//! and import"), so a report of a whole file writes what the live run
//! wrote. Needs no privileges: it reads only the file.
//!
//! The summary's iteration figures (iterations, percentiles) cover the
//! whole recorded trace; its span figures and top causes are computed
//! again from the spans kept.
pub mod filter;
pub mod read;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use self::filter::{Filter, TimeBound};
use crate::{
    aggregate::summary::{SummaryBuilder, ThreadSummary},
    error::Result,
    output::{
        OutputPaths, Outputs, TraceInfo,
        records::{Header, ProcessSummary, SummaryRecord, TargetInfo},
        summary::TerminalSummary,
    },
    session::period_ns,
};

/// Rows of top causes per process, as in a live run.
const TOP_CAUSES: usize = 5;

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A file written by `lagtrace --spans`.
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,

    /// Keep spans that start at or after this time: RFC 3339
    /// (2026-11-26T04:00:00Z) or before the end of the recording (-10m).
    #[arg(long, value_parser = filter::parse_time, allow_hyphen_values = true)]
    pub since: Option<TimeBound>,

    /// Keep spans that start before this time (same forms as --since).
    #[arg(long, value_parser = filter::parse_time, allow_hyphen_values = true)]
    pub until: Option<TimeBound>,

    /// Keep spans of this process (repeat for several).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,

    /// Keep spans of this thread, by name or tid (repeat for several).
    #[arg(long = "thread")]
    pub threads: Vec<String>,

    /// Keep spans at least this long (e.g. 200ms).
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub min_duration: Option<Duration>,

    /// Keep spans whose cause contains this text (e.g. cpu, blocked, recvfrom).
    #[arg(long)]
    pub cause: Option<String>,

    /// Keep spans blamed on this function (their blame frame, else their cause, contains it).
    #[arg(long, value_name = "FUNCTION")]
    pub blame: Option<String>,

    #[command(flatten)]
    pub files: crate::cli::OutputFiles,
}

impl ReportArgs {
    fn filter(&self) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            pids: self.pids.clone(),
            threads: self.threads.clone(),
            min_duration: self.min_duration,
            cause: self.cause.clone(),
            blame: self.blame.clone(),
        }
    }

    fn paths(&self) -> OutputPaths {
        OutputPaths {
            spans: None,
            folded: self.files.folded.clone(),
            flamegraph: self.files.flamegraph.clone(),
            pprof: self.files.pprof.clone(),
            speedscope: self.files.speedscope.clone(),
            summary_json: self.files.summary_json.clone(),
            spans_rotate: None,
        }
    }
}

/// What a report did.
#[derive(Debug, Default)]
pub struct ReportOutcome {
    pub spans_read: usize,
    pub spans_kept: usize,
    pub files: Vec<PathBuf>,
    /// Outputs that could not be written, with why (already warned about).
    pub failed_outputs: Vec<String>,
}

pub fn run(args: &ReportArgs) -> Result<ReportOutcome> {
    let rec = read::read(&args.file)?;
    let shown = crate::output::sanitize::line(&args.file.display().to_string()).into_owned();
    for w in &rec.warnings {
        eprintln!("lagtrace: warning: {shown}: {w}");
    }
    let header = rec
        .header
        .clone()
        .unwrap_or_else(|| header_from_spans(&rec));
    let end = recording_end(&rec, &header);
    let filter = args.filter();
    let period = period_ns(header.frequency_hz);
    let multi = header.targets.len() > 1;
    let mut outputs = Outputs::open_paths(&args.paths(), None, period, multi)?;
    outputs.push_console(Box::new(TerminalSummary::default()));
    outputs.begin(&header);
    let mut builder = SummaryBuilder::default();
    let mut kept = 0;
    for span in rec.spans.iter().filter(|s| filter.keeps(s, end)) {
        outputs.record(span);
        builder.span(span);
        kept += 1;
    }
    eprintln!(
        "lagtrace: report of {shown}: {kept} of {} spans kept",
        rec.spans.len()
    );
    let mut summary = summary_again(&rec, &header, &mut builder, end);
    if !filter.pids.is_empty() {
        summary.processes.retain(|p| filter.pids.contains(&p.pid));
    }
    let info = TraceInfo {
        pids: header.targets.iter().map(|t| t.pid).collect(),
        comms: header.targets.iter().map(|t| t.comm.clone()).collect(),
        threshold_ns: header.threshold_ns,
        period_ns: period,
        summary,
    };
    let files = outputs.finish(&info);
    Ok(ReportOutcome {
        spans_read: rec.spans.len(),
        spans_kept: kept,
        files,
        failed_outputs: std::mem::take(&mut outputs.failed),
    })
}

/// A header for a file that lost its own: the processes its spans name.
fn header_from_spans(rec: &read::Recorded) -> Header {
    let mut targets: BTreeMap<u32, TargetInfo> = BTreeMap::new();
    for s in &rec.spans {
        targets.entry(s.pid).or_insert_with(|| TargetInfo {
            pid: s.pid,
            comm: s.comm.clone(),
            describe: s.comm.clone(),
        });
    }
    Header {
        targets: targets.into_values().collect(),
        frequency_hz: crate::cli::DEFAULT_FREQUENCY,
        start_unix_ns: rec.spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0),
        ..Header::default()
    }
}

/// When the recording ended: the end of its traced time, or of its last span.
fn recording_end(rec: &read::Recorded, header: &Header) -> u64 {
    let spans = rec
        .spans
        .iter()
        .map(|s| s.start_unix_ns + s.duration_ns)
        .max()
        .unwrap_or(0);
    let traced = rec
        .summary
        .as_ref()
        .map_or(0, |s| header.start_unix_ns + s.wall_ns);
    spans.max(traced)
}

/// The summary of the spans kept: the recorded iteration figures, the span
/// figures and causes of the spans kept.
fn summary_again(
    rec: &read::Recorded,
    header: &Header,
    builder: &mut SummaryBuilder,
    end: u64,
) -> SummaryRecord {
    let recorded = rec.summary.clone().unwrap_or_else(|| SummaryRecord {
        wall_ns: end.saturating_sub(header.start_unix_ns),
        processes: processes_from_spans(rec, header),
        ..SummaryRecord::default()
    });
    recorded.with_spans(builder, TOP_CAUSES)
}

/// Processes and threads as the spans of a file without a summary show
/// them (no iteration figures: those were in the summary).
fn processes_from_spans(rec: &read::Recorded, header: &Header) -> Vec<ProcessSummary> {
    header
        .targets
        .iter()
        .map(|t| {
            let mut threads: BTreeMap<u32, ThreadSummary> = BTreeMap::new();
            for s in rec.spans.iter().filter(|s| s.pid == t.pid) {
                threads.entry(s.tid).or_insert_with(|| ThreadSummary {
                    pid: s.pid,
                    tid: s.tid,
                    thread: s.thread.clone(),
                    ..ThreadSummary::default()
                });
            }
            ProcessSummary {
                pid: t.pid,
                comm: t.comm.clone(),
                describe: t.describe.clone(),
                exited: false,
                active: !threads.is_empty(),
                threads: threads.into_values().collect(),
                top_causes: Vec::new(),
            }
        })
        .collect()
}
