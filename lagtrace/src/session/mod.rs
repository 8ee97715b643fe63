//! One tracing session, from attach to summary: the pipeline in motion.
//!
//! probes (kernel) → events (ring buffer) → span assembly → symbolization →
//! aggregation → outputs. Everything here runs on one tokio task, so no
//! state is shared between threads. `pipeline.rs` holds the steps,
//! `targets.rs` the traced processes.
mod churn;
mod descendants;
pub mod flood;
mod metrics;
mod pipeline;
mod record;
pub mod select;
mod snapshot;
mod targets;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until},
};

use self::{
    flood::{DRAIN_SLICE, FINAL_DISCARD, FINAL_DRAIN, SpanBudget},
    pipeline::{Pipeline, snapshot},
    targets::Targets,
};
use crate::{
    aggregate::summary::SummaryBuilder,
    cli::Args,
    clock::WallClock,
    error::{Error, Result},
    output::{self, Outputs, TraceInfo, console::Console, sanitize},
    probes::{Counters, ProbeOptions, Probes, SampleClock, tick::Tick},
    spans::Assembler,
    symbolize::StackSymbolizer,
    target::{ThreadNames, check_privileges, model_for},
    unwind::UnwindTables,
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
    /// Outputs that could not be written, with why (already warned about).
    pub failed_outputs: Vec<String>,
    pub counters: Counters,
    /// Processes traced, children included.
    pub traced: usize,
}

const TICK: Duration = Duration::from_millis(100);
/// How often the ring buffer is drained of samples (which do not wake
/// lagtrace, see the kernel's `NO_WAKEUP`), and threads waiting off the CPU
/// get their Python stacks read.
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// The drain tick while no target changes its file mappings (whose windows
/// need the short one, see symbolize/cache.rs): spans wake lagtrace, and
/// each wakeup costs it more than an empty drain does.
const DRAIN_TICK_STABLE: Duration = Duration::from_millis(40);
/// Thread snapshots (histograms) are read every this many ticks.
const SNAPSHOT_TICKS: u32 = 10;

/// What the unwind tables cost at attach (`-v`), and what did not fit.
fn log_tables(tables: &UnwindTables, took: Duration) {
    let s = &tables.stats;
    log::info!(
        "unwind tables: {} files, {} rows ({:.1} MiB of kernel maps), built in {:?}, loaded in {:?}, {:?} in all",
        s.files_loaded,
        s.rows,
        (s.rows * 8) as f64 / (1 << 20) as f64,
        s.build_time,
        s.load_time,
        took
    );
    if s.files_over_budget + s.mappings_dropped + s.procs_dropped > 0 {
        eprintln!(
            "lagtrace: warning: unwind tables full ({} files, {} mappings, {} processes left out): their native stacks fall back to frame pointers",
            s.files_over_budget, s.mappings_dropped, s.procs_dropped
        );
    }
}

/// The environment variable that turns on [`ProbeOptions::fault_skip_switch_in`].
const FAULT_SKIP_SWITCH_IN: &str = "LAGTRACE_FAULT_SKIP_SWITCH_IN";

/// Fault injection: no /proc scan for threads asleep in their wait at
/// attach, as if it read every one as running.
const FAULT_SKIP_PARKED_SCAN: &str = "LAGTRACE_FAULT_SKIP_PARKED_SCAN";

/// Whether the fault-injection variable `name` is set (tests use it to
/// reproduce on demand what the kernel does now and then); said on stderr,
/// so a trace taken with it is never mistaken for a normal one.
fn fault_injection(name: &str) -> bool {
    let on = std::env::var_os(name).is_some();
    if on {
        eprintln!("lagtrace: fault injection on: {name} is set");
    }
    on
}

