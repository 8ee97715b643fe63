//! The end-of-trace summary of every loop thread: iterations, percentiles of
//! iteration time, blocking spans and the share of wall time they took.
//!
//! Bounded under thread churn: past [`MAX_EXITED_ROWS`] exited threads of
//! a process, the oldest are folded into one `[N exited threads]` row of
//! it ([`SummaryBuilder::retire`]),
//! whose figures are exact sums (iterations, spans, times) and an exact
//! merge of the kernel's histograms, so a day of short-lived threads keeps
//! one row per process instead of one per thread. Likewise, processes
//! dropped from the target list after they exited are folded into one
//! process of pid 0 ([`SummaryBuilder::fold_process`], [`OTHER_PROCESSES`]).
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

/// A thread's span figures: spans, total and longest duration.
type SpanFigures = (u64, u64, u64);

/// The exited threads of one process, folded together.
#[derive(Default)]
struct Retired {
    /// Threads folded in (those the kernel reported).
    threads: u64,
    /// Iterations, maximum and histogram, summed over them.
    state: Option<ThreadState>,
    spans: SpanFigures,
    /// The longest of their exit iterations.
    exit_iteration_ns: Option<u64>,
}

impl Retired {
    fn add_state(&mut self, s: &ThreadState) {
        match &mut self.state {
            Some(acc) => {
                acc.iterations += s.iterations;
                acc.sum_ns += s.sum_ns;
                acc.max_ns = acc.max_ns.max(s.max_ns);
                for (a, b) in acc.hist.iter_mut().zip(s.hist) {
                    *a += b;
                }
            }
            None => self.state = Some(*s),
        }
    }

    fn add_spans(&mut self, (n, total, longest): SpanFigures) {
        self.spans.0 += n;
        self.spans.1 += total;
        self.spans.2 = self.spans.2.max(longest);
    }

    fn add_exit(&mut self, ns: Option<u64>) {
        if let Some(ns) = ns {
            self.exit_iteration_ns = Some(self.exit_iteration_ns.unwrap_or(0).max(ns));
        }
    }

    fn absorb(&mut self, other: Retired) {
        self.threads += other.threads;
        if let Some(s) = &other.state {
            self.add_state(s);
        }
        self.add_spans(other.spans);
        self.add_exit(other.exit_iteration_ns);
    }
}

/// Collects kernel snapshots of threads and finished spans.
#[derive(Default)]
pub struct SummaryBuilder {
    threads: BTreeMap<u32, (u32, ThreadState)>,
    /// By tid: the process, and the figures.
    spans: BTreeMap<u32, (u32, SpanFigures)>,
    names: BTreeMap<u32, String>,
    /// The iteration each thread exited in, by tid (not lag).
    exits: BTreeMap<u32, (u32, u64)>,
    /// Exited threads by process (pid 0: of the folded processes).
    retired: BTreeMap<u32, Retired>,
    /// Exited threads that still have a row, oldest first, by process.
    exited_rows: BTreeMap<u32, std::collections::VecDeque<u32>>,
    /// Processes folded into pid 0.
    pub folded_processes: u64,
    /// (pid, cause) → (spans, total lag, runqueue time).
    causes: BTreeMap<(u32, String), (u64, u64, u64)>,
    /// Spans whose cause was new past [`MAX_CAUSES`]: counted under
    /// [`OTHER_CAUSES`] (a day-long attach must not grow without end).
    pub causes_overflow: u64,
}

