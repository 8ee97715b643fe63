//! Folding the stacks of many spans into FlameGraph's folded lines
//! (`root;frame;frame weight`). Shared by the folded file and the SVG, so
//! both always show the same thing.
//!
//! Its size must not grow with the number of spans over a long attach: it
//! keeps one entry per distinct stack, up to [`MAX_STACKS`] entries and
//! [`MAX_KEY_BYTES`] of text; stacks past that are added to one
//! `[other stacks]` entry under their thread, and counted.
use std::collections::BTreeMap;

use crate::{
    output::sanitize,
    spans::{Span, StackKind},
};

/// Most distinct stacks kept (a flame graph with more is unreadable anyway).
pub const MAX_STACKS: usize = 20_000;
/// Most bytes of stack text kept (deep Python stacks are kilobytes each).
pub const MAX_KEY_BYTES: usize = 32 << 20;
/// The frame that stands for every stack past the limits.
pub const OTHER: &str = "[other stacks]";

/// Folded stacks: the `;`-joined path and its weight in samples.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    pub stacks: BTreeMap<String, u64>,
    /// Bytes of the keys of `stacks`.
    bytes: usize,
    /// Stacks (one per stack of a span) past the limits, and their weight.
    pub overflow_stacks: u64,
    pub overflow_weight: u64,
}

impl Folded {
    /// Add a span's stacks. The root frame is the thread name (with the pid
    /// when several processes are traced); off-CPU stacks get a marker frame
    /// and are weighted by their time in units of the sampling period, so
    /// one scale serves both kinds.
    pub fn add(&mut self, span: &Span, period_ns: u64, with_pid: bool) {
        let root = if with_pid {
            format!("{} [{}]", span.thread, span.pid)
        } else {
            span.thread.clone()
        };
        for stack in &span.stacks {
            let weight = match stack.kind {
                StackKind::OnCpu => stack.samples,
                _ => (stack.weight_ns + period_ns / 2) / period_ns.max(1),
            };
            if weight == 0 {
                continue;
            }
            let mut path = sanitize::folded(&root).into_owned();
            if let Some(marker) = stack.kind.marker() {
                path.push(';');
                path.push_str(marker);
            }
            for f in &stack.frames {
                path.push(';');
                path.push_str(&sanitize::folded(&f.label()));
            }
            self.insert(path, &root, weight);
        }
    }

    /// Add `weight` to `path`, or to its thread's `[other stacks]` entry when
    /// a new path would pass the limits.
    fn insert(&mut self, path: String, root: &str, weight: u64) {
        if let Some(w) = self.stacks.get_mut(&path) {
            *w += weight;
            return;
        }
        if self.stacks.len() < MAX_STACKS && self.bytes + path.len() <= MAX_KEY_BYTES {
            self.bytes += path.len();
            self.stacks.insert(path, weight);
            return;
        }
        self.overflow_stacks += 1;
        self.overflow_weight += weight;
        let other = format!("{};{OTHER}", sanitize::folded(root));
        if let Some(w) = self.stacks.get_mut(&other) {
            *w += weight;
        } else if self.stacks.len() < MAX_STACKS + MAX_STACKS / 10 {
            // Room for one entry per thread past the limit, itself bounded.
            self.bytes += other.len();
            self.stacks.insert(other, weight);
        } else {
            *self.stacks.entry(OTHER.to_string()).or_default() += weight;
        }
    }

    /// Entries kept, `[other stacks]` ones included.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.stacks.iter().map(|(k, v)| format!("{k} {v}"))
    }

    pub fn total(&self) -> u64 {
        self.stacks.values().sum()
    }
}

/// Parse folded lines back (for tests and for tools that post-process).
pub fn parse_line(line: &str) -> Option<(Vec<&str>, u64)> {
    let (path, n) = line.rsplit_once(' ')?;
    Some((path.split(';').collect(), n.parse().ok()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spans::StackCount;

    pub fn span_with(stacks: Vec<StackCount>) -> Span {
        Span {
            pid: 7,
            ns_pid: None,
            tid: 8,
            thread: "MainThread".into(),
            comm: "python3".into(),
            start_unix_ns: 1,
            duration_ns: 100_000_000,
            on_cpu_ns: 0,
            off_cpu_ns: 0,
            runqueue_ns: 0,
            iteration: 1,
            samples: 0,
            samples_dropped: 0,
            unfinished: false,
            exited: false,
            cause: None,
            blame: None,
            task: None,
            task_name: None,
            stacks,
            start_mono_ns: 0,
            extra: Default::default(),
        }
    }

    pub fn stack(frames: &[&str], samples: u64, kind: StackKind, weight_ns: u64) -> StackCount {
        StackCount {
            frames: frames
                .iter()
                .map(|s| crate::symbolize::Frame::parse(s))
                .collect(),
            samples,
            kind,
            weight_ns,
            offset_ns: 0,
        }
    }

    #[test]
    fn folds_with_root_marker_and_weights() {
        let s = span_with(vec![
            stack(&["main", "burn;cpu"], 3, StackKind::OnCpu, 0),
            stack(&["main", "sleep"], 1, StackKind::OffCpu, 10_000_000),
        ]);
        let mut f = Folded::default();
        f.add(&s, 2_000_000, false);
        f.add(&s, 2_000_000, false);
        let lines: Vec<String> = f.lines().collect();
        assert_eq!(
            lines,
            vec![
                "MainThread;[off-cpu];main;sleep 10",
                "MainThread;main;burn:cpu 6"
            ]
        );
        for l in &lines {
            let (frames, n) = parse_line(l).unwrap();
            assert!(n > 0 && frames[0] == "MainThread");
        }
        assert_eq!(f.total(), 16);
    }

    #[test]
    fn distinct_stacks_past_the_cap_are_counted_under_other() {
        let mut f = Folded::default();
        let n = 100_000;
        for i in 0..n {
            let name = format!("handler_{i}");
            let s = span_with(vec![stack(&["main", &name], 1, StackKind::OnCpu, 0)]);
            f.add(&s, 2_000_000, false);
        }
        assert!(f.len() <= MAX_STACKS + 1, "{} entries", f.len());
        assert_eq!(f.overflow_stacks, (n - MAX_STACKS) as u64);
        assert_eq!(f.total(), n as u64, "no weight is lost");
        assert_eq!(
            f.stacks.get(&format!("MainThread;{OTHER}")).copied(),
            Some((n - MAX_STACKS) as u64)
        );
        // A stack seen before the cap still adds up.
        let s = span_with(vec![stack(&["main", "handler_0"], 5, StackKind::OnCpu, 0)]);
        f.add(&s, 2_000_000, false);
        assert_eq!(f.stacks.get("MainThread;main;handler_0").copied(), Some(6));
    }

    #[test]
    fn many_threads_past_the_cap_share_one_entry() {
        let mut f = Folded::default();
        for i in 0..(MAX_STACKS * 2) {
            let mut s = span_with(vec![stack(&["x"], 1, StackKind::OnCpu, 0)]);
            s.thread = format!("t{i}");
            f.add(&s, 1, false);
        }
        assert!(f.len() <= MAX_STACKS + MAX_STACKS / 10 + 1, "{}", f.len());
        assert_eq!(f.total(), (MAX_STACKS * 2) as u64);
    }
}