/// The sampling clock: the CPU clock at `-F N` Hz (0: none); by default
/// the kernel's tick where it can serve, else the clock at
/// [`DEFAULT_FREQUENCY`](crate::cli::DEFAULT_FREQUENCY). `--tick` asks for
/// the tick and fails where it cannot serve.
fn sample_clock(frequency: Option<u64>, tick: bool) -> Result<SampleClock> {
    choose_clock(frequency, tick, crate::probes::tick::probe)
}

/// [`sample_clock`] with the kernel's answer as a parameter.
fn choose_clock(
    frequency: Option<u64>,
    tick: bool,
    probe: impl FnOnce() -> Result<Tick, String>,
) -> Result<SampleClock> {
    match frequency {
        Some(0) => return Ok(SampleClock::Off),
        Some(hz) => return Ok(SampleClock::Clock(hz)),
        None => {}
    }
    match probe() {
        Ok(tick) => {
            log::info!("sampling on the kernel's tick, {} Hz", tick.hz);
            Ok(SampleClock::Tick(tick))
        }
        Err(why) if tick => Err(Error::Unsupported {
            what: format!(
                "--tick: the kernel's tick cannot drive the sampler: {why}; \
                 sample by a CPU clock instead (-F {})",
                crate::cli::DEFAULT_FREQUENCY
            ),
        }),
        Err(why) => {
            log::warn!(
                "sampling by a CPU clock at {} Hz: the kernel's tick cannot drive it: {why}",
                crate::cli::DEFAULT_FREQUENCY
            );
            Ok(SampleClock::Clock(crate::cli::DEFAULT_FREQUENCY))
        }
    }
}

pub fn period_ns(frequency: u64) -> u64 {
    1_000_000_000u64.checked_div(frequency).unwrap_or(1_000_000)
}

