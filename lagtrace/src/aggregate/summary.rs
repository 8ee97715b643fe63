//! The end-of-trace summary of every loop thread: iterations, percentiles of
//! iteration time, blocking spans and the share of wall time they took.
use std::collections::BTreeMap;

use lagtrace_common::ThreadState;
use serde::{Deserialize, Serialize};

use super::hist::quantile;
use crate::spans::Span;

/// One loop thread's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadSummary {
    pub pid: u32,
    pub tid: u32,
    pub thread: String,
    pub iterations: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub spans: u64,
    pub span_total_ns: u64,
    pub span_longest_ns: u64,
    /// Blocking spans' share of the traced wall time, 0..=1.
    pub lag_share: f64,
    /// The thread exited inside an iteration that crossed the threshold:
    /// how long that last iteration ran. Not counted in `spans` (see
    /// `Span::exited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_iteration_ns: Option<u64>,
}

/// Collects kernel snapshots of threads and finished spans.
#[derive(Default)]
pub struct SummaryBuilder {
    threads: BTreeMap<u32, (u32, ThreadState)>,
    spans: BTreeMap<u32, (u64, u64, u64)>,
    names: BTreeMap<u32, String>,
    /// The iteration each thread exited in, by tid (not lag).
    exits: BTreeMap<u32, u64>,
    /// (pid, cause) → (spans, total lag, runqueue time).
    causes: BTreeMap<(u32, String), (u64, u64, u64)>,
    /// Spans whose cause was new past [`MAX_CAUSES`]: counted under
    /// [`OTHER_CAUSES`] (a day-long attach must not grow without end).
    pub causes_overflow: u64,
}

/// Most distinct (process, cause) rows kept.
pub const MAX_CAUSES: usize = 2000;
pub const OTHER_CAUSES: &str = "[other causes]";

/// One line of the top causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseRow {
    pub cause: String,
    pub spans: u64,
    pub total_ns: u64,
    /// Of `total_ns`, the time the spans waited for a CPU.
    pub runqueue_ns: u64,
}

impl SummaryBuilder {
    /// Keep the latest kernel state of a thread (the last one survives the thread).
    pub fn snapshot(&mut self, tid: u32, state: &ThreadState) {
        self.threads.insert(tid, (state.tgid, *state));
    }

    pub fn span(&mut self, span: &Span) {
        if !span.is_lag() {
            self.exits.insert(span.tid, span.duration_ns);
            self.names.insert(span.tid, span.thread.clone());
            return;
        }
        let hot = crate::output::live::hot_frames(span).map(|(h, _)| h);
        let mut key = crate::spans::cause::cause_key(span, hot.as_deref());
        if self.causes.len() >= MAX_CAUSES && !self.causes.contains_key(&(span.pid, key.clone())) {
            self.causes_overflow += 1;
            key = OTHER_CAUSES.into();
        }
        let c = self.causes.entry((span.pid, key)).or_default();
        c.0 += 1;
        c.1 += span.duration_ns;
        c.2 += span.runqueue_ns.min(span.duration_ns);
        let e = self.spans.entry(span.tid).or_default();
        e.0 += 1;
        e.1 += span.duration_ns;
        e.2 = e.2.max(span.duration_ns);
        self.names.insert(span.tid, span.thread.clone());
    }

    /// A span that was not symbolized (a flood): its time counts, its cause
    /// is not known.
    pub fn counted_only(&mut self, tid: u32, duration_ns: u64) {
        let e = self.spans.entry(tid).or_default();
        e.0 += 1;
        e.1 += duration_ns;
        e.2 = e.2.max(duration_ns);
    }

    pub fn name(&mut self, tid: u32, name: String) {
        self.names.entry(tid).or_insert(name);
    }

    /// The causes of `pid`'s spans, by total lag, at most `n`.
    pub fn top_causes(&self, pid: u32, n: usize) -> Vec<CauseRow> {
        let mut rows: Vec<CauseRow> = self
            .causes
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|((_, cause), (spans, total, rq))| CauseRow {
                cause: cause.clone(),
                spans: *spans,
                total_ns: *total,
                runqueue_ns: *rq,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total_ns
                .cmp(&a.total_ns)
                .then_with(|| a.cause.cmp(&b.cause))
        });
        rows.truncate(n);
        rows
    }

    pub fn has_activity(&self, pid: u32) -> bool {
        self.threads
            .values()
            .any(|(tgid, s)| *tgid == pid && (s.iterations > 0 || s.iteration > 0))
    }

    /// The figures of recorded threads (`recorded`, from a file's summary)
    /// with their span figures taken from the spans given to
    /// [`SummaryBuilder::span`] instead: the iteration figures cover the
    /// whole trace, the span figures the spans kept (after filters).
    pub fn rebuild(&self, recorded: &[ThreadSummary], wall_ns: u64) -> Vec<ThreadSummary> {
        let mut out: Vec<ThreadSummary> = recorded
            .iter()
            .map(|r| {
                let (spans, total, longest) = self.spans.get(&r.tid).copied().unwrap_or_default();
                ThreadSummary {
                    spans,
                    span_total_ns: total,
                    span_longest_ns: longest,
                    lag_share: share(total, wall_ns),
                    exit_iteration_ns: self.exits.get(&r.tid).copied(),
                    ..r.clone()
                }
            })
            .collect();
        sort_rows(&mut out);
        out
    }

    /// Threads of `pid` that ran at least one iteration, busiest first.
    pub fn build(&self, pid: u32, wall_ns: u64) -> Vec<ThreadSummary> {
        let mut out: Vec<ThreadSummary> = self
            .threads
            .iter()
            .filter(|(_, (tgid, s))| *tgid == pid && s.iterations > 0)
            .map(|(&tid, (_, s))| {
                let (spans, total, longest) = self.spans.get(&tid).copied().unwrap_or_default();
                let q = |p| quantile(&s.hist, p, s.max_ns).unwrap_or(0);
                ThreadSummary {
                    pid,
                    tid,
                    thread: self
                        .names
                        .get(&tid)
                        .cloned()
                        .or_else(|| {
                            crate::target::read_comm(pid, Some(tid)).filter(|n| !n.is_empty())
                        })
                        .unwrap_or_else(|| {
                            crate::target::unnamed(tid, crate::target::ThreadRole::Loop)
                        }),
                    iterations: s.iterations,
                    p50_ns: q(0.5),
                    p90_ns: q(0.9),
                    p99_ns: q(0.99),
                    max_ns: s.max_ns,
                    spans,
                    span_total_ns: total,
                    span_longest_ns: longest,
                    lag_share: share(total, wall_ns),
                    exit_iteration_ns: self.exits.get(&tid).copied(),
                }
            })
            .collect();
        sort_rows(&mut out);
        out
    }
}

fn share(total: u64, wall_ns: u64) -> f64 {
    if wall_ns > 0 {
        (total as f64 / wall_ns as f64).min(1.0)
    } else {
        0.0
    }
}

/// Busiest first.
fn sort_rows(rows: &mut [ThreadSummary]) {
    rows.sort_by(|a, b| {
        b.span_total_ns
            .cmp(&a.span_total_ns)
            .then(b.iterations.cmp(&a.iterations))
    });
}
