//! `SIGUSR1`: a flamegraph and a summary of the last `--window` (10 min by
//! default), written next to the outputs (or into `--snapshot-dir`) with a
//! timestamp in their names, while the trace goes on.
//!
//! The window keeps the spans themselves, newest last, bounded both by age
//! and by [`MAX_KEPT`]: past that the oldest leave early and are counted as
//! `spans_not_kept` in the summary, so a storm cannot grow memory. A
//! snapshot is a small trace of its own: the window's spans go through the
//! same [`Outputs`] as `--flamegraph` and `--summary-json`, and its summary
//! is the live summary record with the span figures of the window
//! ([`SummaryRecord::with_spans`], as `lagtrace report --since --until`
//! computes them), so the two cannot drift apart.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use crate::{
    aggregate::summary::SummaryBuilder,
    error::Result,
    output::{
        OutputPaths, Outputs, TraceInfo,
        records::{SnapshotWindow, SummaryRecord},
    },
    spans::Span,
};

/// Most spans kept for a snapshot. A span of a Python storm holds about
/// 25 KB of frames (measured: 4,000 spans took RSS from 72 to 181 MB).
pub const MAX_KEPT: usize = 1000;

#[derive(Debug)]
pub struct Window {
    window_ns: u64,
    spans: VecDeque<Span>,
    /// Spans of the window pushed out early by [`MAX_KEPT`], by start.
    not_kept: VecDeque<u64>,
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Window {
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window_ns: window.as_nanos() as u64,
            spans: VecDeque::new(),
            not_kept: VecDeque::new(),
        }
    }

    /// Spans that started before the window leave (a report's `--since`
    /// selects by start too).
    fn trim(&mut self, now: u64) {
        let from = now.saturating_sub(self.window_ns);
        while self.spans.front().is_some_and(|s| s.start_unix_ns < from) {
            self.spans.pop_front();
        }
        while self.not_kept.front().is_some_and(|&t| t < from) {
            self.not_kept.pop_front();
        }
    }

    pub fn push(&mut self, span: &Span) {
        self.trim(now_unix_ns());
        if self.spans.len() >= MAX_KEPT
            && let Some(old) = self.spans.pop_front()
        {
            // Remember only when it started, to age it out of the count.
            self.not_kept.push_back(old.start_unix_ns);
            if self.not_kept.len() > MAX_KEPT * 16 {
                self.not_kept.pop_front();
            }
        }
        self.spans.push_back(span.clone());
    }

    /// The summary of the window: `live` (the summary of the trace so far)
    /// with the span figures of the window's spans.
    fn summary(&self, live: &SummaryRecord, now: u64, top_causes: usize) -> SummaryRecord {
        let mut builder = SummaryBuilder::default();
        for s in &self.spans {
            builder.span(s);
        }
        SummaryRecord {
            window: Some(SnapshotWindow {
                from_unix_ns: now.saturating_sub(self.window_ns),
                to_unix_ns: now,
                spans_not_kept: self.not_kept.len() as u64,
            }),
            ..live.with_spans(&mut builder, top_causes)
        }
    }

    /// Write `lagtrace-snapshot-STAMP.svg` and `.summary.json` into `dir`;
    /// `info.summary` is the live summary of the trace so far.
    pub fn write(
        &mut self,
        dir: &Path,
        mut info: TraceInfo,
        top_causes: usize,
    ) -> Result<Vec<PathBuf>> {
        let now = now_unix_ns();
        self.trim(now);
        let secs = now / 1_000_000_000;
        let tm = crate::clock::local_tm(secs);
        let stamp = format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}.{:03}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            (now / 1_000_000) % 1000
        );
        let paths = OutputPaths {
            flamegraph: Some(dir.join(format!("lagtrace-snapshot-{stamp}.svg"))),
            summary_json: Some(dir.join(format!("lagtrace-snapshot-{stamp}.summary.json"))),
            ..OutputPaths::default()
        };
        let mut outputs = Outputs::open_paths(&paths, None, info.period_ns, true)?;
        for s in &self.spans {
            outputs.record(s);
        }
        info.summary = self.summary(&info.summary, now, top_causes);
        Ok(outputs.finish(&info))
    }
}

/// Where snapshots go: `--snapshot-dir`, else the folder of the first
/// output file, else the current folder.
pub fn snapshot_dir(args: &crate::cli::Args) -> PathBuf {
    if let Some(d) = &args.snapshot_dir {
        return d.clone();
    }
    [&args.spans, &args.files.flamegraph, &args.files.folded]
        .into_iter()
        .flatten()
        .find_map(|p| p.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};
    use crate::spans::StackKind;

    #[test]
    fn the_window_is_bounded_by_age_and_count() {
        let mut w = Window::new(std::time::Duration::from_secs(60));
        let now = now_unix_ns();
        let mut old = span_with(vec![stack(&["main", "old"], 1, StackKind::OnCpu, 0)]);
        old.start_unix_ns = now - 120_000_000_000;
        w.push(&old);
        let mut new = span_with(vec![stack(&["main", "new"], 1, StackKind::OnCpu, 0)]);
        new.start_unix_ns = now;
        w.push(&new);
        assert_eq!(w.spans.len(), 1, "a span older than the window goes");
        for _ in 0..MAX_KEPT + 3 {
            w.push(&new);
        }
        assert_eq!(w.spans.len(), MAX_KEPT);
        let s = w.summary(&SummaryRecord::default(), now_unix_ns(), 5);
        let window = s.window.expect("a snapshot's window");
        assert_eq!(window.spans_not_kept, 4);
    }
}