pub async fn run(args: &Args) -> Result<Outcome> {
    check_privileges()?;
    // The handlers come first: a Ctrl-C while the probes load or just after
    // the start line must end the trace cleanly (outputs written, temporary
    // files renamed), not kill lagtrace with its files half made.
    let sig = |k| signal(k).map_err(|e| Error::io("installing a signal handler", e));
    let (mut sigint, mut sigterm) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?);
    let mut sighup = sig(SignalKind::hangup())?;
    let mut sigusr1 = sig(SignalKind::user_defined1())?;
    let threshold_ns = args.threshold.as_nanos() as u64;
    let mut selection = select::Selection::new(&args.names, &args.cgroups)?;
    let (mut targets, mut notes) = Targets::open(&args.pids)?;
    let models: Vec<u32> = targets
        .iter()
        .map(|t| model_for(t.pid, args.model))
        .collect();
    let sampling = sample_clock(args.frequency, args.tick)?;
    let hz = sampling.hz();
    let opts = ProbeOptions {
        threshold_ns,
        sampling,
        sched: !args.no_sched,
        children: args.children,
        // Children may be tokio binaries too: attach the futex points then.
        workers: args.children
            || selection.active()
            || models.contains(&lagtrace_common::MODEL_WORKER),
        attach: args.attach,
        select: selection.active(),
        fault_skip_switch_in: fault_injection(FAULT_SKIP_SWITCH_IN),
    };
    let outputs = Outputs::open(
        args,
        targets.first().map_or(std::process::id(), |t| t.pid),
        period_ns(hz),
        targets.len() > 1 || selection.active(),
    )?;
    let mut probes = Probes::load(&opts)?;
    if probes.mounted_tracefs {
        log::info!("mounted tracefs at {}", crate::probes::tracefs::TRACEFS);
    }
    let mut logger = if args.verbose > 0 {
        probes.logger()
    } else {
        None
    };
    let mut symbolizer = StackSymbolizer::new();
    for (t, &model) in targets.iter().zip(&models) {
        notes.extend(targets.enroll(t, model, &mut probes, &mut symbolizer.python)?);
    }
    if args.children {
        notes.extend(targets.adopt_existing(&mut probes, &mut symbolizer.python, args.model));
    }
    // Unwind tables before attaching, so the first samples unwind fully.
    let mut tables = UnwindTables::new();
    let t0 = std::time::Instant::now();
    for t in targets.iter() {
        tables.add_process(t.pid, &mut probes)?;
    }
    log_tables(&tables, t0.elapsed());
    // Processes that match --name/--cgroup now.
    let matching: Vec<(u32, Option<String>)> = selection
        .scan()
        .into_iter()
        .map(|(pid, s)| (pid, Some(s)))
        .collect();
    notes.extend(select::adopt(
        &mut selection,
        matching,
        &mut targets,
        args.max_targets,
        args.model,
        &mut probes,
        &mut symbolizer.python,
        &mut tables,
    ));
    // Parse the targets' symbols now, not while the first span streams.
    for t in targets.iter() {
        symbolizer.warm_up(t.pid);
    }
    let metrics = match args.metrics {
        Some(addr) => {
            let m = output::metrics::Metrics::default();
            let at = output::metrics_http::serve(addr, m.clone()).await?;
            notes.push(format!("metrics at http://{at}/metrics"));
            Some(m)
        }
        None => None,
    };
    probes.attach(&opts)?;
    // The fault leaves the kernel alone to find threads parked before it
    // was armed (tests/attach_modes.rs).
    if !fault_injection(FAULT_SKIP_PARKED_SCAN) {
        for (pid, workers) in probes.target_models() {
            targets::watch_parked(pid, workers, &mut probes)?;
        }
    }
    let (mode, why) = probes.mode.clone().expect("set by attach");
    log::info!("attach: {mode}: {why}");
    if let Some(why) = &probes.walk_refused {
        notes.push(format!(
            "this kernel refused the stack walker ({why}): native stacks by frame pointer only and no Python frames; they need Linux 5.17 or later"
        ));
    }
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // the AsyncFd that owns the RingBuf is dropped.
    let mut events = unsafe {
        AsyncFd::register_with_interest(probes.take_events()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| Error::io("polling the ring buffer", e.into()))?;
    let mut execs = selection
        .active()
        .then(|| probes.take_execs())
        .transpose()?;
    let clock = WallClock::measure();
    let started = Instant::now();
    let mut who: Vec<String> = targets
        .iter()
        .map(|t| format!("pid {} ({})", t.pid, t.describe()))
        .collect();
    if selection.active() {
        who.push(format!("processes matching {}", selection.describe()));
    }
    let console = Console::default();
    let start_line = format!(
        "lagtrace: tracing {}: threshold {}, sampling {}, attach: {mode}, {}. Ctrl-C to stop.",
        who.join(", "),
        output::fmt_ns(threshold_ns),
        sampling.describe(),
        match args.duration {
            Some(d) => format!("for {}", output::fmt_ns(d.as_nanos() as u64)),
            None if selection.active() => "until Ctrl-C or SIGTERM".into(),
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
        period_ns: period_ns(hz),
        blame_rules: crate::spans::blame::Rules {
            app_prefixes: args.app_prefix.clone(),
        },
        sched: !args.no_sched,
        assembler: Assembler::new(),
        symbolizer,
        names: ThreadNames::default(),
        summary: SummaryBuilder::default(),
        outputs,
        console,
        budget: SpanBudget::default(),
        stuck: HashMap::new(),
        spans: 0,
        unmapped_pcs: Default::default(),
        unread_at_exit: 0,
        unknown_pids: Vec::new(),
        metrics,
        window: snapshot::Window::new(args.window),
        parked: Vec::new(),
        finished_at_exit: None,
    };
    p.outputs
        .begin(&record::header(&p.targets, threshold_ns, &sampling));
    let mut outcome = Outcome::default();
    let deadline = args.duration.map(|d| started + d);
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ticks = 0u32;
    let mut drain_tick = interval(DRAIN_TICK);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // `biased`: signals and the deadline are looked at first on every turn,
    // and no branch holds the loop for longer than a drain slice, so a flood
    // of spans cannot delay the end of the trace.
    let mut more = false;
    // Pids that may match --name/--cgroup, to check on the next drain tick.
    let mut selected: Vec<(u32, Option<String>)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigusr1.recv() => {
                // The threads' latest figures, so the snapshot's rows are current.
                if let Ok(threads) = probes.threads() {
                    snapshot(&mut p, &mut probes, &threads);
                }
                let info = TraceInfo {
                    pids: p.targets.iter().map(|t| t.pid).collect(),
                    comms: p.targets.iter().map(|t| t.comm.clone()).collect(),
                    threshold_ns,
                    period_ns: period_ns(hz),
                    // The trace so far; the snapshot takes the window's spans.
                    summary: record::summary(&p, &probes.counters().unwrap_or_default(), &tables.stats, started.elapsed().as_nanos() as u64, &outcome.exited),
                };
                match p.window.write(&snapshot::snapshot_dir(args), info, record::TOP_CAUSES) {
                    Ok(files) => for f in files {
                        eprintln!("lagtrace: snapshot: wrote {}", sanitize::line(&f.display().to_string()));
                    },
                    Err(e) => eprintln!("lagtrace: warning: snapshot not written: {}", sanitize::line(&e.to_string())),
                }
            }
            _ = sighup.recv() => {
                // logrotate moved the files: write to new ones at their paths.
                p.outputs.reopen();
                log::info!("SIGHUP: output files reopened");
            }
            _ = async { sleep_until(deadline.unwrap_or(started)).await }, if deadline.is_some() => break,
            _ = tick.tick() => {
                ticks += 1;
                if let Some(l) = logger.as_mut() {
                    l.flush();
                }
                let threads = probes.threads()?;
                p.check_stuck(&threads, &probes);
                if ticks.is_multiple_of(SNAPSHOT_TICKS) {
                    snapshot(&mut p, &mut probes, &threads);
                    metrics::update(&mut p, &probes, &threads, &selection, &outcome.exited);
                }
                if args.children {
                    let seen = p.seen_pids(&threads);
                    let adopted = p.targets.adopt_children(&mut probes, &mut p.symbolizer.python, args.model, &seen);
                    for note in adopted {
                        eprintln!("lagtrace: {}", sanitize::line(&note));
                    }
                    // A child may be gone (or released from the kernel's
                    // table) by now: its stacks just keep frame pointers.
                    for t in p.targets.iter() {
                        if !tables.knows(t.pid)
                            && let Err(e) = tables.add_process(t.pid, &mut probes)
                        {
                            log::debug!("no unwind table for pid {}: {e}", t.pid);
                        }
                    }
                }
                // Samples with PCs outside every table: a library may have
                // been loaded since.
                for pid in std::mem::take(&mut p.unmapped_pcs) {
                    match tables.maybe_refresh(pid, &mut probes) {
                        Ok(true) => {}
                        Ok(false) => {
                            p.unmapped_pcs.insert(pid);
                        }
                        Err(e) => log::debug!("unwind tables of pid {pid} not refreshed: {e}"),
                    }
                }
                if ticks.is_multiple_of(SNAPSHOT_TICKS) {
                    // Forks without exec stay in their parent's cgroup.
                    selected.extend(selection.cgroup_members().into_iter().map(|(pid, s)| (pid, Some(s))));
                }
                for note in p.targets.check_exec(&mut probes, &mut p.symbolizer.python) {
                    eprintln!("lagtrace: {}", sanitize::line(&note));
                }
                let dead: Vec<u32> = p.targets.iter().filter(|t| !t.alive()).map(|t| t.pid).collect();
                for pid in &dead {
                    if !outcome.exited.contains(pid) {
                        eprintln!("lagtrace: pid {pid} exited");
                        outcome.exited.push(*pid);
                        if p.targets.release(*pid, &mut probes) {
                            tables.release(*pid);
                        }
                    }
                }
                churn::prune(&mut p, &mut outcome.exited);
                if outcome.exited.len() == p.targets.len() && !selection.active() {
                    break;
                }
            }
            _ = drain_tick.tick() => {
                // New programs are enrolled before their loop starts.
                if let Some(ring) = execs.as_mut() {
                    selected.extend(select::drain_execs(ring).into_iter().map(|pid| (pid, None)));
                }
                if !selected.is_empty() {
                    let found = std::mem::take(&mut selected);
                    for note in select::adopt(&mut selection, found, &mut p.targets, args.max_targets, args.model, &mut probes, &mut p.symbolizer.python, &mut tables) {
                        eprintln!("lagtrace: {}", sanitize::line(&note));
                    }
                }
                // Mapping windows stay fine-grained (see symbolize/cache.rs).
                let mut churns = false;
                for pid in p.targets.iter().map(|t| t.pid).collect::<Vec<_>>() {
                    churns |= p.symbolizer.refresh(pid);
                }
                more = p.drain(events.get_mut(), DRAIN_SLICE)?;
                let every = if churns { DRAIN_TICK } else { DRAIN_TICK_STABLE };
                if drain_tick.period() != every {
                    drain_tick = interval_at(Instant::now() + every, every);
                    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                }
            }
            guard = events.readable_mut(), if !more => {
                let mut guard = guard.map_err(|e| Error::io("polling the ring buffer", e))?;
                more = p.drain(guard.get_inner_mut(), DRAIN_SLICE)?;
                if !more {
                    guard.clear_ready();
                }
            }
            _ = std::future::ready(()), if more => {
                more = p.drain(events.get_mut(), DRAIN_SLICE)?;
            }
        }
    }
    let wall_ns = started.elapsed().as_nanos() as u64;
    // Bounded: a target that floods must not hold the exit.
    if p.drain(events.get_mut(), FINAL_DRAIN)? {
        p.discard(events.get_mut(), FINAL_DISCARD);
    }
    let threads = probes.threads()?;
    targets::log_known_threads(&threads);
    // The programs still run: an iteration that ended since that drain sent
    // its span after it. Without a second drain, one that ended before the
    // table was read was in neither (the last stall, when the target stops
    // right after it; seen under emulation).
    p.finished_at_exit = Some(Vec::new());
    if p.drain(events.get_mut(), FINAL_DRAIN)? {
        p.discard(events.get_mut(), FINAL_DISCARD);
    }
    if args.children {
        let seen = p.seen_pids(&threads);
        for note in
            p.targets
                .adopt_children(&mut probes, &mut p.symbolizer.python, args.model, &seen)
        {
            eprintln!("lagtrace: {}", sanitize::line(&note));
        }
    }
    snapshot(&mut p, &mut probes, &threads);
    p.flush_open(&threads, &probes)?;
    outcome.counters = probes.counters()?;
    // Detach everything before writing files: the target runs untraced from here.
    drop(events);
    drop(logger);
    drop(probes);

    // The summary is printed by its recorder, with the files.
    let summary = record::summary(
        &p,
        &outcome.counters,
        &tables.stats,
        wall_ns,
        &outcome.exited,
    );
    outcome.idle = summary
        .processes
        .iter()
        .filter(|s| !s.active)
        .map(|s| s.pid)
        .collect();
    let info = TraceInfo {
        pids: p.targets.iter().map(|t| t.pid).collect(),
        comms: p.targets.iter().map(|t| t.comm.clone()).collect(),
        threshold_ns,
        period_ns: period_ns(hz),
        summary,
    };
    report_health(&outcome.counters);
    report_flood(&p);
    let (codes, stale) = p.symbolizer.python.reads();
    if p.symbolizer.python.any() {
        eprintln!(
            "lagtrace: python: frames read in the kernel at each sample; {codes} code objects read from the targets, {stale} found stale"
        );
    }
    if p.symbolizer.js.reads > 0 {
        let js = &p.symbolizer.js;
        eprintln!(
            "lagtrace: node: JS frames read from V8's frames; {} functions read from the targets, {} found moved or renamed",
            js.reads, js.stale
        );
    }
    outcome.files = p.outputs.finish(&info);
    outcome.failed_outputs = std::mem::take(&mut p.outputs.failed);
    outcome.spans = p.spans;
    outcome.traced = p.targets.len();
    Ok(outcome)
}

