//! `--metrics`: what Prometheus scrapes. The session feeds finished spans,
//! the kernel's per-thread histograms and lagtrace's own health into one
//! shared state; `metrics_http.rs` encodes it on each scrape with
//! prometheus-client (OpenMetrics text).
//!
//! Bounded on purpose, for a day-long attach: blame labels are a live top
//! [`MAX_BLAME`] by blocked time, the rest are "other" (how series of
//! promoted and demoted blames behave: `metrics_blame.rs`); series of a
//! process that exited go [`FORGET_AFTER`] later (after a few scrapes saw
//! their last value).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lagtrace_common::{HIST_BUCKETS, ThreadState, hist_bucket_low};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::spans::Span;

pub use super::metrics_blame::{MAX_BLAME, OTHER};
/// How long the series of an exited process stay.
pub const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Histogram bounds: every power of two from 2^13 ns (8 µs) to 2^36 ns
/// (69 s), each the edge of a kernel bucket group, so counts are exact.
const LE_POW: std::ops::RangeInclusive<u32> = 13..=36;

/// The span's blame function and file (`spans::culprit`, no line, so the
/// label set stays small); a span without one falls back to its hottest
/// frame.
pub fn blame_label(span: &Span) -> String {
    if let Some(b) = &span.blame {
        return b.group();
    }
    crate::output::live::hot_frames(span)
        .map(|(h, _)| h.split(" ← ").next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The span's cause kind, without its detail: `cpu`, `blocked`,
/// `runqueue`, `mixed`, … (a bounded set).
pub fn cause_label(span: &Span) -> String {
    span.cause
        .as_deref()
        .and_then(|c| c.split([' ', '(', ':', ',']).next())
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Who a series is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Who {
    pid: u32,
    comm: String,
    thread: String,
}

/// One loop thread's histogram, from the kernel.
#[derive(Debug, Clone)]
struct ThreadHist {
    who: Who,
    /// Counts per bound of [`LE_POW`], not cumulative, then +Inf.
    buckets: Vec<u64>,
    count: u64,
    sum_s: f64,
}

/// lagtrace's own health, as of the last update.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    pub lost_events: u64,
    pub dropped_samples: u64,
    pub stack_errors: u64,
    pub sched_missed: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub targets: u64,
}

#[derive(Debug, Default)]
struct State {
    /// (who, cause, blame) → (spans, blocked seconds).
    spans: BTreeMap<(Who, String, String), (u64, f64)>,
    blames: super::metrics_blame::BlameLabels,
    /// Loop threads by tid.
    threads: HashMap<u32, ThreadHist>,
    services: HashMap<u32, String>,
    gone: HashMap<u32, Instant>,
    health: Health,
}

/// The shared metrics state: the session writes, scrapes read.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<State>>);

/// Counts of a kernel histogram folded onto [`LE_POW`] bounds (+Inf last).
fn fold_hist(hist: &[u64; HIST_BUCKETS]) -> Vec<u64> {
    let bounds: Vec<u64> = LE_POW.map(|p| 1u64 << p).collect();
    let mut out = vec![0u64; bounds.len() + 1];
    for (b, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        // The bucket holds [low(b), low(b + 1)): it is under the first
        // bound at or above its upper edge.
        let upper = if b + 1 < HIST_BUCKETS {
            hist_bucket_low(b + 1)
        } else {
            u64::MAX
        };
        let i = bounds.partition_point(|&le| le < upper);
        out[i] += n;
    }
    out
}

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers: keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `service` label of a process selected by `--name`/`--cgroup`.
    pub fn set_service(&self, pid: u32, service: &str) {
        let mut s = self.state();
        if s.services.get(&pid).is_none_or(|v| v != service) {
            s.services.insert(pid, service.to_string());
        }
    }

    pub fn span(&self, span: &Span) {
        let mut s = self.state();
        let secs = span.duration_ns as f64 / 1e9;
        let change = s.blames.record(&blame_label(span), secs, Instant::now());
        if !change.forgotten.is_empty() {
            s.spans.retain(|(_, _, b), _| !change.forgotten.contains(b));
        }
        let blame = change.label;
        let who = Who {
            pid: span.pid,
            comm: span.comm.clone(),
            thread: span.thread.clone(),
        };
        let e = s.spans.entry((who, cause_label(span), blame)).or_default();
        e.0 += 1;
        e.1 += secs;
    }

    /// The kernel's loop threads now: `(tid, comm, thread name, state)`.
    /// A thread the kernel forgot (it exited) loses its series, so thread
    /// churn in a long-lived process does not grow them.
    pub fn threads(&self, threads: &[(u32, String, String, &ThreadState)]) {
        let mut s = self.state();
        s.threads
            .retain(|tid, _| threads.iter().any(|(t, ..)| t == tid));
        for (tid, comm, name, t) in threads {
            let buckets = fold_hist(&t.hist);
            s.threads.insert(
                *tid,
                ThreadHist {
                    who: Who {
                        pid: t.tgid,
                        comm: comm.clone(),
                        thread: name.clone(),
                    },
                    count: buckets.iter().sum(),
                    buckets,
                    sum_s: t.sum_ns as f64 / 1e9,
                },
            );
        }
    }

    /// A process exited: its series go after [`FORGET_AFTER`].
    pub fn exited(&self, pid: u32) {
        self.state().gone.entry(pid).or_insert_with(Instant::now);
    }

    pub fn health(&self, h: Health) {
        let mut s = self.state();
        s.health = h;
        let now = Instant::now();
        let old: Vec<u32> = s
            .gone
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > FORGET_AFTER)
            .map(|(p, _)| *p)
            .collect();
        for pid in old {
            s.gone.remove(&pid);
            s.services.remove(&pid);
            s.threads.retain(|_, t| t.who.pid != pid);
            s.spans.retain(|(w, _, _), _| w.pid != pid);
        }
    }

    /// The registry to encode on a scrape.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(self.clone()));
        r
    }

    /// The OpenMetrics text of everything now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

