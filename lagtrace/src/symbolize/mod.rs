//! Symbolization: from a span's raw samples (the addresses each sample
//! carries) to stacks of named frames, grouped and counted.
//!
//! Names are cached per (pid, address) by the native symbolizer, so a stack
//! seen again costs only look-ups.
mod cache;
pub mod cpython;
pub mod merge;
pub mod native;
pub mod python;
pub mod python_live;

use std::collections::HashMap;

use crate::{
    events::SampleRec,
    spans::{Sample, StackCount, StackKind},
};

pub use native::NativeSymbolizer;

/// Native frames of one sample, split as `merge` needs them.
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

    fn native_frames(&mut self, pid: u32, rec: &SampleRec) -> NativeFrames {
        NativeFrames {
            user: self.native.frames(pid, &rec.user, &[]),
            leaf: self
                .native
                .frames(pid, &rec.user[..rec.user.len().min(1)], &[]),
            kernel: self.native.frames(pid, &[], &rec.kernel),
        }
    }

    /// Frames (outermost first) of one sample: native frames from its
    /// addresses, merged with its Python frames when it has them.
    pub fn frames(&mut self, pid: u32, sample: &Sample) -> Vec<String> {
        let n = self.native_frames(pid, &sample.rec);
        let mut frames = match &sample.python {
            Some(py) => merge::merge(py, &n.user, &n.leaf, &n.kernel),
            None => n.user.into_iter().chain(n.kernel).collect(),
        };
        if frames.is_empty() {
            frames.push("[no stack]".into());
        }
        frames
    }

    /// Group a span's samples by kind and frames.
    pub fn stacks(&mut self, pid: u32, samples: &[Sample]) -> Vec<StackCount> {
        let framed: Vec<(&SampleRec, Vec<String>)> = samples
            .iter()
            .map(|s| (&s.rec, self.frames(pid, s)))
            .collect();
        group(framed.into_iter())
    }

    /// See [`NativeSymbolizer::warm_up`].
    pub fn warm_up(&mut self, pid: u32) {
        self.native.warm_up(pid);
    }
}

/// Count identical (kind, frames) pairs; heaviest first.
pub fn group<'a>(items: impl Iterator<Item = (&'a SampleRec, Vec<String>)>) -> Vec<StackCount> {
    let mut map: HashMap<(StackKind, Vec<String>), (u64, u64)> = HashMap::new();
    for (rec, frames) in items {
        let e = map.entry((rec.kind, frames)).or_default();
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
