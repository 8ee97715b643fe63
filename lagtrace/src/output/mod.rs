//! Outputs. Every format implements [`Recorder`]: it sees the trace's
//! [`Header`](records::Header) (`begin`), each finished span (`record`),
//! then `finish` once with the trace's summary. The live lines and the
//! terminal summary are recorders too. Adding a format is one new file here.
//!
//! The live run and `lagtrace report` feed the same [`Outputs`] with the
//! same spans, so what one writes the other writes too.
//!
//! [`Outputs`] keeps them independent: every path is checked before the
//! trace starts, each file is written beside its path and renamed into place,
//! and one that fails (a full disk) is dropped with a warning while the
//! others and the summary go on.
pub mod console;
pub mod file;
pub mod flamegraph;
pub mod folded;
pub mod jsonl;
pub mod live;
pub mod metrics;
pub mod metrics_blame;
pub mod metrics_http;
pub mod paths;
pub mod pprof;
pub mod records;
pub mod rotate;
pub mod sanitize;
pub mod speedscope;
pub mod summary;
pub mod summary_json;

use std::path::PathBuf;

use crate::{aggregate::fold::Folded, cli::Args, error::Result, spans::Span};

/// What a recorder needs to know when the trace ends.
pub struct TraceInfo {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub threshold_ns: u64,
    pub period_ns: u64,
    /// The figures of the whole trace (the last record of `--spans`).
    pub summary: records::SummaryRecord,
}

/// One output. `begin` comes once before any span, `record` once per
/// finished span (in the order spans end), `finish` once at the end; an
/// error from any of them drops this output alone. A recorder that needs
/// only the end (a summary) implements `record` as a no-op.
pub trait Recorder {
    /// The trace starts: what is traced, and how.
    fn begin(&mut self, _header: &records::Header) -> Result<()> {
        Ok(())
    }
    fn record(&mut self, span: &Span) -> Result<()>;
    /// Whether it also takes the spans that are not lag (the iteration a
    /// thread exited in, `Span::exited`): the recorded file and the live
    /// lines show them, marked; the aggregates leave them out.
    fn takes_exit_spans(&self) -> bool {
        false
    }
    /// Write what is left and put the file in place; returns its path.
    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>>;
    /// `SIGHUP`: open the file at its path again (logrotate moved it).
    /// Outputs renamed into place at the end have nothing to reopen.
    fn reopen(&mut self) -> Result<()> {
        Ok(())
    }
    /// The folded stacks it aggregates, if it does (for the health report).
    fn folded(&self) -> Option<&Folded> {
        None
    }
}

/// The output files lagtrace can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spans,
    Folded,
    FlameGraph,
    /// The flamegraph written when no output flag is given.
    DefaultFlameGraph,
    Pprof,
    Speedscope,
    SummaryJson,
    /// Standard output: the live lines, the summary.
    Console,
}

impl Kind {
    /// How the user named it, for messages.
    fn flag(self) -> &'static str {
        match self {
            Self::Spans => "--spans",
            Self::Folded => "--folded",
            Self::FlameGraph => "--flamegraph",
            Self::DefaultFlameGraph => "the default flamegraph",
            Self::Pprof => "--pprof",
            Self::Speedscope => "--speedscope",
            Self::SummaryJson => "--summary-json",
            Self::Console => "standard output",
        }
    }
}

struct Slot {
    kind: Kind,
    rec: Box<dyn Recorder>,
}

/// The outputs of one trace.
pub struct Outputs {
    slots: Vec<Slot>,
    spans: u64,
    /// One warning per output that failed, already printed.
    pub failed: Vec<String>,
}

impl Outputs {
    /// The recorders the flags ask for, their paths checked and their
    /// temporary files created. With no output flag, a flamegraph goes to
    /// `lagtrace-PID-YYYYmmdd-HHMMSS.svg` in the current folder, written
    /// only if the trace captured spans.
    pub fn open(args: &Args, first_pid: u32, period_ns: u64, multi: bool) -> Result<Self> {
        let paths = OutputPaths {
            spans: args.spans.clone(),
            folded: args.files.folded.clone(),
            flamegraph: args.files.flamegraph.clone(),
            pprof: args.files.pprof.clone(),
            speedscope: args.files.speedscope.clone(),
            summary_json: args.files.summary_json.clone(),
            spans_rotate: args.spans_max_size.map(|max| (max, args.spans_keep)),
        };
        let mut outputs = Self::open_paths(&paths, Some(first_pid), period_ns, multi)?;
        // Standard output: a line per span as it ends, the summary at the end.
        outputs.push_console(Box::new(live::LiveLines::new(multi)));
        outputs.push_console(Box::new(summary::TerminalSummary::default()));
        Ok(outputs)
    }

