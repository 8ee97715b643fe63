//! The live log: one line per blocking span as it ends, and a line for a
//! loop that is stuck right now.
use std::path::PathBuf;

use crate::{
    error::Result,
    spans::{Span, StackKind},
};

use super::{Recorder, TraceInfo, console::Console, fmt_ns, sanitize};

/// The live lines as a recorder: one line per span on standard output.
pub struct LiveLines {
    console: Console,
    with_pid: bool,
}

impl LiveLines {
    pub fn new(with_pid: bool) -> Self {
        Self {
            console: Console::default(),
            with_pid,
        }
    }
}

impl Recorder for LiveLines {
    fn record(&mut self, span: &Span) -> Result<()> {
        self.console.line(&span_line(span, self.with_pid));
        Ok(())
    }

    fn takes_exit_spans(&self) -> bool {
        true
    }

    fn finish(&mut self, _info: &TraceInfo) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// Local wall-clock time of day, `HH:MM:SS.mmm`.
pub fn local_time(unix_ns: u64) -> String {
    let tm = crate::clock::local_tm(unix_ns / 1_000_000_000);
    let ms = (unix_ns / 1_000_000) % 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// The hottest code of a span: the leaf function and its caller, counted
/// over on-CPU samples by their innermost user frames (kernel frames and
/// unknown addresses are skipped, so a timer interrupt does not hide the
/// code that was running; in Python stacks only Python frames count).
/// Off-CPU stacks count when there are no samples.
pub fn hot_frames(span: &Span) -> Option<(String, StackKind)> {
    let mut counts: std::collections::HashMap<(String, StackKind), u64> = Default::default();
    let any_on = span.stacks.iter().any(|s| s.kind == StackKind::OnCpu);
    for stack in &span.stacks {
        if any_on && stack.kind != StackKind::OnCpu {
            continue;
        }
        // With Python frames, the hot code is Python code: name the
        // innermost Python function and its caller, not interpreter internals.
        let python = stack.frames.iter().any(|f| f.is_python());
        let mut user = stack
            .frames
            .iter()
            .rev()
            .filter(|f| f.is_user_code() && (!python || f.is_python()));
        let Some(leaf) = user.next() else { continue };
        let key = match user.next() {
            Some(caller) => format!("{} ← {}", leaf.label(), caller.label()),
            None => leaf.label(),
        };
        let weight = if stack.kind == StackKind::OnCpu {
            stack.samples
        } else {
            stack.weight_ns
        };
        *counts.entry((key, stack.kind)).or_default() += weight;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(k, _)| k)
}

/// The line of a finished span.
pub fn span_line(span: &Span, with_pid: bool) -> String {
    let who = if with_pid {
        let label = crate::target::thread_label(&span.thread, Some(span.pid), span.tid);
        format!("{} {label}", span.comm)
    } else {
        crate::target::thread_label(&span.thread, None, span.tid)
    };
    let verb = if span.exited {
        "exited after"
    } else {
        "blocked"
    };
    let mut line = format!(
        "{}  {}  {verb} {}",
        local_time(span.start_unix_ns),
        who,
        fmt_ns(span.duration_ns)
    );
    if let Some(cause) = &span.cause {
        line.push_str(&format!("  {cause}"));
    }
    match (&span.task_name, &span.task) {
        (Some(name), Some(task)) => line.push_str(&format!("  task {name:?} {task}")),
        (Some(name), None) => line.push_str(&format!("  task {name:?}")),
        (None, Some(task)) => line.push_str(&format!("  task {task}")),
        (None, None) => {}
    }
    // The blame frame leads (in the cause, or after it); without one a
    // blocked cause already names its frame and CPU time gets its hot code.
    let cause = span.cause.as_deref().unwrap_or_default();
    let named = cause.starts_with("blocked") && !cause.contains('%');
    if let Some(b) = &span.blame {
        if !cause.contains(&b.frame_text()) {
            line.push_str(&format!("  {}", b.text));
        }
    } else if !named && let Some((hot, kind)) = hot_frames(span) {
        let tag = if kind == StackKind::OnCpu {
            ""
        } else {
            " (off-cpu)"
        };
        line.push_str(&format!("  {hot}{tag}"));
    }
    if span.exited {
        line.push_str("  (the thread exited in this iteration: not counted as lag)");
    } else if span.unfinished {
        line.push_str("  (still open at exit)");
    }
    sanitize::line(&line).into_owned()
}

/// The line of a loop stuck right now, `open_ns` into its iteration.
pub fn stuck_line(
    thread: &str,
    tid: u32,
    start_unix_ns: u64,
    open_ns: u64,
    threshold_ns: u64,
) -> String {
    format!(
        "{}  {}  STILL BLOCKED for {} ({}× threshold, since {})",
        local_time(start_unix_ns + open_ns),
        crate::target::thread_label(&sanitize::terminal(thread), None, tid),
        fmt_ns(open_ns),
        open_ns / threshold_ns.max(1),
        local_time(start_unix_ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};

    #[test]
    fn span_line_names_thread_duration_and_hot_frames() {
        let s = span_with(vec![
            stack(&["main", "handler", "burn_cpu"], 9, StackKind::OnCpu, 0),
            stack(&["main", "idle"], 1, StackKind::OnCpu, 0),
        ]);
        let l = span_line(&s, false);
        assert!(l.contains("MainThread[8]"), "{l}");
        assert!(l.contains("blocked 100 ms"), "{l}");
        assert!(l.ends_with("burn_cpu ← handler"), "{l}");
    }

    #[test]
    fn stuck_line_counts_thresholds() {
        let unnamed = stuck_line("[3 loop]", 3, 0, 2_000_000_000, 50_000_000);
        assert!(unnamed.contains("  [3 loop]  STILL BLOCKED"), "{unnamed}");
        let l = stuck_line("loop", 3, 0, 2_000_000_000, 50_000_000);
        assert!(l.contains("STILL BLOCKED for 2.00 s (40× threshold"), "{l}");
    }
}
