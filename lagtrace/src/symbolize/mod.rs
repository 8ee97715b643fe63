//! Unwinding and symbolization: from a span's raw samples (stack ids) to
//! stacks of named frames, grouped and counted.
//!
//! An id's addresses keep their meaning for the whole trace, but the code at
//! an address does not (a library unloaded and another loaded there), so
//! frames are resolved per sample and its time; `native` caches them by
//! file and offset.
mod cache;
pub mod merge;
pub mod native;
pub mod perf_map;
pub mod python;
pub mod python_live;
pub mod untrusted;

use std::collections::HashMap;

use lagtrace_common::{SAMPLE_OFF_CPU, SAMPLE_RUNQUEUE, SampleRec};

use crate::spans::{Sample, StackCount, StackKind};

pub use native::NativeSymbolizer;

/// Native frames of one pair of stack ids, split as `merge` needs them.
#[derive(Clone, Default)]
struct NativeFrames {
    /// User frames, outermost first.
    user: Vec<String>,
    /// The frames of the interrupted instruction alone (with its inlines).
    leaf: Vec<String>,
    /// Kernel frames, outermost first, with the `_[k]` suffix.
    kernel: Vec<String>,
}

/// Turns samples into counted stacks of frame names.
pub struct StackSymbolizer {
    native: NativeSymbolizer,
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
        }
    }

    fn native_frames(
        &mut self,
        pid: u32,
        rec: &SampleRec,
        ips_of: &impl Fn(i32) -> Option<Vec<u64>>,
    ) -> NativeFrames {
        let user_ips = ips_of(rec.user_stack).unwrap_or_default();
        let kernel_ips = ips_of(rec.kernel_stack).unwrap_or_default();
        let ts = rec.ts_ns;
        NativeFrames {
            user: self.native.frames(pid, ts, &user_ips, &[]),
            leaf: self
                .native
                .frames(pid, ts, &user_ips[..user_ips.len().min(1)], &[]),
            kernel: self.native.frames(pid, ts, &[], &kernel_ips),
        }
    }

    /// Frames (outermost first) of one sample: native frames from its stack
    /// ids (`ips_of` reads the kernel's stack map), merged with its Python
    /// frames when it has them.
    pub fn frames(
        &mut self,
        pid: u32,
        sample: &Sample,
        ips_of: &impl Fn(i32) -> Option<Vec<u64>>,
    ) -> Vec<String> {
        let n = self.native_frames(pid, &sample.rec, ips_of);
        let mut frames = match &sample.python {
            Some(py) => merge::merge(py, &n.user, &n.leaf, &n.kernel),
            None => n.user.iter().chain(&n.kernel).cloned().collect(),
        };
        if frames.is_empty() {
            frames.push("[no stack]".into());
        }
        frames
    }

    /// Group a span's samples by kind and frames.
    pub fn stacks(
        &mut self,
        pid: u32,
        samples: &[Sample],
        ips_of: &impl Fn(i32) -> Option<Vec<u64>>,
    ) -> Vec<StackCount> {
        let framed: Vec<(&SampleRec, Vec<String>)> = samples
            .iter()
            .map(|s| (&s.rec, self.frames(pid, s, ips_of)))
            .collect();
        group(framed.into_iter())
    }

    /// See [`NativeSymbolizer::refresh`].
    pub fn refresh(&mut self, pid: u32) {
        self.native.refresh(pid);
    }

    /// See [`NativeSymbolizer::warm_up`].
    pub fn warm_up(&mut self, pid: u32) {
        self.native.warm_up(pid);
    }
}

pub fn kind_of(rec: &SampleRec) -> StackKind {
    match rec.kind {
        SAMPLE_OFF_CPU => StackKind::OffCpu,
        SAMPLE_RUNQUEUE => StackKind::Runqueue,
        _ => StackKind::OnCpu,
    }
}

/// Count identical (kind, frames) pairs; heaviest first.
pub fn group<'a>(items: impl Iterator<Item = (&'a SampleRec, Vec<String>)>) -> Vec<StackCount> {
    let mut map: HashMap<(StackKind, Vec<String>), (u64, u64)> = HashMap::new();
    for (rec, frames) in items {
        let e = map.entry((kind_of(rec), frames)).or_default();
        e.0 += 1;
        e.1 += rec.weight_ns;
    }
    let mut out: Vec<StackCount> = map
        .into_iter()
        .map(|((kind, frames), (samples, weight_ns))| StackCount {
            frames,
            samples,
            kind,
            weight_ns,
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
    use lagtrace_common::SAMPLE_ON_CPU;

    #[test]
    fn groups_by_kind_and_frames() {
        let on = SampleRec {
            kind: SAMPLE_ON_CPU,
            ..Default::default()
        };
        let off = SampleRec {
            kind: SAMPLE_OFF_CPU,
            weight_ns: 5,
            ..Default::default()
        };
        let f = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
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
