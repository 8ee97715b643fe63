//! One tracing session, from attach to summary: the pipeline in motion.
//!
//! probes (kernel) → events (ring buffer) → span assembly → symbolization →
//! aggregation → outputs. Everything here runs on one tokio task, so no
//! state is shared between threads.
use std::{collections::HashMap, path::PathBuf, time::Duration};

use aya::maps::{MapData, RingBuf};
use lagtrace_common::{THREAD_IN_ITER, ThreadState};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::summary::SummaryBuilder,
    cli::Args,
    clock::WallClock,
    error::{Error, Result},
    events::{Event, decode},
    output::{self, Recorder, TraceInfo, live},
    probes::{Counters, ProbeOptions, Probes},
    spans::{Assembler, RawSpan, Span, cause},
    symbolize::{
        StackSymbolizer,
        python::{is_python, task_of},
        python_live::LivePython,
    },
    target::{Target, ThreadNames, check_privileges},
};

/// How the session ended and what it found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub spans: u64,
    /// Targets that exited during the trace.
    pub exited: Vec<u32>,
    /// Targets in which no thread ever returned from an epoll wait.
    pub idle: Vec<u32>,
    pub files: Vec<PathBuf>,
    pub counters: Counters,
}

const TICK: Duration = Duration::from_millis(100);
/// How often threads waiting off the CPU get their Python stacks read.
const PY_TICK: Duration = Duration::from_millis(10);
/// Thread snapshots (histograms) are read every this many ticks.
const SNAPSHOT_TICKS: u32 = 10;

struct Pipeline {
    targets: Vec<Target>,
    clock: WallClock,
    threshold_ns: u64,
    /// Scheduler accounting is on, so spans can be classified.
    sched: bool,
    assembler: Assembler,
    symbolizer: StackSymbolizer,
    python: LivePython,
    names: ThreadNames,
    summary: SummaryBuilder,
    recorders: Vec<Box<dyn Recorder>>,
    /// Highest "still blocked" level printed per (tid, iteration).
    stuck: HashMap<u32, (u64, u32)>,
    spans: u64,
}

impl Pipeline {
    fn multi(&self) -> bool {
        self.targets.len() > 1
    }

    fn target(&self, pid: u32) -> Option<&Target> {
        self.targets.iter().find(|t| t.pid == pid)
    }

