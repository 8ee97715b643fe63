//! `SIGUSR1`: a flamegraph and a summary of the last `--window` (10 min by
//! default), written next to the outputs (or into `--snapshot-dir`) with a
//! timestamp in their names, while the trace goes on.
//!
//! The window keeps the spans themselves, newest last, bounded both by age
//! and by [`MAX_KEPT`]: past that the oldest leave early and are counted as
//! `spans_not_kept` in the summary, so a storm cannot grow memory. Spans
//! are the same records every output sees, so the snapshot's flamegraph is
//! made by the same recorder as `--flamegraph`.
use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
};

use serde_json::json;

use crate::{
    error::{Error, Result},
    output::{
        Recorder, TraceInfo,
        file::AtomicFile,
        flamegraph::FlameGraphFile,
        metrics::{blame_label, cause_label},
    },
    spans::Span,
};

/// Most spans kept for a snapshot. A span of a Python storm holds about
/// 25 KB of frames (measured: 4,000 spans took RSS from 72 to 181 MB).
pub const MAX_KEPT: usize = 1000;
/// Blame functions and longest spans listed in a snapshot summary.
const TOP: usize = 10;

#[derive(Debug)]
pub struct Window {
    window_ns: u64,
    spans: VecDeque<Span>,
    /// Spans of the window pushed out early by [`MAX_KEPT`].
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

    fn trim(&mut self, now: u64) {
        let from = now.saturating_sub(self.window_ns);
        while self
            .spans
            .front()
            .is_some_and(|s| s.start_unix_ns + s.duration_ns < from)
        {
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
            // Remember only when it ended, to age it out of the count.
            self.not_kept.push_back(old.start_unix_ns + old.duration_ns);
            if self.not_kept.len() > MAX_KEPT * 16 {
                self.not_kept.pop_front();
            }
        }
        self.spans.push_back(span.clone());
    }

    /// The summary of the window, as JSON.
    fn summary(&self, now: u64) -> serde_json::Value {
        let mut by_cause: HashMap<String, (u64, u64)> = HashMap::new();
        let mut by_blame: HashMap<String, (u64, u64)> = HashMap::new();
        for s in &self.spans {
            let c = by_cause.entry(cause_label(s)).or_default();
            c.0 += 1;
            c.1 += s.duration_ns;
            let b = by_blame.entry(blame_label(s)).or_default();
            b.0 += 1;
            b.1 += s.duration_ns;
        }
        let mut blame: Vec<(String, (u64, u64))> = by_blame.into_iter().collect();
        blame.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
        let mut longest: Vec<&Span> = self.spans.iter().collect();
        longest.sort_by_key(|s| std::cmp::Reverse(s.duration_ns));
        json!({
            "window_s": self.window_ns as f64 / 1e9,
            "from_unix_ns": now.saturating_sub(self.window_ns),
            "to_unix_ns": now,
            "spans": self.spans.len(),
            "spans_not_kept": self.not_kept.len(),
            "blocked_ns": self.spans.iter().map(|s| s.duration_ns).sum::<u64>(),
            "by_cause": by_cause.iter().map(|(k, (n, ns))| (k.clone(), json!({"spans": n, "blocked_ns": ns}))).collect::<serde_json::Map<_, _>>(),
            "top_blame": blame.iter().take(TOP).map(|(k, (n, ns))| json!({"blame": k, "spans": n, "blocked_ns": ns})).collect::<Vec<_>>(),
            "longest": longest.iter().take(TOP).map(|s| json!({
                "pid": s.pid, "tid": s.tid, "thread": s.thread,
                "start_unix_ns": s.start_unix_ns, "duration_ns": s.duration_ns,
                "cause": s.cause, "blame": blame_label(s),
            })).collect::<Vec<_>>(),
        })
    }

    /// Write `lagtrace-snapshot-STAMP.svg` and `.summary.json` into `dir`.
    pub fn write(&mut self, dir: &Path, info: &TraceInfo) -> Result<Vec<PathBuf>> {
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
        let svg_path = dir.join(format!("lagtrace-snapshot-{stamp}.svg"));
        let mut svg = FlameGraphFile::new(svg_path, info.period_ns, true)?;
        for s in &self.spans {
            svg.record(s)?;
        }
        let mut written: Vec<PathBuf> = svg.finish(info)?.into_iter().collect();
        let json_path = dir.join(format!("lagtrace-snapshot-{stamp}.summary.json"));
        let mut f = AtomicFile::create(&json_path)?;
        let text = serde_json::to_string_pretty(&self.summary(now))
            .map_err(|e| Error::io("encoding a snapshot summary", e.into()))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        written.push(f.commit()?);
        Ok(written)
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
        let s = w.summary(now_unix_ns());
        assert_eq!(s["spans_not_kept"], 4);
        assert_eq!(s["spans"], MAX_KEPT);
        assert_eq!(s["top_blame"][0]["blame"], "new");
    }
}
