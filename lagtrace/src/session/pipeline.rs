//! The pipeline's state and its steps: ring-buffer records in, finished
//! spans out to every recorder, plus the live "still blocked" lines and the
//! spans still open at exit.
use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use lagtrace_common::{PHASE_OFF_CPU, PHASE_ON_CPU, PHASE_RUNQUEUE, THREAD_IN_ITER, ThreadState};

use super::targets::Targets;
use crate::{
    aggregate::summary::SummaryBuilder,
    clock::WallClock,
    error::Result,
    events::{Event, decode},
    output::{Recorders, live},
    probes::Probes,
    spans::{Assembler, RawSpan, Sample, Span, cause},
    symbolize::{StackSymbolizer, python::task_of, python_live::LivePython},
    target::{Target, ThreadNames},
};

/// Newest samples that describe what a stuck loop is doing now.
const STUCK_SAMPLES: usize = 16;

pub(super) struct Pipeline {
    pub targets: Targets,
    pub clock: WallClock,
    pub threshold_ns: u64,
    /// Scheduler accounting is on, so spans can be classified.
    pub sched: bool,
    pub assembler: Assembler,
    pub symbolizer: StackSymbolizer,
    pub python: LivePython,
    pub names: ThreadNames,
    pub summary: SummaryBuilder,
    pub recorders: Recorders,
    /// Highest "still blocked" level printed per (tid, iteration).
    pub stuck: HashMap<u32, (u64, u32)>,
    pub spans: u64,
    /// Processes whose samples had PCs in no unwind table (the session
    /// reads their mappings again, rate-limited).
    pub unmapped_pcs: std::collections::HashSet<u32>,
}

impl Pipeline {
    pub fn multi(&self) -> bool {
        self.targets.len() > 1
    }

    pub fn target(&self, pid: u32) -> Option<&Target> {
        self.targets.iter().find(|t| t.pid == pid)
    }

