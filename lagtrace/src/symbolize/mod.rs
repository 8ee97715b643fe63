//! Symbolization: from a span's raw samples (the addresses each sample
//! carries) to stacks of named frames, grouped and counted.
//!
//! The code at an address does not keep its meaning for the whole trace (a
//! library unloaded and another loaded there), so frames are resolved per
//! sample and its time; `native` caches them by file and offset.
pub(crate) mod cache;
pub mod cpython;
pub mod frame;
pub mod irq;
pub mod merge;
pub mod native;
pub mod perf_map;
pub mod perf_map_owner;
pub mod python;
pub mod untrusted;
pub mod v8;

use std::collections::HashMap;

use lagtrace_common::{LANG_NATIVE_SHIFT, PY_FRAME_ENTRY, SAMPLE_F_IN_IRQ};

use crate::{
    events::{SampleRec, StackEnd},
    spans::{Sample, StackCount, StackKind},
};

pub use frame::{Frame, FrameKind};
pub use native::NativeSymbolizer;

/// Native frames of one sample, split as `merge` needs them.
struct NativeFrames {
    /// User frames, outermost first.
    user: Vec<Frame>,
    /// The frames of the interrupted instruction alone (with its inlines).
    leaf: Vec<Frame>,
    /// Kernel frames, outermost first.
    kernel: Vec<Frame>,
}

/// The frame that stands first in a Python stack whose kernel walk ended
/// before the outermost frame: deeper than the kernel walks, a cyclic or
/// implausible frame chain (the target's memory is untrusted), or a frame
/// that could not be read. The innermost frames before it are right.
pub fn truncation_marker(end: StackEnd) -> Option<&'static str> {
    match end {
        StackEnd::Depth => Some("[python frames truncated: deeper than 64]"),
        StackEnd::BadFrame => Some("[python frames truncated: cyclic or bad frame chain]"),
        StackEnd::ReadError => Some("[python frames truncated: unreadable frame]"),
        StackEnd::None | StackEnd::Root | StackEnd::NoTable => None,
    }
}

/// Turns samples into counted stacks of frame names.
pub struct StackSymbolizer {
    native: NativeSymbolizer,
    /// Python targets and their code objects.
    pub python: cpython::PyFrames,
    /// Node targets and their JS functions.
    pub js: v8::JsFrames,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl StackSymbolizer {
    pub fn new() -> Self {
        Self {
            native: NativeSymbolizer::new(),
            python: cpython::PyFrames::default(),
            js: v8::JsFrames::default(),
        }
    }

    fn native_frames(&mut self, pid: u32, rec: &SampleRec) -> NativeFrames {
        let ts = rec.ts_ns;
        NativeFrames {
            user: self.native.frames(pid, ts, &rec.user, &[]),
            leaf: self
                .native
                .frames(pid, ts, &rec.user[..rec.user.len().min(1)], &[]),
            kernel: self.kernel_frames(pid, rec),
        }
    }

    /// A sample's kernel frames, outermost first, without the timer
    /// interrupt's own when the tick took it (see `irq`).
    fn kernel_frames(&mut self, pid: u32, rec: &SampleRec) -> Vec<Frame> {
        let kernel = self.native.frames(pid, rec.ts_ns, &[], &rec.kernel);
        if rec.flags & SAMPLE_F_IN_IRQ != 0 {
            irq::interrupted(kernel)
        } else {
            kernel
        }
    }

    /// A sample's Python frames, outermost first, each with whether it was
    /// entered from C; `None` when the kernel found none (not a Python
    /// thread, or not a Python target). A walk that did not reach the
    /// outermost frame starts with a [`truncation_marker`].
    pub fn python_frames(&mut self, pid: u32, rec: &SampleRec) -> Option<Vec<(Frame, bool)>> {
        if rec.lang.is_empty() || rec.lang.iter().any(v8::is_js) {
            return None;
        }
        let mut out: Vec<(Frame, bool)> = Vec::with_capacity(rec.lang.len() + 1);
        if let Some(marker) = truncation_marker(rec.lang_end) {
            out.push((Frame::marker(marker), false));
        }
        for f in rec.lang.iter().rev() {
            out.push((self.python.frame(pid, f), f.flags & PY_FRAME_ENTRY != 0));
        }
        Some(out)
    }

    /// Frames (outermost first) of one sample: native frames from its
    /// addresses, merged with its Python frames when it has them.
    pub fn frames(&mut self, pid: u32, sample: &Sample) -> Vec<Frame> {
        if sample.rec.lang.iter().any(v8::is_js) {
            return self.js_frames(pid, &sample.rec);
        }
        let n = self.native_frames(pid, &sample.rec);
        let mut frames = match self.python_frames(pid, &sample.rec) {
            Some(py) => merge::merge(&py, &n.user, &n.leaf, &n.kernel),
            None => n.user.into_iter().chain(n.kernel).collect(),
        };
        if frames.is_empty() {
            frames.push(Frame::marker("[no stack]"));
        }
        frames
    }

    /// Frames (outermost first) of a sample with JS frames read from V8,
    /// each in place of the native frame it was found in.
    fn js_frames(&mut self, pid: u32, rec: &SampleRec) -> Vec<Frame> {
        let js: Vec<(usize, Frame)> = rec
            .lang
            .iter()
            .map(|r| {
                let at = ((r.flags >> LANG_NATIVE_SHIFT) & 0xff) as usize;
                (at, self.js.frame(pid, r))
            })
            .collect();
        // The kernel read a JS function on each of those frames: their
        // addresses are code even where the maps lagtrace read do not show
        // it (V8 maps and unmaps code pages as its GC compacts them).
        let verified: Vec<usize> = js.iter().map(|(at, _)| *at).collect();
        let groups = self
            .native
            .user_groups(pid, rec.ts_ns, &rec.user, &verified);
        let kernel = self.kernel_frames(pid, rec);
        v8::merge::merge(groups, &js, kernel)
    }

    /// Frames left unknown since the last call because a read of the
    /// target (a code object, a JS function) has not answered yet.
    pub fn take_deferred(&mut self) -> u64 {
        self.python.take_deferred() + self.js.take_deferred()
    }

    /// Reads of the targets queued or running.
    pub fn reads_in_flight(&self) -> usize {
        self.python.reads_in_flight() + self.js.reads_in_flight()
    }

    /// The asyncio task that held the span longest, by the time its samples
    /// with Python frames stand for: `period_ns` for an on-CPU sample, the
    /// time off the CPU for the others. By count, a task asleep for the
    /// whole span (one off-CPU sample) lost to the loop's own bookkeeping
    /// around it (a few on-CPU samples).
    pub fn busiest_task(&mut self, pid: u32, samples: &[Sample], period_ns: u64) -> Option<String> {
        let mut weights: HashMap<String, u64> = HashMap::new();
        for s in samples {
            let Some(py) = self.python_frames(pid, &s.rec) else {
                continue;
            };
            let names: Vec<Frame> = py.into_iter().map(|(n, _)| n).collect();
            if let Some(task) = python::task_of(&names) {
                let ns = match s.rec.kind {
                    StackKind::OnCpu => period_ns,
                    _ => s.rec.weight_ns,
                };
                *weights.entry(task).or_default() += ns.max(1);
            }
        }
        weights
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(t, _)| t)
    }

