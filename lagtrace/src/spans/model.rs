//! The `Span` record: one blocking span, symbolized, as every output sees it.
//! Its JSON field names are an interface that scripts rely on; the required
//! ones (`pid`, `tid`, `thread`, `start_unix_ns`, `duration_ns`) never change.
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeStruct};

use crate::symbolize::{Frame, FrameKind};

/// Python frames of one sample, outermost first, as `function (dir/file.py:line)`.
pub type PyStack = Arc<[String]>;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
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
///
/// In JSON, `frames` holds each frame's [`Frame::label`] (the strings
/// scripts have always read) and `kinds` the parallel [`FrameKind`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackCount {
    /// Outermost first.
    pub frames: Vec<Frame>,
    /// On-CPU: samples. Off-CPU and runqueue: times the thread left the CPU there.
    pub samples: u64,
    pub kind: StackKind,
    /// Off-CPU and runqueue: time until the thread ran again, in ns.
    /// On-CPU: samples × the sampling period (see [`weigh_on_cpu`]), so
    /// consumers can sum time over stacks of every kind.
    pub weight_ns: u64,
    /// When its first sample was taken, in ns from the span's start: a
    /// span's stacks in this order are its timeline (speedscope).
    pub offset_ns: u64,
}

/// Give on-CPU stacks their time: samples × the sampling period.
pub fn weigh_on_cpu(stacks: &mut [StackCount], period_ns: u64) {
    for s in stacks.iter_mut().filter(|s| s.kind == StackKind::OnCpu) {
        s.weight_ns = s.samples.saturating_mul(period_ns);
    }
}

impl Serialize for StackCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let labels: Vec<String> = self.frames.iter().map(Frame::label).collect();
        let kinds: Vec<FrameKind> = self.frames.iter().map(|f| f.kind).collect();
        let mut st = s.serialize_struct("StackCount", 6)?;
        st.serialize_field("frames", &labels)?;
        st.serialize_field("kinds", &kinds)?;
        st.serialize_field("samples", &self.samples)?;
        st.serialize_field("kind", &self.kind)?;
        if is_zero(&self.weight_ns) {
            st.skip_field("weight_ns")?;
        } else {
            st.serialize_field("weight_ns", &self.weight_ns)?;
        }
        st.serialize_field("offset_ns", &self.offset_ns)?;
        st.end()
    }
}

/// A stack as a `--spans` file holds it; files older than `kinds` guess
/// each frame's kind from its label.
#[derive(Deserialize)]
struct StackJson {
    frames: Vec<String>,
    #[serde(default)]
    kinds: Option<Vec<FrameKind>>,
    samples: u64,
    kind: StackKind,
    #[serde(default)]
    weight_ns: u64,
    #[serde(default)]
    offset_ns: u64,
}

impl<'de> Deserialize<'de> for StackCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = StackJson::deserialize(d)?;
        let frames = match j.kinds.filter(|k| k.len() == j.frames.len()) {
            Some(kinds) => j
                .frames
                .iter()
                .zip(kinds)
                .map(|(l, k)| Frame::parse_as(l, k))
                .collect(),
            None => j.frames.iter().map(|l| Frame::parse(l)).collect(),
        };
        Ok(StackCount {
            frames,
            samples: j.samples,
            kind: j.kind,
            weight_ns: j.weight_ns,
            offset_ns: j.offset_ns,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub pid: u32,
    /// The pid inside the target's own PID namespace, where it differs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
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
    #[serde(skip_serializing_if = "is_false", default)]
    pub unfinished: bool,
    /// The thread exited inside this iteration (its process ended, was
    /// killed, or the thread returned): the iteration the target exited in,
    /// which may hold its own teardown after the loop stopped. It is written
    /// to `--spans` and shown live, marked so, but it is not event-loop lag:
    /// the summary, causes, stack outputs and metrics leave it out
    /// ([`Span::is_lag`]). Such a span is also `unfinished`.
    #[serde(skip_serializing_if = "is_false", default)]
    pub exited: bool,
    /// `cpu`, `blocked` or `runqueue`, with the blocking call where known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cause: Option<String>,
    /// The user code the span's time is blamed on (`spans::culprit`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blame: Option<super::culprit::Culprit>,
    /// The asyncio Task that ran during the span, where known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<String>,
    /// That Task's own name (`Task.get_name()`), read from the target
    /// while the span was open (`symbolize/cpython/task.rs`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task_name: Option<String>,
    pub stacks: Vec<StackCount>,
    /// CLOCK_MONOTONIC start, for ordering; not part of the JSON.
    #[serde(skip)]
    pub start_mono_ns: u64,
    /// Fields of a recorded span that this lagtrace does not know (written
    /// by a newer one): kept, and written again as they were.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Span {
    /// Whether the span counts as event-loop lag: every span but the
    /// iteration its thread exited in (see [`Span::exited`]).
    pub fn is_lag(&self) -> bool {
        !self.exited
    }
}

/// The span's blame function, for filters and labels.
pub fn blame_of(span: &Span) -> Option<String> {
    span.blame.as_ref().map(|b| b.function.clone())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}