    /// The file outputs of `paths`; `default_svg`: the pid that names the
    /// default flamegraph when no file is asked for (none in a report).
    pub fn open_paths(
        paths: &OutputPaths,
        default_svg: Option<u32>,
        period_ns: u64,
        multi: bool,
    ) -> Result<Self> {
        let mut wanted: Vec<(Kind, PathBuf)> = Vec::new();
        for (kind, path) in [
            (Kind::Spans, &paths.spans),
            (Kind::Folded, &paths.folded),
            (Kind::FlameGraph, &paths.flamegraph),
            (Kind::Pprof, &paths.pprof),
            (Kind::Speedscope, &paths.speedscope),
            (Kind::SummaryJson, &paths.summary_json),
        ] {
            if let Some(p) = path {
                wanted.push((kind, p.clone()));
            }
        }
        if let (true, Some(pid)) = (wanted.is_empty(), default_svg) {
            wanted.push((Kind::DefaultFlameGraph, default_svg_path(pid)));
        }
        let named: Vec<(&'static str, PathBuf)> =
            wanted.iter().map(|(k, p)| (k.flag(), p.clone())).collect();
        let resolved = paths::plan(&named)?;
        let mut slots = Vec::new();
        for ((kind, _), path) in wanted.into_iter().zip(resolved) {
            let rec: Box<dyn Recorder> = match kind {
                Kind::Spans => match paths.spans_rotate {
                    Some((max, keep)) => Box::new(rotate::RotatingJsonl::create(path, max, keep)?),
                    None => Box::new(jsonl::JsonLines::create(path)?),
                },
                Kind::Folded => Box::new(folded::FoldedFile::new(path, period_ns, multi)?),
                Kind::FlameGraph | Kind::DefaultFlameGraph => {
                    Box::new(flamegraph::FlameGraphFile::new(path, period_ns, multi)?)
                }
                Kind::Pprof => Box::new(pprof::PprofFile::new(path, period_ns)?),
                Kind::Speedscope => Box::new(speedscope::SpeedscopeFile::new(path, period_ns)?),
                Kind::SummaryJson => Box::new(summary_json::SummaryJsonFile::new(path)?),
                Kind::Console => unreachable!("console recorders are pushed, not opened"),
            };
            slots.push(Slot { kind, rec });
        }
        Ok(Self {
            slots,
            spans: 0,
            failed: Vec::new(),
        })
    }

    /// Add a recorder of standard output (live lines, the summary).
    pub fn push_console(&mut self, rec: Box<dyn Recorder>) {
        self.slots.push(Slot {
            kind: Kind::Console,
            rec,
        });
    }

    /// Give the trace's header to every output; one that fails is dropped.
    pub fn begin(&mut self, header: &records::Header) {
        let mut i = 0;
        while i < self.slots.len() {
            match self.slots[i].rec.begin(header) {
                Ok(()) => i += 1,
                Err(e) => self.fail(i, &e),
            }
        }
    }

    fn fail(&mut self, i: usize, e: &crate::error::Error) {
        let flag = self.slots[i].kind.flag();
        let msg = format!("{flag}: {e}");
        eprintln!(
            "lagtrace: warning: {msg}; that output is dropped (no partial file is left), the others go on"
        );
        self.failed.push(msg);
        // Dropping the recorder removes its temporary file.
        self.slots.remove(i);
    }

    /// Give a finished span to every output; one that fails is dropped.
    pub fn record(&mut self, span: &Span) {
        if span.is_lag() {
            self.spans += 1;
        }
        let mut i = 0;
        while i < self.slots.len() {
            if !span.is_lag() && !self.slots[i].rec.takes_exit_spans() {
                i += 1;
                continue;
            }
            match self.slots[i].rec.record(span) {
                Ok(()) => i += 1,
                Err(e) => self.fail(i, &e),
            }
        }
    }

    /// `SIGHUP`: every output reopens its file; one that fails is dropped.
    pub fn reopen(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            match self.slots[i].rec.reopen() {
                Ok(()) => i += 1,
                Err(e) => self.fail(i, &e),
            }
        }
    }

    /// Stacks folded into `[other stacks]` past the aggregation limits.
    pub fn overflow(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.rec.folded())
            .map(|f| f.overflow_stacks)
            .max()
            .unwrap_or(0)
    }

    /// Write every output; returns the files written. Failures are warned
    /// about and kept in `failed`.
    pub fn finish(&mut self, info: &TraceInfo) -> Vec<PathBuf> {
        // The default flamegraph is only worth a file when a span came.
        if self.spans == 0 {
            self.slots.retain(|s| s.kind != Kind::DefaultFlameGraph);
        }
        let mut written = Vec::new();
        while !self.slots.is_empty() {
            match self.slots[0].rec.finish(info) {
                Ok(path) => {
                    written.extend(path);
                    self.slots.remove(0);
                }
                Err(e) => self.fail(0, &e),
            }
        }
        written
    }
}

/// The files asked for, by flag.
#[derive(Debug, Clone, Default)]
pub struct OutputPaths {
    pub spans: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
    pub pprof: Option<PathBuf>,
    pub speedscope: Option<PathBuf>,
    pub summary_json: Option<PathBuf>,
    /// `--spans-max-size` and `--spans-keep`: rotate the spans file.
    pub spans_rotate: Option<(u64, u32)>,
}

impl OutputPaths {
    pub fn is_empty(&self) -> bool {
        self.spans.is_none()
            && self.folded.is_none()
            && self.flamegraph.is_none()
            && self.pprof.is_none()
            && self.speedscope.is_none()
            && self.summary_json.is_none()
    }
}

fn default_svg_path(pid: u32) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tm = crate::clock::local_tm(secs);
    PathBuf::from(format!(
        "lagtrace-{pid}-{:04}{:02}{:02}-{:02}{:02}{:02}.svg",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    ))
}

/// `12.3 ms`, `1.50 s`, `850 µs`: three significant figures.
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e7 {
        format!("{:.0} ms", ns / 1e6)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_ns;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ns(850_000), "850 µs");
        assert_eq!(fmt_ns(1_234_567), "1.2 ms");
        assert_eq!(fmt_ns(123_456_789), "123 ms");
        assert_eq!(fmt_ns(1_500_000_000), "1.50 s");
    }
}
