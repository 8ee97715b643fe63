//! Unwinding and symbolization: from a span's raw samples (stack ids) to
//! stacks of named frames, grouped and counted.
//!
//! The kernel deduplicates stacks into ids, and an id keeps its meaning for
//! the whole trace (lagtrace never deletes from the stack map), so frames
//! are resolved once per (pid, user id, kernel id).
mod cache;
pub mod native;

use std::collections::HashMap;

use lagtrace_common::{SAMPLE_OFF_CPU, SAMPLE_RUNQUEUE, SampleRec};

use crate::spans::{StackCount, StackKind};

pub use native::NativeSymbolizer;

/// Turns samples into counted stacks of frame names.
pub struct StackSymbolizer {
    native: NativeSymbolizer,
    by_ids: HashMap<(u32, i32, i32), Vec<String>>,
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
            by_ids: HashMap::new(),
        }
    }

    /// Frames (outermost first) of one sample's stack ids; `ips_of` reads the
    /// kernel's stack map.
    pub fn frames(
        &mut self,
        pid: u32,
        rec: &SampleRec,
        ips_of: &impl Fn(i32) -> Option<Vec<u64>>,
    ) -> Vec<String> {
        let key = (pid, rec.user_stack, rec.kernel_stack);
        if let Some(f) = self.by_ids.get(&key) {
            return f.clone();
        }
        let user = ips_of(rec.user_stack).unwrap_or_default();
        let kernel = ips_of(rec.kernel_stack).unwrap_or_default();
        let mut frames = self.native.frames(pid, &user, &kernel);
        if frames.is_empty() {
            frames.push("[no stack]".into());
        }
        self.by_ids.insert(key, frames.clone());
        frames
    }

    /// Group a span's samples by kind and frames.
    pub fn stacks(
        &mut self,
        pid: u32,
        samples: &[SampleRec],
        ips_of: &impl Fn(i32) -> Option<Vec<u64>>,
    ) -> Vec<StackCount> {
        group(
            samples
                .iter()
                .map(|rec| (rec, self.frames(pid, rec, ips_of))),
        )
    }

    pub fn invalidate(&mut self, pid: u32) {
        self.native.invalidate(pid);
        self.by_ids.retain(|(p, _, _), _| *p != pid);
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