    /// Drain the ring buffer: decode, assemble, and finish spans.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, probes: &Probes) -> Result<()> {
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => {
                    // A PC in no table: the walk fell back to the frame
                    // pointer, or could not go on at all.
                    if let Event::Sample(s) = &event
                        && (s.rec.flags & lagtrace_common::SAMPLE_F_FP_FALLBACK != 0
                            || s.rec.user_end == crate::events::StackEnd::NoTable)
                    {
                        self.unmapped_pcs.insert(s.tgid);
                    }
                    let python = match &event {
                        Event::Sample(s) => Some((
                            s.tid,
                            s.iteration,
                            s.rec.ts_ns,
                            self.python.on_sample(s, &|tid| probes.thread(tid)),
                        )),
                        Event::Span(_) => None,
                    };
                    if let Some((tid, iteration, ts, stack)) = python {
                        self.assembler.push(event);
                        if let Some(stack) = stack {
                            self.assembler.attach_python(tid, iteration, ts, stack);
                        }
                    } else if let Some(raw) = self.assembler.push(event) {
                        let t0 = std::time::Instant::now();
                        let span = self.build(&raw, false);
                        log::debug!(
                            "span of {} samples built in {:?}",
                            raw.samples.len(),
                            t0.elapsed()
                        );
                        self.finish_span(span)?;
                    }
                }
                Err(e) => log::warn!("dropped a malformed kernel record: {e}"),
            }
        }
        Ok(())
    }

    fn build(&mut self, raw: &RawSpan, unfinished: bool) -> Span {
        let ev = &raw.event;
        let pid = ev.header.tgid;
        let tid = ev.header.tid;
        let stacks = self.symbolizer.stacks(pid, &raw.samples);
        let thread = self.names.get(pid, tid, &ev.comm);
        let target = self.target(pid);
        Span {
            pid,
            ns_pid: target.and_then(|t| t.ns_pid),
            tid,
            thread,
            comm: target.map(|t| t.comm.clone()).unwrap_or_default(),
            start_unix_ns: self.clock.to_unix_ns(ev.start_ns),
            duration_ns: ev.end_ns.saturating_sub(ev.start_ns),
            on_cpu_ns: ev.on_cpu_ns,
            off_cpu_ns: ev.off_cpu_ns,
            runqueue_ns: ev.runqueue_ns,
            iteration: ev.iteration,
            samples: u64::from(ev.samples),
            samples_dropped: u64::from(ev.samples_dropped) + raw.samples_capped,
            unfinished,
            cause: None,
            task: busiest_task(&raw.samples),
            stacks,
            start_mono_ns: ev.start_ns,
        }
    }

    fn finish_span(&mut self, mut span: Span) -> Result<()> {
        if self.sched {
            span.cause = Some(cause::classify(&span));
        }
        println!("{}", live::span_line(&span, self.multi()));
        self.summary.span(&span);
        for r in &mut self.recorders {
            r.record(&span)?;
        }
        self.spans += 1;
        Ok(())
    }

    /// The span a thread has open right now, with what it has so far: the
    /// samples received, and the wait it is in (its stack was captured when
    /// it left the CPU; for a deadlocked loop it is the whole story).
    /// `recent`: keep only the newest samples, for a cheap "what is it doing
    /// now" (symbolizing every sample of a long span takes long enough to
    /// starve the live Python reads of the span itself).
    fn open_span(
        &self,
        tid: u32,
        t: &ThreadState,
        now: u64,
        recent: Option<usize>,
        probes: &Probes,
    ) -> RawSpan {
        // The accounting so far, plus the phase the thread is in now.
        let open = now.saturating_sub(t.phase_since_ns);
        let (mut on, mut off, mut rq) = (t.on_cpu_ns, t.off_cpu_ns, t.runqueue_ns);
        match t.phase {
            PHASE_OFF_CPU => off += open,
            PHASE_RUNQUEUE => rq += open,
            _ => on += open,
        }
        let mut ev = lagtrace_common::SpanEvent {
            iteration: t.iteration,
            start_ns: t.iter_start_ns,
            end_ns: now,
            on_cpu_ns: on,
            off_cpu_ns: off,
            runqueue_ns: rq,
            samples: t.samples,
            samples_dropped: t.samples_dropped,
            ..Default::default()
        };
        ev.header.tgid = t.tgid;
        ev.header.tid = tid;
        let all = self.assembler.open_samples(tid, t.iteration);
        let keep = recent.map_or(all.len(), |n| n.min(all.len()));
        let mut samples = all[all.len() - keep..].to_vec();
        if t.pending_kind != 0
            && t.phase != PHASE_ON_CPU
            && let Some(mut rec) = probes.pending_sample(tid)
            && rec.ts_ns == t.pending_since_ns
        {
            rec.weight_ns = now.saturating_sub(t.pending_since_ns);
            let python = self.python.waiting_stack(tid, t.pending_since_ns);
            samples.push(Sample { rec, python });
        }
        RawSpan {
            event: ev,
            samples,
            samples_capped: 0,
        }
    }

    /// Print a line for each loop that has been stuck for 4, 8, 16…
    /// thresholds, with what it is doing right now.
    pub fn check_stuck(&mut self, threads: &[(u32, ThreadState)], probes: &Probes) {
        let now = WallClock::now_mono_ns();
        for (tid, t) in threads {
            if t.flags & THREAD_IN_ITER == 0 {
                continue;
            }
            let open = now.saturating_sub(t.iter_start_ns);
            let ratio = open / self.threshold_ns.max(1);
            if ratio < 4 {
                continue;
            }
            let level = 63 - ratio.leading_zeros();
            let last = self
                .stuck
                .get(tid)
                .filter(|(it, _)| *it == t.iteration)
                .map(|(_, l)| *l);
            if last.is_some_and(|l| l >= level) {
                continue;
            }
            self.stuck.insert(*tid, (t.iteration, level));
            let raw = self.open_span(*tid, t, now, Some(STUCK_SAMPLES), probes);
            let span = self.build(&raw, true);
            let doing = if t.phase == PHASE_ON_CPU {
                live::hot_frames(&span).map(|(h, _)| format!("in {h}"))
            } else {
                self.sched.then(|| cause::classify(&span))
            };
            let mut line = live::stuck_line(
                &span.thread,
                *tid,
                span.start_unix_ns,
                open,
                self.threshold_ns,
            );
            if let Some(d) = doing {
                line.push_str(&format!("  {d}"));
            }
            println!("{line}");
        }
    }

    /// Spans still open at exit are reported as unfinished, with what they
    /// have so far: a deadlocked loop is the case users need most.
    pub fn flush_open(&mut self, threads: &[(u32, ThreadState)], probes: &Probes) -> Result<()> {
        let now = WallClock::now_mono_ns();
        for (tid, t) in threads {
            if t.flags & THREAD_IN_ITER == 0
                || now.saturating_sub(t.iter_start_ns) < self.threshold_ns
            {
                continue;
            }
            let raw = self.open_span(*tid, t, now, None, probes);
            let span = self.build(&raw, true);
            self.finish_span(span)?;
        }
        Ok(())
    }
}

/// The asyncio task that most samples with Python frames ran in.
fn busiest_task(samples: &[crate::spans::Sample]) -> Option<String> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    for py in samples.iter().filter_map(|s| s.python.as_ref()) {
        if let Some(task) = task_of(py) {
            *counts.entry(task).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(t, _)| t)
}

/// Keep each thread's latest histogram, and let the kernel forget threads
/// that have exited (their last snapshot stays in the summary).
pub(super) fn snapshot(p: &mut Pipeline, probes: &mut Probes, threads: &[(u32, ThreadState)]) {
    for (tid, t) in threads {
        if !p.targets.iter().any(|x| x.pid == t.tgid) {
            continue;
        }
        let name = p.names.get(t.tgid, *tid, &[]);
        p.summary.name(*tid, name);
        p.summary.snapshot(*tid, t);
        let gone = !std::path::Path::new(&format!("/proc/{}/task/{tid}", t.tgid)).exists();
        if gone && t.flags & THREAD_IN_ITER == 0 {
            probes.forget_thread(*tid);
        }
    }
}
