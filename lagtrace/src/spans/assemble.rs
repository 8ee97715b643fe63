//! Pairs sample batches with their span. Pure: it takes decoded events and
//! returns finished raw spans, so live capture and tests feed the same code.
//!
//! The kernel sends a span's samples before the span itself (a flush of its
//! slots, then live samples while it stays open), one record each. A thread runs one
//! iteration at a time, so samples of an older iteration of the same thread
//! can never be completed any more and are dropped.
use std::collections::HashMap;

use lagtrace_common::SpanEvent;

use crate::events::{Event, SampleRec};

/// Most samples kept for one open span; a loop stuck for hours at a high
/// frequency must not grow lagtrace without bound.
pub const MAX_SAMPLES_PER_SPAN: usize = 200_000;

/// One kernel sample, with its native and (for Python targets) Python
/// frames as the kernel read them at the instant of the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub rec: SampleRec,
}

/// A finished span with its samples, before symbolization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSpan {
    pub event: SpanEvent,
    pub samples: Vec<Sample>,
    /// Samples dropped here because the span held too many.
    pub samples_capped: u64,
}

#[derive(Default)]
struct Pending {
    tgid: u32,
    iteration: u64,
    samples: Vec<Sample>,
    capped: u64,
}

#[derive(Default)]
pub struct Assembler {
    /// Open spans by tid.
    pending: HashMap<u32, Pending>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one event; a span event returns the finished span.
    pub fn push(&mut self, event: Event) -> Option<RawSpan> {
        match event {
            Event::Sample(s) => {
                let p = self.pending.entry(s.tid).or_default();
                if p.iteration != s.iteration || p.tgid != s.tgid {
                    *p = Pending {
                        tgid: s.tgid,
                        iteration: s.iteration,
                        ..Default::default()
                    };
                }
                if p.samples.len() >= MAX_SAMPLES_PER_SPAN {
                    p.capped += 1;
                } else {
                    p.samples.push(Sample { rec: s.rec });
                }
                None
            }
            Event::Span(event) => {
                let tid = event.header.tid;
                let (samples, samples_capped) = match self.pending.remove(&tid) {
                    Some(p) if p.iteration == event.iteration && p.tgid == event.header.tgid => {
                        (p.samples, p.capped)
                    }
                    _ => (Vec::new(), 0),
                };
                Some(RawSpan {
                    event,
                    samples,
                    samples_capped,
                })
            }
        }
    }

    /// Samples received so far for a span that is still open.
    pub fn open_samples(&self, tid: u32, iteration: u64) -> &[Sample] {
        match self.pending.get(&tid) {
            Some(p) if p.iteration == iteration => &p.samples,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{TaggedSample, decode::tests::span};

    /// Feed one sample per time in `ts`.
    fn batch(a: &mut Assembler, tid: u32, iteration: u64, ts: &[u64]) {
        for &t in ts {
            let out = a.push(Event::Sample(TaggedSample {
                tgid: 7,
                tid,
                iteration,
                rec: SampleRec {
                    ts_ns: t,
                    ..Default::default()
                },
            }));
            assert!(out.is_none());
        }
    }

    #[test]
    fn samples_join_their_span() {
        let mut a = Assembler::new();
        batch(&mut a, 1, 5, &[10, 20]);
        batch(&mut a, 2, 9, &[15]);
        batch(&mut a, 1, 5, &[30]);
        assert_eq!(a.open_samples(1, 5).len(), 3);
        let s = a.push(Event::Span(span(1, 5, 0, 40))).unwrap();
        assert_eq!(
            s.samples.iter().map(|r| r.rec.ts_ns).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        let other = a.push(Event::Span(span(2, 9, 0, 40))).unwrap();
        assert_eq!(other.samples.len(), 1);
    }

    #[test]
    fn stale_samples_of_an_older_iteration_are_dropped() {
        let mut a = Assembler::new();
        batch(&mut a, 1, 5, &[10]);
        batch(&mut a, 1, 6, &[20]);
        let s = a.push(Event::Span(span(1, 6, 0, 40))).unwrap();
        assert_eq!(s.samples.len(), 1);
        assert_eq!(s.samples[0].rec.ts_ns, 20);
        let bare = a.push(Event::Span(span(1, 7, 0, 40))).unwrap();
        assert!(bare.samples.is_empty());
    }
}