/// Most distinct (process, cause) rows kept.
pub const MAX_CAUSES: usize = 2000;
pub const OTHER_CAUSES: &str = "[other causes]";
/// Exited threads of a process that keep a row of their own.
pub const MAX_EXITED_ROWS: usize = 32;
/// The name of the process row (pid 0) that holds folded processes.
pub const OTHER_PROCESSES: &str = "[other exited processes]";

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
            self.exits.insert(span.tid, (span.pid, span.duration_ns));
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
        self.count_span(span.pid, span.tid, span.duration_ns);
        self.names.insert(span.tid, span.thread.clone());
    }

    /// A span that was not symbolized (a flood): its time counts, its cause
    /// is not known.
    pub fn counted_only(&mut self, pid: u32, tid: u32, duration_ns: u64) {
        self.count_span(pid, tid, duration_ns);
    }

    fn count_span(&mut self, pid: u32, tid: u32, duration_ns: u64) {
        let (p, e) = self.spans.entry(tid).or_default();
        *p = pid;
        e.0 += 1;
        e.1 += duration_ns;
        e.2 = e.2.max(duration_ns);
    }

    /// The thread exited (the kernel forgot it): it keeps its row while
    /// its process has at most [`MAX_EXITED_ROWS`] exited threads; past
    /// that the oldest is folded into the process's exited-threads row.
    pub fn retire(&mut self, tid: u32) {
        let Some(pid) = self
            .threads
            .get(&tid)
            .map(|(p, _)| *p)
            .or(self.spans.get(&tid).map(|(p, _)| *p))
            .or(self.exits.get(&tid).map(|(p, _)| *p))
        else {
            return;
        };
        let kept = self.exited_rows.entry(pid).or_default();
        if kept.contains(&tid) {
            return;
        }
        kept.push_back(tid);
        if kept.len() > MAX_EXITED_ROWS
            && let Some(old) = kept.pop_front()
        {
            self.fold_thread(old);
        }
    }

    /// Fold a thread's row into its process's exited-threads row. A span
    /// of it that arrives later is folded by the next
    /// [`SummaryBuilder::sweep`].
    fn fold_thread(&mut self, tid: u32) {
        let state = self.threads.remove(&tid);
        let spans = self.spans.remove(&tid);
        let exit = self.exits.remove(&tid);
        self.names.remove(&tid);
        let Some(pid) = state
            .map(|(p, _)| p)
            .or(spans.map(|(p, _)| p))
            .or(exit.map(|(p, _)| p))
        else {
            return;
        };
        let r = self.retired.entry(pid).or_default();
        if let Some((_, s)) = state {
            r.threads += 1;
            r.add_state(&s);
        }
        if let Some((_, f)) = spans {
            r.add_spans(f);
        }
        r.add_exit(exit.map(|(_, ns)| ns));
    }

    /// A process left the target list after it exited: fold all its
    /// figures (threads, spans, causes) into pid 0, so the summary keeps
    /// one row for all such processes, with exact totals.
    pub fn fold_process(&mut self, pid: u32) {
        if pid != 0 {
            self.fold_figures(pid);
            self.folded_processes += 1;
        }
    }

    /// Move `pid`'s figures to pid 0.
    fn fold_figures(&mut self, pid: u32) {
        let tids: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, (p, _))| *p == pid)
            .map(|(t, _)| *t)
            .chain(
                self.spans
                    .iter()
                    .filter(|(_, (p, _))| *p == pid)
                    .map(|(t, _)| *t),
            )
            .chain(
                self.exits
                    .iter()
                    .filter(|(_, (p, _))| *p == pid)
                    .map(|(t, _)| *t),
            )
            .collect();
        for tid in tids {
            self.fold_thread(tid);
        }
        self.exited_rows.remove(&pid);
        if let Some(r) = self.retired.remove(&pid) {
            self.retired.entry(0).or_default().absorb(r);
        }
        let keys: Vec<(u32, String)> = self
            .causes
            .keys()
            .filter(|(p, _)| *p == pid)
            .cloned()
            .collect();
        for key in keys {
            if let Some((n, total, rq)) = self.causes.remove(&key) {
                let c = self.causes.entry((0, key.1)).or_default();
                c.0 += n;
                c.1 += total;
                c.2 += rq;
            }
        }
    }

    /// Fold the figures of every process here that `keep` rejects (late
    /// spans of folded processes; a report's spans of them).
    pub fn fold_unlisted(&mut self, keep: impl Fn(u32) -> bool) {
        let mut pids: Vec<u32> = self
            .threads
            .values()
            .map(|(p, _)| *p)
            .chain(self.spans.values().map(|(p, _)| *p))
            .chain(self.exits.values().map(|(p, _)| *p))
            .chain(self.retired.keys().copied())
            .chain(self.causes.keys().map(|(p, _)| *p))
            .filter(|&p| p != 0 && !keep(p))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            self.fold_figures(pid);
        }
    }

    /// Whether folded processes left figures (the pid-0 process row).
    pub fn has_folded(&self) -> bool {
        self.retired.contains_key(&0) || self.causes.keys().any(|(p, _)| *p == 0)
    }

    /// Fold the figures of threads that are neither in the kernel's table
    /// (`live`) nor known by a snapshot: spans that arrived after their
    /// thread was folded.
    pub fn sweep(&mut self, live: &std::collections::HashSet<u32>) {
        let stale: Vec<u32> = self
            .spans
            .keys()
            .chain(self.exits.keys())
            .filter(|t| !live.contains(t) && !self.threads.contains_key(t))
            .copied()
            .collect();
        for tid in stale {
            self.fold_thread(tid);
        }
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
            || self
                .retired
                .get(&pid)
                .and_then(|r| r.state.as_ref())
                .is_some_and(|s| s.iterations > 0 || s.iteration > 0)
    }

    /// The figures of recorded threads (`recorded`, from a file's summary)
    /// with their span figures taken from the spans given to
    /// [`SummaryBuilder::span`] instead: the iteration figures cover the
    /// whole trace, the span figures the spans kept (after filters).
    pub fn rebuild(&self, recorded: &[ThreadSummary], wall_ns: u64) -> Vec<ThreadSummary> {
        let mut out: Vec<ThreadSummary> = recorded
            .iter()
            .map(|r| {
                let (spans, total, longest) =
                    self.spans.get(&r.tid).map(|s| s.1).unwrap_or_default();
                ThreadSummary {
                    spans,
                    span_total_ns: total,
                    span_longest_ns: longest,
                    lag_share: share(total, wall_ns),
                    exit_iteration_ns: self.exits.get(&r.tid).map(|e| e.1),
                    ..r.clone()
                }
            })
            .collect();
        // Spans of threads the record folded into its exited-threads row
        // (tid 0) count there.
        if let Some(folded) = out.iter().position(|r| r.tid == 0) {
            let pid = out[folded].pid;
            let (mut n, mut total, mut longest) = (0, 0, 0);
            for (tid, (p, f)) in &self.spans {
                if *p == pid && !recorded.iter().any(|r| r.tid == *tid) {
                    n += f.0;
                    total += f.1;
                    longest = f.2.max(longest);
                }
            }
            let mut exit = self
                .exits
                .iter()
                .filter(|(tid, (p, _))| *p == pid && !recorded.iter().any(|r| r.tid == **tid))
                .map(|(_, (_, ns))| *ns)
                .max();
            if let Some(r) = self.retired.get(&pid) {
                n += r.spans.0;
                total += r.spans.1;
                longest = longest.max(r.spans.2);
                exit = exit.max(r.exit_iteration_ns);
            }
            let r = &mut out[folded];
            r.spans = n;
            r.span_total_ns = total;
            r.span_longest_ns = longest;
            r.lag_share = share(total, wall_ns);
            r.exit_iteration_ns = exit;
        }
        sort_rows(&mut out);
        // As `build` orders them: the exited-threads row last.
        out.sort_by_key(|r| r.tid == 0);
        out
    }

    /// Threads of `pid` that ran at least one iteration, busiest first,
    /// then one row for its exited threads.
    pub fn build(&self, pid: u32, wall_ns: u64) -> Vec<ThreadSummary> {
        let mut out: Vec<ThreadSummary> = self
            .threads
            .iter()
            .filter(|(_, (tgid, s))| *tgid == pid && s.iterations > 0)
            .map(|(&tid, (_, s))| {
                let spans = self.spans.get(&tid).map(|s| s.1).unwrap_or_default();
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
                    exit_iteration_ns: self.exits.get(&tid).map(|e| e.1),
                    ..row(Some(s), spans, wall_ns)
                }
            })
            .collect();
        sort_rows(&mut out);
        if let Some(r) = self.retired.get(&pid)
            && (r.threads > 0 || r.spans.0 > 0)
        {
            out.push(ThreadSummary {
                pid,
                tid: 0,
                thread: format!("[{} exited threads]", r.threads),
                exit_iteration_ns: r.exit_iteration_ns,
                ..row(r.state.as_ref(), r.spans, wall_ns)
            });
        }
        out
    }
}

/// A row's figures from a kernel snapshot and span figures.
fn row(s: Option<&ThreadState>, spans: SpanFigures, wall_ns: u64) -> ThreadSummary {
    let q = |p| s.and_then(|s| quantile(&s.hist, p, s.max_ns)).unwrap_or(0);
    ThreadSummary {
        iterations: s.map_or(0, |s| s.iterations),
        p50_ns: q(0.5),
        p90_ns: q(0.9),
        p99_ns: q(0.99),
        max_ns: s.map_or(0, |s| s.max_ns),
        spans: spans.0,
        span_total_ns: spans.1,
        span_longest_ns: spans.2,
        lag_share: share(spans.1, wall_ns),
        ..ThreadSummary::default()
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
