//! Why a span blocked: `cpu`, `blocked` (in which syscall, under which user
//! frame) or `runqueue` (runnable, waiting for a CPU), from the span's time
//! accounting and its heaviest stacks. Pure: it reads a `Span`.
use super::model::{Span, StackCount, StackKind};
use crate::symbolize::{Frame, FrameKind};

/// A share at or above this makes one kind the whole story.
const DOMINANT: f64 = 0.8;
/// The cause of time a thread spent stopped.
pub const STOPPED: &str = "stopped (SIGSTOP or a debugger)";

/// The syscall a kernel stack is in: `__x64_sys_recvfrom_[k]` → `recvfrom`.
fn syscall_of(frames: &[Frame]) -> Option<String> {
    frames.iter().rev().find_map(|f| {
        if f.kind != FrameKind::Kernel {
            return None;
        }
        let f = f.function.as_str();
        let name = f
            .strip_prefix("__x64_sys_")
            .or_else(|| f.strip_prefix("__arm64_sys_"))
            .or_else(|| f.strip_prefix("__do_sys_"))?;
        Some(name.to_string())
    })
}

/// What the thread waited in when no syscall shows: a page fault, a lock.
fn kernel_wait_of(frames: &[Frame]) -> Option<&'static str> {
    let has = |needle: &str| {
        frames
            .iter()
            .any(|f| f.kind == FrameKind::Kernel && f.function.contains(needle))
    };
    if has("page_fault") {
        Some("page fault")
    } else if has("futex") {
        Some("futex")
    } else {
        None
    }
}

/// The innermost frame of the program itself: a Python frame when there is
/// one, else the innermost named native frame.
pub fn innermost_user_frame(frames: &[Frame]) -> Option<&Frame> {
    let user = || frames.iter().rev().filter(|f| f.is_user_code());
    user().find(|f| f.is_python()).or_else(|| user().next())
}

fn heaviest(span: &Span, kind: StackKind) -> Option<&StackCount> {
    span.stacks
        .iter()
        .filter(|s| s.kind == kind)
        .max_by_key(|s| (s.weight_ns, s.samples))
}

/// `blocked in recvfrom ← fetch_blocking (app/client.py:12)`, or `stopped`
/// when most of the time off the CPU was a stop (SIGSTOP, a debugger).
/// `group`: name the blame function without its line (summary rows).
fn blocked_detail(span: &Span, group: bool) -> String {
    let weight = |k| {
        span.stacks
            .iter()
            .filter(|s| s.kind == k)
            .map(|s| s.weight_ns)
            .sum::<u64>()
    };
    let stopped = weight(StackKind::Stopped);
    if stopped > 0 && stopped >= weight(StackKind::OffCpu) {
        return STOPPED.into();
    }
    let Some(stack) = heaviest(span, StackKind::OffCpu) else {
        return "blocked".into();
    };
    let what = syscall_of(&stack.frames)
        .or_else(|| kernel_wait_of(&stack.frames).map(str::to_string))
        .unwrap_or_else(|| "the kernel".into());
    if let Some(c) = span.blame.as_ref().filter(|c| c.kind == StackKind::OffCpu) {
        let (who, via) = if group {
            (c.group(), None)
        } else {
            (c.frame_text(), c.via.as_ref())
        };
        return match via {
            Some(lib) => format!("blocked in {what} ← {who} via {lib}"),
            None => format!("blocked in {what} ← {who}"),
        };
    }
    match innermost_user_frame(&stack.frames) {
        Some(user) => format!("blocked in {what} ← {}", user.label()),
        None => format!("blocked in {what}"),
    }
}

