//! The `Span` record: one blocking span, symbolized, as every output sees it.
//! Its JSON field names are an interface that scripts rely on; the required
//! ones (`pid`, `tid`, `thread`, `start_unix_ns`, `duration_ns`) never change.
use std::sync::Arc;

use serde::Serialize;

/// Python frames of one sample, outermost first, as `function (dir/file.py:line)`.
pub type PyStack = Arc<[String]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StackKind {
    #[default]
    OnCpu,
    OffCpu,
    Runqueue,
    /// Stopped by a signal or a debugger (weighted like off-CPU time).
    Stopped,
}

impl StackKind {
    /// The marker frame that keeps off-CPU time from passing for CPU time in
    /// flamegraphs and folded files.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            Self::OnCpu => None,
            Self::OffCpu => Some("[off-cpu]"),
            Self::Runqueue => Some("[runqueue]"),
            Self::Stopped => Some("[stopped]"),
        }
    }
}

/// One distinct stack of a span and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackCount {
    /// Outermost first.
    pub frames: Vec<String>,
    /// On-CPU: samples. Off-CPU and runqueue: times the thread left the CPU there.
    pub samples: u64,
    pub kind: StackKind,
    /// Off-CPU and runqueue: time until the thread ran again, in ns.
    /// On-CPU: samples × the sampling period (see [`weigh_on_cpu`]), so
    /// consumers can sum time over stacks of every kind.
    #[serde(skip_serializing_if = "is_zero")]
    pub weight_ns: u64,
}

/// Give on-CPU stacks their time: samples × the sampling period.
pub fn weigh_on_cpu(stacks: &mut [StackCount], period_ns: u64) {
    for s in stacks.iter_mut().filter(|s| s.kind == StackKind::OnCpu) {
        s.weight_ns = s.samples.saturating_mul(period_ns);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    pub pid: u32,
    /// The pid inside the target's own PID namespace, where it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub tid: u32,
    pub thread: String,
    pub comm: String,
    /// Wall clock, comparable to the target's own `time.time_ns()`.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
    /// The loop iteration's number on its thread since attach.
    pub iteration: u64,
    pub samples: u64,
    pub samples_dropped: u64,
    /// Still open when lagtrace stopped: the duration is a lower bound.
    #[serde(skip_serializing_if = "is_false")]
    pub unfinished: bool,
    /// `cpu`, `blocked` or `runqueue`, with the blocking call where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The user code the span's time is blamed on (`spans::culprit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blame: Option<super::culprit::Culprit>,
    /// The asyncio Task that ran during the span, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub stacks: Vec<StackCount>,
    /// CLOCK_MONOTONIC start, for ordering; not part of the JSON.
    #[serde(skip)]
    pub start_mono_ns: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}
