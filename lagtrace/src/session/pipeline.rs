//! The pipeline's state and its steps: ring-buffer records in, finished
//! spans out to every recorder, plus the live "still blocked" lines and the
//! spans still open at exit.
use std::{collections::HashMap, time::Instant};

use aya::maps::{MapData, RingBuf};
use lagtrace_common::{
    EVENT_SPAN, EVENT_SPAN_EXIT, EventHeader, PHASE_ON_CPU, THREAD_IN_ITER, ThreadState,
};

use super::{flood::SpanBudget, targets::Targets};
use crate::{
    aggregate::summary::SummaryBuilder,
    clock::WallClock,
    error::Result,
    events::{Event, decode},
    output::{Outputs, console::Console, live, sanitize},
    probes::Probes,
    spans::{Assembler, RawSpan, Sample, Span, cause},
    symbolize::StackSymbolizer,
    target::{Target, ThreadNames},
};

/// Newest samples that describe what a stuck loop is doing now.
const STUCK_SAMPLES: usize = 16;
/// Longest a span waits, parked, for the code objects it names.
const PARK_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Most spans parked at once; past it a span is finished as it is.
const MAX_PARKED: usize = 256;

pub(super) struct Pipeline {
    pub targets: Targets,
    pub clock: WallClock,
    pub threshold_ns: u64,
    /// The weight of one on-CPU sample (JSON `weight_ns` of on-CPU stacks).
    pub period_ns: u64,
    /// What counts as the user's code (`--app-prefix`).
    pub blame_rules: crate::spans::blame::Rules,
    /// Scheduler accounting is on, so spans can be classified.
    pub sched: bool,
    pub assembler: Assembler,
    pub symbolizer: StackSymbolizer,
    pub names: ThreadNames,
    pub summary: SummaryBuilder,
    pub outputs: Outputs,
    pub console: Console,
    /// Spans fully processed per second; the rest are only counted.
    pub budget: SpanBudget,
    /// Highest "still blocked" level printed per (tid, iteration).
    pub stuck: HashMap<u32, (u64, u32)>,
    pub spans: u64,
    /// Processes whose samples had PCs in no unwind table (the session
    /// reads their mappings again, rate-limited).
    pub unmapped_pcs: std::collections::HashSet<u32>,
    /// Span records read but not processed at exit (the flood went on).
    pub unread_at_exit: u64,
    /// Processes whose spans arrived before they were adopted (`--children`).
    pub unknown_pids: Vec<(u32, [u8; 16])>,
    /// `--metrics`: fed every finished span.
    pub metrics: Option<crate::output::metrics::Metrics>,
    /// The last `--window` of spans, for SIGUSR1 snapshots.
    pub window: super::snapshot::Window,
    /// Spans waiting for code objects still being read on the reader
    /// thread (whether unfinished, since when): the drain goes on meanwhile.
    pub parked: Vec<(RawSpan, bool, Instant)>,
    /// At exit only: the (tid, iteration) of each span finished since the
    /// thread table was read, which `flush_open` must not report again.
    pub finished_at_exit: Option<Vec<(u32, u64)>>,
}

impl Pipeline {
    pub fn target(&self, pid: u32) -> Option<&Target> {
        self.targets.iter().find(|t| t.pid == pid)
    }