/// The cause line of a span, with percentages when the time is mixed.
pub fn classify(span: &Span) -> String {
    let total = (span.on_cpu_ns + span.off_cpu_ns + span.runqueue_ns).max(1) as f64;
    let cpu = match span.blame.as_ref().filter(|c| c.kind == StackKind::OnCpu) {
        Some(c) => format!("cpu in {}", c.text),
        None => "cpu".to_string(),
    };
    let parts = [
        (span.on_cpu_ns as f64 / total, cpu),
        (span.off_cpu_ns as f64 / total, blocked_detail(span, false)),
        (span.runqueue_ns as f64 / total, "runqueue".to_string()),
    ];
    if let Some((_, label)) = parts.iter().find(|(share, _)| *share >= DOMINANT) {
        // Waiting for a CPU in the middle of the code the span was running.
        if label == "runqueue"
            && let Some(c) = span.blame.as_ref().filter(|c| c.kind == StackKind::OnCpu)
        {
            return format!("runqueue in {}", c.text);
        }
        return label.clone();
    }
    let mut mixed: Vec<&(f64, String)> = parts.iter().filter(|(s, _)| *s >= 0.05).collect();
    mixed.sort_by(|a, b| b.0.total_cmp(&a.0));
    mixed
        .iter()
        .map(|(s, l)| format!("{l} {:.0}%", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key spans are grouped by in the summary's top causes: the blame
/// function (not its line) under the dominant of on-CPU and off-CPU time;
/// runqueue time counts with the code that waited (the summary shows its
/// share apart). Without a blame frame: the dominant kind with its detail.
pub fn cause_key(span: &Span, hot: Option<&str>) -> String {
    if let Some(c) = &span.blame {
        return match c.kind {
            StackKind::OffCpu => blocked_detail(span, true),
            _ => format!("cpu in {}", c.group()),
        };
    }
    let total = (span.on_cpu_ns + span.off_cpu_ns + span.runqueue_ns).max(1);
    if span.off_cpu_ns * 2 >= total {
        blocked_detail(span, false)
    } else if span.runqueue_ns * 2 >= total {
        "runqueue (waiting for a CPU)".into()
    } else {
        match hot {
            Some(h) => format!("cpu in {h}"),
            None => "cpu".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};

    #[test]
    fn blocked_names_syscall_and_python_caller() {
        let mut s = span_with(vec![stack(
            &[
                "main (app.py:3)",
                "legacy_sync_call (app.py:12)",
                "clock_nanosleep",
                "entry_SYSCALL_64_[k]",
                "__x64_sys_clock_nanosleep_[k]",
                "do_nanosleep_[k]",
            ],
            1,
            StackKind::OffCpu,
            95_000_000,
        )]);
        s.off_cpu_ns = 95_000_000;
        s.on_cpu_ns = 5_000_000;
        assert_eq!(
            classify(&s),
            "blocked in clock_nanosleep ← legacy_sync_call (app.py:12)"
        );
        assert_eq!(
            cause_key(&s, None),
            "blocked in clock_nanosleep ← legacy_sync_call (app.py:12)"
        );
    }

    #[test]
    fn mixed_spans_get_percentages() {
        let mut s = span_with(vec![]);
        s.on_cpu_ns = 60;
        s.runqueue_ns = 40;
        assert_eq!(classify(&s), "cpu 60%, runqueue 40%");
        s.on_cpu_ns = 100;
        s.runqueue_ns = 0;
        assert_eq!(classify(&s), "cpu");
        assert_eq!(cause_key(&s, Some("burn ← main")), "cpu in burn ← main");
    }

    #[test]
    fn a_stop_is_stopped_not_blocked() {
        let mut s = span_with(vec![
            stack(
                &[
                    "main (app.py:3)",
                    "EpollSelector.select (selectors.py:468)",
                    "do_signal_stop_[k]",
                ],
                1,
                StackKind::Stopped,
                2_000_000_000,
            ),
            stack(
                &["main (app.py:3)", "sleep"],
                1,
                StackKind::OffCpu,
                1_000_000,
            ),
        ]);
        s.off_cpu_ns = 2_001_000_000;
        s.on_cpu_ns = 1_000;
        assert_eq!(classify(&s), STOPPED);
        assert_eq!(cause_key(&s, None), STOPPED);
    }

    #[test]
    fn page_faults_and_unknown_waits() {
        let mut s = span_with(vec![stack(
            &["work", "asm_exc_page_fault_[k]", "schedule_[k]"],
            1,
            StackKind::OffCpu,
            9,
        )]);
        s.off_cpu_ns = 9;
        assert_eq!(classify(&s), "blocked in page fault ← work");
    }
}
