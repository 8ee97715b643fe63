//! The summary printed on exit: one block per traced process, one row per
//! loop thread, and the top causes. A recorder: the live run and
//! `lagtrace report` print it from the same summary record.
use std::path::PathBuf;

use super::{Recorder, TraceInfo, console::Console, fmt_ns, sanitize};
use crate::{
    aggregate::summary::{CauseRow, ThreadSummary},
    error::Result,
    spans::Span,
};

/// Prints the summary of every active process when the trace ends.
#[derive(Default)]
pub struct TerminalSummary {
    console: Console,
}

impl Recorder for TerminalSummary {
    fn record(&mut self, _span: &Span) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        let s = &info.summary;
        for p in s.processes.iter().filter(|p| p.active) {
            self.console
                .print(&render(p.pid, &p.describe, s.wall_ns, &p.threads, p.exited));
            self.console.print(&render_causes(&p.top_causes));
        }
        Ok(None)
    }
}

pub fn render(pid: u32, comm: &str, wall_ns: u64, rows: &[ThreadSummary], exited: bool) -> String {
    let mut out = format!(
        "\n== lag summary: pid {pid} ({}), traced {}{} ==\n",
        sanitize::terminal(comm),
        fmt_ns(wall_ns),
        if exited { ", target exited" } else { "" }
    );
    out.push_str(&format!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>9} {:>6}\n",
        "thread[tid]",
        "iterations",
        "p50",
        "p90",
        "p99",
        "max",
        "spans",
        "span total",
        "longest",
        "lag%"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>9} {:>5.1}%\n",
            crate::target::thread_label(&sanitize::terminal(&r.thread), None, r.tid),
            r.iterations,
            fmt_ns(r.p50_ns),
            fmt_ns(r.p90_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.max_ns),
            r.spans,
            if r.spans > 0 {
                fmt_ns(r.span_total_ns)
            } else {
                "-".into()
            },
            if r.spans > 0 {
                fmt_ns(r.span_longest_ns)
            } else {
                "-".into()
            },
            r.lag_share * 100.0
        ));
    }
    for r in rows {
        if let Some(ns) = r.exit_iteration_ns {
            out.push_str(&format!(
                "{} exited {} into an iteration (its last; not counted as lag)\n",
                crate::target::thread_label(&sanitize::terminal(&r.thread), None, r.tid),
                fmt_ns(ns)
            ));
        }
    }
    out
}

/// The top causes of lag, by total time.
pub fn render_causes(rows: &[CauseRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    // Runqueue time is a share of each row, not a cause of its own.
    let mut out = String::from("top causes by total lag (rq: share waiting for a CPU):\n");
    for r in rows {
        out.push_str(&format!(
            "  {:>9} in {:>3} span{}  rq {:>3.0}%  {}\n",
            fmt_ns(r.total_ns),
            r.spans,
            if r.spans == 1 { " " } else { "s" },
            r.runqueue_ns as f64 * 100.0 / r.total_ns.max(1) as f64,
            sanitize::terminal(&r.cause)
        ));
    }
    out
}