    /// The task whose coroutine's code object is `coro_code`, from the
    /// first sample that ran it (where no `Handle._run` frame shows the
    /// task: uvloop's handles are Cython).
    pub fn task_of_coro(&mut self, pid: u32, samples: &[Sample], coro_code: u64) -> Option<String> {
        let recs = samples
            .iter()
            .map(|s| s.rec.python_frames())
            .find(|py| py.iter().any(|f| f.code == coro_code))?;
        let inner = recs.iter().position(|f| f.code == coro_code)?;
        let frames = self.python.frames(pid, recs);
        Some(python::task_at(&frames, recs.len() - 1 - inner))
    }

    /// Group the samples of a span that started at monotonic `start_ns`
    /// by kind and frames.
    pub fn stacks(&mut self, pid: u32, samples: &[Sample], start_ns: u64) -> Vec<StackCount> {
        let framed: Vec<(&SampleRec, Vec<Frame>)> = samples
            .iter()
            .map(|s| (&s.rec, self.frames(pid, s)))
            .collect();
        let mut stacks = group(framed.into_iter());
        for s in &mut stacks {
            s.offset_ns = s.offset_ns.saturating_sub(start_ns);
        }
        stacks
    }

    /// See [`NativeSymbolizer::refresh`].
    pub fn refresh(&mut self, pid: u32) -> bool {
        self.native.refresh(pid)
    }

    /// See [`NativeSymbolizer::warm_up`].
    pub fn warm_up(&mut self, pid: u32) {
        self.native.warm_up(pid);
    }
}

/// Count identical (kind, frames) pairs; heaviest first. Each keeps the
/// monotonic time of its first sample in `offset_ns`.
pub fn group<'a>(items: impl Iterator<Item = (&'a SampleRec, Vec<Frame>)>) -> Vec<StackCount> {
    let mut map: HashMap<(StackKind, Vec<Frame>), (u64, u64, u64)> = HashMap::new();
    for (rec, frames) in items {
        let e = map.entry((rec.kind, frames)).or_insert((0, 0, u64::MAX));
        e.0 += 1;
        e.1 += rec.weight_ns;
        e.2 = e.2.min(rec.ts_ns);
    }
    let mut out: Vec<StackCount> = map
        .into_iter()
        .map(|((kind, frames), (samples, weight_ns, first))| StackCount {
            frames,
            samples,
            kind,
            weight_ns,
            offset_ns: first,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.samples, b.weight_ns)
            .cmp(&(a.samples, a.weight_ns))
            .then_with(|| a.frames.cmp(&b.frames))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_kind_and_frames() {
        let on = SampleRec {
            kind: StackKind::OnCpu,
            ..Default::default()
        };
        let off = SampleRec {
            kind: StackKind::OffCpu,
            weight_ns: 5,
            ..Default::default()
        };
        let f = |s: &[&str]| s.iter().map(|x| Frame::parse(x)).collect::<Vec<_>>();
        let out = group(
            [
                (&on, f(&["a", "b"])),
                (&on, f(&["a", "b"])),
                (&off, f(&["a", "b"])),
                (&off, f(&["a", "c"])),
            ]
            .into_iter(),
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].samples, 2);
        assert_eq!(out[0].kind, StackKind::OnCpu);
        let off_total: u64 = out
            .iter()
            .filter(|s| s.kind == StackKind::OffCpu)
            .map(|s| s.weight_ns)
            .sum();
        assert_eq!(off_total, 10);
    }
}