/// A label value as the text format needs it: prometheus-client writes
/// values as they are, and target strings (comm, thread names, a regex)
/// may hold backslashes, quotes or newlines.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(who: &Who, service: Option<&String>) -> Vec<(&'static str, String)> {
    let mut l = vec![
        ("pid", who.pid.to_string()),
        ("comm", esc(&who.comm)),
        ("thread", esc(&who.thread)),
    ];
    if let Some(s) = service {
        l.push(("service", esc(s)));
    }
    l
}

/// A value of a known type, for `encode_family`.
struct Value(MetricType, f64);

impl EncodeMetric for Value {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(&self.1, None),
            _ => e.encode_gauge(&self.1),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.state();
        let bounds: Vec<f64> = LE_POW
            .map(|p| (1u64 << p) as f64 / 1e9)
            .chain([f64::MAX])
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "lagtrace_loop_iteration_duration_seconds",
                "Event-loop iteration durations per loop thread, from the in-kernel histogram (bounds at powers of two ns)",
                None,
                MetricType::Histogram,
            )?;
            let mut threads: Vec<&ThreadHist> = s.threads.values().collect();
            threads.sort_by(|a, b| a.who.cmp(&b.who));
            for t in threads {
                let l = labels(&t.who, s.services.get(&t.who.pid));
                let b: Vec<(f64, u64)> = bounds.iter().copied().zip(t.buckets.clone()).collect();
                m.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(t.sum_s, t.count, &b, None)?;
            }
        }
        for (name, help, pick) in [
            (
                "lagtrace_blocking_spans",
                "Blocking spans (iterations over the threshold) by cause and blame function",
                0usize,
            ),
            (
                "lagtrace_blocked_seconds",
                "Time in blocking spans by cause and blame function",
                1,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            let now = Instant::now();
            for ((who, cause, blame), (n, secs)) in &s.spans {
                if s.blames.hidden(blame, now) {
                    continue;
                }
                let mut l = labels(who, s.services.get(&who.pid));
                l.push(("cause", esc(cause)));
                l.push(("blame", esc(blame)));
                let v = if pick == 0 { *n as f64 } else { *secs };
                Value(MetricType::Counter, v).encode(m.encode_family(&l)?)?;
            }
        }
        let h = s.health;
        for (name, help, ty, v) in [
            (
                "lagtrace_lost_events",
                "Kernel events lost to a full ring buffer",
                MetricType::Counter,
                h.lost_events as f64,
            ),
            (
                "lagtrace_dropped_samples",
                "Samples dropped before their span crossed the threshold",
                MetricType::Counter,
                h.dropped_samples as f64,
            ),
            (
                "lagtrace_stack_errors",
                "Kernel stack captures that failed",
                MetricType::Counter,
                h.stack_errors as f64,
            ),
            (
                "lagtrace_sched_events_missed",
                "Scheduler events of loop threads that reached no program, healed at the thread's next event",
                MetricType::Counter,
                h.sched_missed as f64,
            ),
            (
                "lagtrace_cpu_seconds",
                "CPU time lagtrace itself used (user + system)",
                MetricType::Counter,
                h.cpu_seconds,
            ),
            (
                "lagtrace_resident_memory_bytes",
                "lagtrace's resident set size",
                MetricType::Gauge,
                h.rss_bytes as f64,
            ),
            (
                "lagtrace_targets_attached",
                "Processes traced now",
                MetricType::Gauge,
                h.targets as f64,
            ),
        ] {
            let m = enc.encode_descriptor(name, help, None, ty)?;
            Value(ty, v).encode(m)?;
        }
        Ok(())
    }
}