    /// Drain the ring buffer: decode, assemble, and finish spans, for at
    /// most `slice` (checked every few records). Returns true when records
    /// were left for the next turn.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        slice: std::time::Duration,
    ) -> Result<bool> {
        self.retry_parked(false)?;
        let until = Instant::now() + slice;
        let mut n = 0u32;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => {
                    drop(item);
                    self.on_event(event)?;
                }
                Err(e) => log::warn!("dropped a malformed kernel record: {e}"),
            }
            n += 1;
            if n.is_multiple_of(16) && Instant::now() >= until {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// At exit, after the last drain: count what the kernel still sent, for
    /// at most `slice`, without processing it.
    pub fn discard(&mut self, ring: &mut RingBuf<MapData>, slice: std::time::Duration) {
        let until = Instant::now() + slice;
        let mut n = 0u32;
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<EventHeader>() {
                // The kind is the first u32 of every record.
                let kind = u32::from_ne_bytes([item[0], item[1], item[2], item[3]]);
                if kind == EVENT_SPAN || kind == EVENT_SPAN_EXIT {
                    self.unread_at_exit += 1;
                }
            }
            n += 1;
            if n.is_multiple_of(64) && Instant::now() >= until {
                break;
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        // A live sample: its iteration crossed the threshold and is still
        // open, the moment to read which asyncio Task it runs.
        if let Event::Sample(s) = &event
            && !s.buffered()
            && !s.rec.python_frames().is_empty()
        {
            self.symbolizer
                .python
                .look_up_task(s.tgid, s.tid, s.iteration);
        }
        // A PC in no table: the walk fell back to the frame pointer, or
        // could not go on at all.
        if let Event::Sample(s) = &event
            && (s.rec.flags & lagtrace_common::SAMPLE_F_FP_FALLBACK != 0
                || s.rec.user_end == crate::events::StackEnd::NoTable)
        {
            self.unmapped_pcs.insert(s.tgid);
        }
        let Some(raw) = self.assembler.push(event) else {
            return Ok(());
        };
        let ev = &raw.event;
        if self.target(ev.header.tgid).is_none()
            && !self.unknown_pids.iter().any(|(p, _)| *p == ev.header.tgid)
        {
            self.unknown_pids.push((ev.header.tgid, ev.comm));
        }
        if !self.budget.take(Instant::now()) {
            // Over the rate: the summary still counts it, nothing else.
            self.summary.counted_only(
                ev.header.tgid,
                ev.header.tid,
                ev.end_ns.saturating_sub(ev.start_ns),
            );
            return Ok(());
        }
        let t0 = Instant::now();
        // The thread (or the whole process) exited inside the span.
        let unfinished = ev.header.kind == EVENT_SPAN_EXIT;
        self.symbolizer.take_deferred();
        let span = self.build(&raw, unfinished);
        log::debug!(
            "span of {} samples built in {:?}",
            raw.samples.len(),
            t0.elapsed()
        );
        if self.symbolizer.take_deferred() > 0 && self.parked.len() < MAX_PARKED {
            self.parked.push((raw, unfinished, Instant::now()));
            return Ok(());
        }
        self.finish_span(span)
    }

    /// Finish the parked spans whose code objects have been read (the
    /// reader is idle), or that waited [`PARK_MAX`]; `force`: all of them.
    fn retry_parked(&mut self, force: bool) -> Result<()> {
        if self.parked.is_empty()
            || (!force
                && self.symbolizer.reads_in_flight() > 0
                && self.parked.iter().all(|(_, _, t)| t.elapsed() < PARK_MAX))
        {
            return Ok(());
        }
        for (raw, unfinished, since) in std::mem::take(&mut self.parked) {
            self.symbolizer.take_deferred();
            let span = self.build(&raw, unfinished);
            let waiting = self.symbolizer.take_deferred() > 0;
            if waiting && !force && since.elapsed() < PARK_MAX {
                self.parked.push((raw, unfinished, since));
            } else {
                self.finish_span(span)?;
            }
        }
        Ok(())
    }

    /// Processes the kernel reported (loop threads, spans) that are not
    /// targets yet, with their command: children to adopt.
    pub fn seen_pids(&mut self, threads: &[(u32, ThreadState)]) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = std::mem::take(&mut self.unknown_pids)
            .into_iter()
            .map(|(pid, comm)| (pid, comm_str(&comm)))
            .collect();
        for (_, t) in threads {
            if self.target(t.tgid).is_none() && !out.iter().any(|(p, _)| *p == t.tgid) {
                let comm = crate::target::read_comm(t.tgid, None).unwrap_or_else(|| "?".into());
                out.push((t.tgid, comm));
            }
        }
        out
    }

    fn build(&mut self, raw: &RawSpan, unfinished: bool) -> Span {
        let ev = &raw.event;
        let pid = ev.header.tgid;
        let tid = ev.header.tid;
        let mut stacks = self.symbolizer.stacks(pid, &raw.samples, ev.start_ns);
        crate::spans::weigh_on_cpu(&mut stacks, self.period_ns);
        let thread = self.names.get(pid, tid, &ev.comm);
        let target = self.target(pid);
        let mut span = Span {
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
            exited: ev.header.kind == EVENT_SPAN_EXIT,
            cause: None,
            blame: None,
            task: self
                .symbolizer
                .busiest_task(pid, &raw.samples, self.period_ns),
            task_name: None,
            stacks,
            start_mono_ns: ev.start_ns,
            extra: Default::default(),
        };
        let codes: Vec<u64> = raw
            .samples
            .iter()
            .flat_map(|s| s.rec.python_frames().iter().map(|f| f.code))
            .collect();
        let running = self
            .symbolizer
            .python
            .task_name(pid, tid, ev.iteration, ev.end_ns, &codes);
        if let Some(t) = running {
            if span.task.is_none() {
                span.task = self.symbolizer.task_of_coro(pid, &raw.samples, t.coro_code);
            }
            span.task_name = Some(t.name);
        }
        span.blame = crate::spans::culprit::of(&span, &self.blame_rules);
        span
    }

    fn finish_span(&mut self, mut span: Span) -> Result<()> {
        if let Some(done) = self.finished_at_exit.as_mut().filter(|_| !span.unfinished) {
            done.push((span.tid, span.iteration));
        }
        if self.sched {
            span.cause = Some(cause::classify(&span));
        }
        self.summary.span(&span);
        self.outputs.record(&span);
        if let Some(m) = &self.metrics
            && span.is_lag()
        {
            m.span(&span);
        }
        self.window.push(&span);
        self.spans += 1;
        Ok(())
    }

    /// The span a thread has open right now, with what it has so far: the
    /// samples received, and the wait it is in (its stack was captured when
    /// it left the CPU; for a deadlocked loop it is the whole story).
    /// `recent`: keep only the newest samples, for a cheap "what is it doing
    /// now" (symbolizing every sample of a long span on every tick would
    /// cost more than the answer is worth).
    fn open_span(
        &self,
        tid: u32,
        t: &ThreadState,
        now: u64,
        recent: Option<usize>,
        probes: &Probes,
    ) -> RawSpan {
        // The accounting so far, plus the phase the thread is in now.
        let phases = t.phase_times(now);
        let mut ev = lagtrace_common::SpanEvent {
            iteration: t.iteration,
            start_ns: t.iter_start_ns,
            end_ns: now,
            on_cpu_ns: phases.on_cpu_ns,
            off_cpu_ns: phases.off_cpu_ns,
            runqueue_ns: phases.runqueue_ns,
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
            samples.push(Sample { rec });
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
        // Forget threads the kernel no longer tracks: a long attach to a
        // process that churns threads must not grow this.
        self.stuck
            .retain(|tid, _| threads.iter().any(|(t, _)| t == tid));
        self.symbolizer
            .python
            .retain_tasks(|tid| threads.iter().any(|(t, _)| *t == tid));
        for (tid, t) in threads {
            if !t.in_shown_iteration() {
                continue;
            }
            let open = now.saturating_sub(t.iter_start_ns);
            // A span still open: which Task it runs must be read now (an
            // off-CPU wait sends no live sample until it ends). Not before
            // the threshold, so a healthy loop costs no reads of the target.
            if open >= self.threshold_ns {
                self.symbolizer
                    .python
                    .look_up_task(t.tgid, *tid, t.iteration);
            }
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
            if let Some(name) = &span.task_name {
                line.push_str(&format!("  task {name:?}"));
            }
            self.console.line(&sanitize::line(&line));
        }
    }

    /// Spans still open at exit are reported as unfinished, with what they
    /// have so far: a deadlocked loop is the case users need most. `threads`
    /// was read before the last drain; an iteration it shows open whose
    /// span that drain brought in has ended, and is not reported twice.
    pub fn flush_open(&mut self, threads: &[(u32, ThreadState)], probes: &Probes) -> Result<()> {
        // Parked spans get a last chance at their code objects, bounded.
        let until = Instant::now() + std::time::Duration::from_millis(500);
        while !self.parked.is_empty()
            && self.symbolizer.reads_in_flight() > 0
            && Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.retry_parked(true)?;
        let now = WallClock::now_mono_ns();
        let done = self.finished_at_exit.take().unwrap_or_default();
        for (tid, t) in threads {
            if !t.in_shown_iteration()
                || now.saturating_sub(t.iter_start_ns) < self.threshold_ns
                || done.contains(&(*tid, t.iteration))
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

/// A kernel `comm` (NUL-padded) as text.
fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
/// Keep each thread's latest histogram, and let the kernel forget threads
/// that have exited (their last snapshot stays in the summary).
pub(super) fn snapshot(p: &mut Pipeline, probes: &mut Probes, threads: &[(u32, ThreadState)]) {
    for (tid, t) in threads {
        if !p.targets.iter().any(|x| x.pid == t.tgid) {
            continue;
        }
        let gone = !std::path::Path::new(&format!("/proc/{}/task/{tid}", t.tgid)).exists();
        if !t.is_loop_thread() {
            // Not shown (a worker on probation); forgotten once it exits.
            if gone {
                probes.forget_thread(*tid);
            }
            continue;
        }
        let name = p.names.get(t.tgid, *tid, &[]);
        p.summary.name(*tid, name);
        p.summary.snapshot(*tid, t);
        if gone && t.flags & THREAD_IN_ITER == 0 {
            probes.forget_thread(*tid);
            // Its row joins its process's exited threads (bounded churn).
            p.summary.retire(*tid);
        }
    }
    let live: std::collections::HashSet<u32> = threads.iter().map(|(tid, _)| *tid).collect();
    p.summary.sweep(&live);
}
