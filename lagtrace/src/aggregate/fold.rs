//! Folding the stacks of many spans into FlameGraph's folded lines
//! (`root;frame;frame weight`). Shared by the folded file and the SVG, so
//! both always show the same thing.
use std::collections::BTreeMap;

use crate::{
    output::sanitize,
    spans::{Span, StackKind},
};

/// Folded stacks: the `;`-joined path and its weight in samples.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    pub stacks: BTreeMap<String, u64>,
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
                path.push_str(&sanitize::folded(f));
            }
            *self.stacks.entry(path).or_default() += weight;
        }
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
            cause: None,
            task: None,
            stacks,
            start_mono_ns: 0,
        }
    }

    pub fn stack(frames: &[&str], samples: u64, kind: StackKind, weight_ns: u64) -> StackCount {
        StackCount {
            frames: frames.iter().map(|s| s.to_string()).collect(),
            samples,
            kind,
            weight_ns,
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
}
