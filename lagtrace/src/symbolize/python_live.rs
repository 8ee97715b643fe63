//! When to read Python frames, so that each read belongs to one kernel
//! sample of one open span.
//!
//! - On-CPU: the kernel streams samples one by one once an iteration is past
//!   its `stream_after_ns` (an eighth of the threshold for Python targets).
//!   Each such sample triggers one read of its thread's Python stack, kept
//!   only if the kernel still shows the same iteration open after the read.
//! - Off-CPU and runqueue: a thread waiting off the CPU does not move, so its
//!   Python stack is read while it waits (polled), keyed by the time it left
//!   the CPU, and joined to the sample the kernel sends when it runs again.
//!
//! Healthy loops cost nothing: no read happens for an iteration shorter than
//! `stream_after_ns`.
use std::collections::HashMap;

use lagtrace_common::{PHASE_OFF_CPU, PHASE_RUNQUEUE, SAMPLE_ON_CPU, THREAD_IN_ITER, ThreadState};

use super::python::{PyStack, PythonReader};
use crate::{clock::WallClock, events::SampleBatch};

/// A live sample older than this is not read. A read is always checked to
/// come from the sample's thread and span (the kernel still shows the same
/// iteration open after it); within the span the thread may have moved on
/// to other code when lagtrace itself was delayed (a busy host, or the
/// symbolization of the previous span), which this bounds.
const MAX_SAMPLE_AGE_NS: u64 = 500_000_000;
/// Bound on off-CPU stacks waiting for their sample.
const MAX_PENDING: usize = 4096;

#[derive(Default)]
pub struct LivePython {
    pub reader: PythonReader,
    /// Python targets and the time into an iteration when reads may start.
    targets: HashMap<u32, u64>,
    /// Python stacks of threads waiting off the CPU, by (tid, left-CPU time).
    waiting: HashMap<(u32, u64), PyStack>,
}

impl LivePython {
    pub fn add_target(&mut self, pid: u32, stream_after_ns: u64) {
        self.targets.insert(pid, stream_after_ns);
    }

    /// Stop reading a target's Python frames (it exec'd something else).
    /// Returns whether it was read.
    pub fn remove_target(&mut self, pid: u32) -> bool {
        self.targets.remove(&pid).is_some()
    }

    pub fn any(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Python stacks for the samples of a batch just received, as
    /// (sample time, stack). `now` reads the kernel's state of a thread.
    pub fn on_batch(
        &mut self,
        batch: &SampleBatch,
        now: &impl Fn(u32) -> Option<ThreadState>,
    ) -> Vec<(u64, PyStack)> {
        if !self.targets.contains_key(&batch.tgid) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for rec in &batch.recs {
            if rec.kind != SAMPLE_ON_CPU
                && let Some(stack) = self.waiting.remove(&(batch.tid, rec.ts_ns))
            {
                out.push((rec.ts_ns, stack));
            }
        }
        let [rec] = batch.recs.as_slice() else {
            return out;
        };
        if rec.kind != SAMPLE_ON_CPU
            || WallClock::now_mono_ns().saturating_sub(rec.ts_ns) > MAX_SAMPLE_AGE_NS
        {
            return out;
        }
        let Some(stack) = self.reader.stack(batch.tgid, batch.tid, true) else {
            return out;
        };
        match now(batch.tid) {
            Some(t) if t.iteration == batch.iteration && t.flags & THREAD_IN_ITER != 0 => {
                out.push((rec.ts_ns, stack))
            }
            _ => self.reader.torn(),
        }
        out
    }

    /// The Python stack read while `tid` waits since `since_ns`, if any.
    pub fn waiting_stack(&self, tid: u32, since_ns: u64) -> Option<PyStack> {
        self.waiting.get(&(tid, since_ns)).cloned()
    }

    /// Read the Python stacks of threads waiting off the CPU in a long
    /// iteration.
    pub fn poll(
        &mut self,
        threads: &[(u32, ThreadState)],
        now: &impl Fn(u32) -> Option<ThreadState>,
    ) {
        let mono = WallClock::now_mono_ns();
        for (tid, t) in threads {
            let Some(&after) = self.targets.get(&t.tgid) else {
                continue;
            };
            let waiting = t.phase == PHASE_OFF_CPU || t.phase == PHASE_RUNQUEUE;
            if t.flags & THREAD_IN_ITER == 0
                || !waiting
                || t.pending_kind == 0
                || mono.saturating_sub(t.iter_start_ns) < after
                || self.waiting.contains_key(&(*tid, t.pending_since_ns))
            {
                continue;
            }
            let Some(stack) = self.reader.stack(t.tgid, *tid, false) else {
                continue;
            };
            match now(*tid) {
                Some(n)
                    if n.iteration == t.iteration
                        && n.pending_since_ns == t.pending_since_ns
                        && n.pending_kind != 0 =>
                {
                    if self.waiting.len() >= MAX_PENDING {
                        self.waiting.clear();
                    }
                    self.waiting.insert((*tid, t.pending_since_ns), stack);
                }
                _ => self.reader.torn(),
            }
        }
    }
}