    /// Drain the ring buffer: decode, assemble, and finish spans.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, probes: &Probes) -> Result<()> {
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => {
                    let python = match &event {
                        Event::Samples(b) => {
                            let stacks = self.python.on_batch(b, &|tid| probes.thread(tid));
                            Some((b.tid, b.iteration, stacks))
                        }
                        Event::Span(_) => None,
                    };
                    if let Some((tid, iteration, stacks)) = python {
                        self.assembler.push(event);
                        for (ts, stack) in stacks {
                            self.assembler.attach_python(tid, iteration, ts, stack);
                        }
                    } else if let Some(raw) = self.assembler.push(event) {
                        let span = self.build(&raw, false, probes);
                        self.finish_span(span)?;
                    }
                }
                Err(e) => log::warn!("dropped a malformed kernel record: {e}"),
            }
        }
        Ok(())
    }

    fn build(&mut self, raw: &RawSpan, unfinished: bool, probes: &Probes) -> Span {
        let ev = &raw.event;
        let pid = ev.header.tgid;
        let tid = ev.header.tid;
        let stacks = self
            .symbolizer
            .stacks(pid, &raw.samples, &|id| probes.stack(id));
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

    /// Print a line for each loop that has been stuck for 4, 8, 16… thresholds.
    fn check_stuck(&mut self, threads: &[(u32, ThreadState)]) {
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
            let name = self.names.get(t.tgid, *tid, &[]);
            println!(
                "{}",
                live::stuck_line(
                    &name,
                    *tid,
                    self.clock.to_unix_ns(t.iter_start_ns),
                    open,
                    self.threshold_ns
                )
            );
        }
    }

    /// Spans still open at exit are reported as unfinished, with what they
    /// have so far: a deadlocked loop is the case users need most.
    fn flush_open(&mut self, threads: &[(u32, ThreadState)], probes: &Probes) -> Result<()> {
        let now = WallClock::now_mono_ns();
        for (tid, t) in threads {
            if t.flags & THREAD_IN_ITER == 0
                || now.saturating_sub(t.iter_start_ns) < self.threshold_ns
            {
                continue;
            }
            let mut ev = lagtrace_common::SpanEvent {
                iteration: t.iteration,
                start_ns: t.iter_start_ns,
                end_ns: now,
                samples: t.samples,
                samples_dropped: t.samples_dropped,
                ..Default::default()
            };
            ev.header.tgid = t.tgid;
            ev.header.tid = *tid;
            let samples = self.assembler.open_samples(*tid, t.iteration).to_vec();
            let raw = RawSpan {
                event: ev,
                samples,
                samples_capped: 0,
            };
            let span = self.build(&raw, true, probes);
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

/// The weight of one on-CPU sample; off-CPU time is counted in these units.
pub fn period_ns(frequency: u64) -> u64 {
    1_000_000_000u64.checked_div(frequency).unwrap_or(1_000_000)
}

pub async fn run(args: &Args) -> Result<Outcome> {
    check_privileges()?;
    let targets: Vec<Target> = args
        .pids
        .iter()
        .map(|&p| Target::open(p))
        .collect::<Result<_>>()?;
    let threshold_ns = args.threshold.as_nanos() as u64;
    let opts = ProbeOptions {
        threshold_ns,
        frequency: args.frequency,
        sched: !args.no_sched,
    };
    let (mut recorders, default_svg) = output::recorders(args, period_ns(args.frequency))?;
    let mut probes = Probes::load(&opts)?;
    if probes.mounted_tracefs {
        log::info!("mounted tracefs at {}", crate::probes::tracefs::TRACEFS);
    }
    let mut logger = if args.verbose > 0 {
        probes.logger()
    } else {
        None
    };
    let mut python = LivePython::default();
    let mut notes = Vec::new();
    for t in &targets {
        let mut stream_after = 0;
        if is_python(t.pid) {
            match python.reader.attach(t.pid) {
                Ok(version) => {
                    // Read Python frames from a quarter of the threshold on,
                    // so a span's early part has them too.
                    stream_after = threshold_ns / 4;
                    python.add_target(t.pid, stream_after);
                    notes.push(format!("pid {} is Python {version}: Python frames on", t.pid));
                }
                Err(e) => notes.push(format!("pid {} looks like Python but its interpreter cannot be read ({e}): native frames only", t.pid)),
            }
        }
        probes.add_target(t.pid, stream_after)?;
    }
    probes.attach(&opts)?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // the AsyncFd that owns the RingBuf is dropped.
    let mut events = unsafe {
        AsyncFd::register_with_interest(probes.take_events()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| Error::io("polling the ring buffer", e.into()))?;
    let clock = WallClock::measure();
    let started = Instant::now();
    let who: Vec<String> = targets
        .iter()
        .map(|t| format!("pid {} ({})", t.pid, t.comm))
        .collect();
    eprintln!(
        "lagtrace: tracing {}: threshold {}, sampling {}, {}. Ctrl-C to stop.",
        who.join(", "),
        output::fmt_ns(threshold_ns),
        if args.frequency > 0 {
            format!("{} Hz", args.frequency)
        } else {
            "off".into()
        },
        match args.duration {
            Some(d) => format!("for {}", output::fmt_ns(d.as_nanos() as u64)),
            None => "until the target exits".into(),
        }
    );
    for note in &notes {
        eprintln!("lagtrace: {note}");
    }
    log::debug!("attached: {}", probes.attached.join(", "));

    let mut p = Pipeline {
        targets,
        clock,
        threshold_ns,
        sched: !args.no_sched,
        assembler: Assembler::new(),
        symbolizer: StackSymbolizer::new(),
        python,
        names: ThreadNames::default(),
        summary: SummaryBuilder::default(),
        recorders: Vec::new(),
        stuck: HashMap::new(),
        spans: 0,
    };
    std::mem::swap(&mut p.recorders, &mut recorders);
    let mut outcome = Outcome::default();
    let sig = |k| signal(k).map_err(|e| Error::io("installing a signal handler", e));
    let (mut sigint, mut sigterm) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?);
    let deadline = args.duration.map(|d| started + d);
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ticks = 0u32;
    let mut py_tick = interval(PY_TICK);
    py_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let has_python = p.python.any();
    loop {
        tokio::select! {
            _ = py_tick.tick(), if has_python => {
                let threads = probes.threads()?;
                p.python.poll(&threads, &|tid| probes.thread(tid));
            }
            guard = events.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("polling the ring buffer", e))?;
                p.drain(guard.get_inner_mut(), &probes)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                ticks += 1;
                if let Some(l) = logger.as_mut() {
                    l.flush();
                }
                let threads = probes.threads()?;
                p.check_stuck(&threads);
                if ticks.is_multiple_of(SNAPSHOT_TICKS) {
                    snapshot(&mut p, &mut probes, &threads);
                }
                let dead: Vec<u32> = p.targets.iter().filter(|t| !t.alive()).map(|t| t.pid).collect();
                for pid in &dead {
                    if !outcome.exited.contains(pid) {
                        eprintln!("lagtrace: pid {pid} exited");
                        outcome.exited.push(*pid);
                    }
                }
                if outcome.exited.len() == p.targets.len() {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { sleep_until(deadline.unwrap_or(started)).await }, if deadline.is_some() => break,
        }
    }
    let wall_ns = started.elapsed().as_nanos() as u64;
    p.drain(events.get_mut(), &probes)?;
    let threads = probes.threads()?;
    snapshot(&mut p, &mut probes, &threads);
    p.flush_open(&threads, &probes)?;
    outcome.counters = probes.counters()?;
    // Detach everything before writing files: the target runs untraced from here.
    drop(events);
    drop(logger);
    drop(probes);

    let info = TraceInfo {
        pids: p.targets.iter().map(|t| t.pid).collect(),
        comms: p.targets.iter().map(|t| t.comm.clone()).collect(),
        threshold_ns,
        period_ns: period_ns(args.frequency),
    };
    for t in &p.targets {
        let rows = p.summary.build(t.pid, wall_ns);
        if p.summary.has_activity(t.pid) {
            print!(
                "{}",
                output::summary::render(
                    t.pid,
                    &t.comm,
                    wall_ns,
                    &rows,
                    outcome.exited.contains(&t.pid)
                )
            );
            print!(
                "{}",
                output::summary::render_causes(&p.summary.top_causes(t.pid, 5))
            );
        } else {
            outcome.idle.push(t.pid);
        }
    }
    report_health(&outcome.counters);
    let py = p.python.reader.stats;
    if py.reads > 0 {
        eprintln!(
            "lagtrace: python: {} stack reads, {:.1} µs each on average, {} failed, {} torn (dropped)",
            py.reads,
            py.read_ns as f64 / py.reads as f64 / 1e3,
            py.failed,
            py.torn
        );
    } else if p.python.any() {
        eprintln!("lagtrace: python: 0 stack reads (no iteration was long enough to need one)");
    }
    // The default flamegraph is only worth a file when there was a span.
    if default_svg.is_some() && p.spans == 0 {
        p.recorders.pop();
    }
    for r in &mut p.recorders {
        if let Some(path) = r.finish(&info)? {
            outcome.files.push(path);
        }
    }
    outcome.spans = p.spans;
    Ok(outcome)
}

/// Keep each thread's latest histogram, and let the kernel forget threads
/// that have exited (their last snapshot stays in the summary).
fn snapshot(p: &mut Pipeline, probes: &mut Probes, threads: &[(u32, ThreadState)]) {
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

fn report_health(c: &Counters) {
    if c.ringbuf_lost > 0 {
        eprintln!(
            "lagtrace: warning: {} kernel events lost to a full ring buffer",
            c.ringbuf_lost
        );
    }
    if c.samples_dropped > 0 {
        eprintln!(
            "lagtrace: warning: {} samples dropped before their span crossed the threshold (buffer full); lower --frequency",
            c.samples_dropped
        );
    }
    if c.threads_full > 0 {
        eprintln!(
            "lagtrace: warning: {} loop threads not tracked (table full)",
            c.threads_full
        );
    }
    if c.stack_errors > 0 {
        log::info!(
            "{} stack captures failed (stack map full or collision)",
            c.stack_errors
        );
    }
}