/// Warnings about spans and stacks that were counted but not kept whole.
fn report_flood(p: &Pipeline) {
    if p.budget.refused > 0 {
        eprintln!(
            "lagtrace: warning: {} spans came faster than {} per second: they count in the summary but were not printed, symbolized or written; raise --threshold",
            p.budget.refused,
            flood::SPANS_PER_SEC
        );
    }
    if p.unread_at_exit > 0 {
        eprintln!(
            "lagtrace: warning: {} spans still arriving at exit were dropped unread",
            p.unread_at_exit
        );
    }
    if p.summary.causes_overflow > 0 {
        eprintln!(
            "lagtrace: warning: {} spans had causes past the limit of {} distinct causes: counted as \"{}\" in the summary",
            p.summary.causes_overflow,
            crate::aggregate::summary::MAX_CAUSES,
            crate::aggregate::summary::OTHER_CAUSES
        );
    }
    let overflow = p.outputs.overflow();
    if overflow > 0 {
        eprintln!(
            "lagtrace: warning: {overflow} stacks past the limit of {} distinct stacks were added to \"{}\" in the folded file and flame graph",
            crate::aggregate::fold::MAX_STACKS,
            crate::aggregate::fold::OTHER
        );
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
    if c.targets_full > 0 {
        eprintln!(
            "lagtrace: warning: {} forked children were not followed: the table of {} traced processes was full",
            c.targets_full,
            lagtrace_common::MAX_TARGETS
        );
    }
    if c.sched_missed > 0 {
        log::info!(
            "{} scheduler events of loop threads were skipped by the kernel and healed at the thread's next event",
            c.sched_missed
        );
    }
    if c.kernel_stack_errors > 0 || c.no_sample_room > 0 {
        log::info!(
            "{} kernel stack captures failed, {} samples lost for want of kernel sample room",
            c.kernel_stack_errors,
            c.no_sample_room
        );
    }
    log::info!(
        "user stack walks ended: {}",
        crate::events::StackEnd::ALL
            .iter()
            .zip(c.user_ends)
            .filter(|(_, n)| *n > 0)
            .map(|(e, n)| format!("{e:?} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    const TICK: Tick = Tick {
        function: 0xffff_ffff_8100_0000,
        function_off: 8,
        hz: 250,
    };

    #[test]
    fn the_tick_by_default_the_clock_where_it_cannot_serve() {
        let clock = |f, t, p: Result<Tick, String>| choose_clock(f, t, || p);
        assert!(matches!(
            clock(None, false, Ok(TICK)),
            Ok(SampleClock::Tick(_))
        ));
        assert!(matches!(
            clock(None, false, Err("nohz_full".into())),
            Ok(SampleClock::Clock(crate::cli::DEFAULT_FREQUENCY))
        ));
        // -F picks the clock (or nothing) without asking the kernel.
        let asked = |f| choose_clock(f, false, || panic!("-F must not probe the tick"));
        assert!(matches!(asked(Some(99)), Ok(SampleClock::Clock(99))));
        assert!(matches!(asked(Some(0)), Ok(SampleClock::Off)));
        // --tick insists: one line naming why and the remedy.
        let err = clock(None, true, Err("CPUs 1 are nohz_full".into())).unwrap_err();
        let line = err.to_string();
        assert!(
            line.contains("CPUs 1 are nohz_full") && line.contains("-F 499"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
        assert!(matches!(
            clock(None, true, Ok(TICK)),
            Ok(SampleClock::Tick(_))
        ));
    }
}