/// lagtrace's own CPU seconds and RSS bytes, from /proc/self.
pub fn self_usage() -> (f64, u64) {
    // SAFETY: sysconf only reads a constant of the system.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, rss 24 (1-based): 11, 12, 21 here.
    let cpu = (num(11) + num(12)) as f64 / tick;
    (cpu, num(21) * page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lagtrace_common::hist_bucket;

    #[test]
    fn kernel_buckets_fold_exactly_onto_powers_of_two() {
        let mut hist = [0u64; HIST_BUCKETS];
        for ns in [5_000u64, 8_192, 9_000, 1_000_000, 80_000_000, 300_000_000] {
            hist[hist_bucket(ns)] += 1;
        }
        let b = fold_hist(&hist);
        assert_eq!(b.iter().sum::<u64>(), 6);
        // 5 µs is under 8.192 µs; 8192 ns itself is in [8192, 10240).
        assert_eq!(b[0], 1);
        let le = |p: u32| (p - LE_POW.start()) as usize;
        // 80 ms and 300 ms are over 2^26 ns (67 ms).
        let over: u64 = b[le(26) + 1..].iter().sum();
        assert_eq!(over, 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc(r#"a\.b"c"#), r#"a\\.b\"c"#);
        assert_eq!(esc("x\ny"), "x\\ny");
    }

    #[test]
    fn blame_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_BLAME + 5) {
            let span = Span {
                pid: 1,
                ns_pid: None,
                tid: 1,
                thread: "main".into(),
                comm: "py".into(),
                start_unix_ns: 0,
                duration_ns: 100_000_000,
                on_cpu_ns: 0,
                off_cpu_ns: 0,
                runqueue_ns: 0,
                iteration: i as u64,
                samples: 1,
                samples_dropped: 0,
                unfinished: false,
                exited: false,
                cause: Some("cpu".into()),
                task: None,
                task_name: None,
                stacks: vec![crate::spans::StackCount {
                    frames: vec![crate::symbolize::frame::Frame::parse(&format!("f{i}"))],
                    samples: 1,
                    kind: crate::spans::StackKind::OnCpu,
                    weight_ns: 0,
                    offset_ns: 0,
                }],
                start_mono_ns: 0,
                blame: None,
                extra: Default::default(),
            };
            m.span(&span);
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("lagtrace_blocking_spans_total{"))
            .count();
        assert_eq!(series, MAX_BLAME + 1, "{text}");
        assert!(text.contains("blame=\"other\"} 5"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
