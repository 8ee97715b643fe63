//! One tracing session, from attach to summary: the pipeline in motion.
//!
//! probes (kernel) → events (ring buffer) → span assembly → symbolization →
//! aggregation → outputs. Everything here runs on one tokio task, so no
//! state is shared between threads. `pipeline.rs` holds the steps,
//! `targets.rs` the traced processes.
mod pipeline;
mod targets;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use self::{
    pipeline::{Pipeline, snapshot},
    targets::{Targets, model_for},
};
use crate::{
    aggregate::summary::SummaryBuilder,
    cli::Args,
    clock::WallClock,
    error::{Error, Result},
    output::{self, TraceInfo, sanitize},
    probes::{Counters, ProbeOptions, Probes},
    spans::Assembler,
    symbolize::{StackSymbolizer, python_live::LivePython},
    target::{ThreadNames, check_privileges},
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
    /// Processes traced, children included.
    pub traced: usize,
}

const TICK: Duration = Duration::from_millis(100);
/// How often the ring buffer is drained of samples (which do not wake
/// lagtrace, see the kernel's `NO_WAKEUP`), and threads waiting off the CPU
/// get their Python stacks read.
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// Thread snapshots (histograms) are read every this many ticks.
const SNAPSHOT_TICKS: u32 = 10;

/// The weight of one on-CPU sample; off-CPU time is counted in these units.
pub fn period_ns(frequency: u64) -> u64 {
    1_000_000_000u64.checked_div(frequency).unwrap_or(1_000_000)
}

pub async fn run(args: &Args) -> Result<Outcome> {
    check_privileges()?;
    let threshold_ns = args.threshold.as_nanos() as u64;
    let targets = Targets::open(&args.pids, threshold_ns)?;
    let models: Vec<u32> = targets
        .iter()
        .map(|t| model_for(t.pid, args.model))
        .collect();
    let opts = ProbeOptions {
        threshold_ns,
        frequency: args.frequency,
        sched: !args.no_sched,
        children: args.children,
        // Children may be tokio binaries too: attach the futex points then.
        workers: args.children || models.contains(&lagtrace_common::MODEL_WORKER),
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
    for (t, &model) in targets.iter().zip(&models) {
        notes.extend(targets.enroll(t, model, &mut probes, &mut python)?);
    }
    // Parse the targets' symbols now, not while the first span streams.
    let mut symbolizer = StackSymbolizer::new();
    for t in targets.iter() {
        symbolizer.warm_up(t.pid);
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
        .map(|t| format!("pid {} ({})", t.pid, t.describe()))
        .collect();
    let start_line = format!(
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
    // Every stderr line with a target string in it (comm, thread, path)
    // leaves through the sanitiser.
    eprintln!("{}", sanitize::line(&start_line));
    for note in &notes {
        eprintln!("lagtrace: {}", sanitize::line(note));
    }
    log::debug!("attached: {}", probes.attached.join(", "));

    let mut p = Pipeline {
        targets,
        clock,
        threshold_ns,
        sched: !args.no_sched,
        assembler: Assembler::new(),
        symbolizer,
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
    let mut drain_tick = interval(DRAIN_TICK);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let has_python = p.python.any();
    loop {
        tokio::select! {
            _ = drain_tick.tick() => {
                for pid in p.targets.iter().map(|t| t.pid).collect::<Vec<_>>() {
                    p.symbolizer.refresh(pid);
                }
                p.drain(events.get_mut(), &probes)?;
                if has_python {
                    let threads = probes.threads()?;
                    p.python.poll(&threads, &|tid| probes.thread(tid));
                }
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
                p.check_stuck(&threads, &probes);
                if ticks.is_multiple_of(SNAPSHOT_TICKS) {
                    snapshot(&mut p, &mut probes, &threads);
                }
                if args.children {
                    for note in p.targets.adopt_children(&mut probes, &mut p.python, args.model) {
                        eprintln!("lagtrace: {}", sanitize::line(&note));
                    }
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
    for t in p.targets.iter() {
        let rows = p.summary.build(t.pid, wall_ns);
        if p.summary.has_activity(t.pid) {
            print!(
                "{}",
                output::summary::render(
                    t.pid,
                    &t.describe(),
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
            "lagtrace: python: {} stack reads ({} of the GIL holder, {} missed it), {:.1} µs each on average, {} failed, {} torn (dropped)",
            py.reads,
            py.gil_reads,
            py.gil_misses,
            py.read_ns as f64 / py.reads as f64 / 1e3,
            py.failed,
            py.torn
        );
        if py.truncated > 0 || py.skipped > 0 {
            eprintln!(
                "lagtrace: python: {} reads cut short (cyclic or deeper than 4096 frames), {} skipped to stay within the read budget",
                py.truncated, py.skipped
            );
        }
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
    outcome.traced = p.targets.len();
    Ok(outcome)
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
