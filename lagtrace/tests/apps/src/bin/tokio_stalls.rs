//! Target for lagtrace's tests: a real tokio runtime that, on SIGUSR1, blocks
//! one of its workers with known stalls and writes the exact wall-clock window
//! of each stall to `--truth`, so tests can check lagtrace finds blocking spans
//! in tokio apps (not only in asyncio/node loops) and measures them right.
//!
//! Protocol (same as `lagtrace/tests/targets/asyncio_stalls.py`): prints `READY <pid>`
//! once the runtime runs, injects nothing until SIGUSR1, then writes one
//! `{"kind":"stall",...}` line per stall and a final `{"kind":"done"}`, prints
//! `DONE`, and stays healthy until SIGTERM/SIGINT (exit 0).
//!
//!   --flavor current|multi   current_thread runtime on the main thread, or
//!                            multi_thread with 2 workers; thread names are
//!                            tokio's default (comm `tokio-rt-worker` on 1.54)
//!   --block cpu|sleep        spin_cpu (busy loop) or std::thread::sleep inside
//!                            a task's poll: the worker really blocks
//!   --stalls-ms 80,150,300   --gap-ms 250   --label-prefix STR
//!   --saturate SECONDS       no stalls: keep every worker busy with
//!                            well-behaved tasks (none runs > ~50 µs per poll)
//!                            for SECONDS after SIGUSR1, then done
//!
//! Always running: a healthy ticker task (5 ms interval, does nearly nothing).
//! With `--flavor multi` also a heartbeat task counting its ticks; after each
//! stall a line `{"kind":"heartbeat","count":N,"during":LABEL,
//! "source":"timer"|"remote","tids":[..]}` says how many heartbeat ticks ran
//! while the stall blocked its worker, and on which threads.
//!   --heartbeat timer (default)  ticks come from tokio::time::interval(5 ms).
//!       Honest tokio behaviour: when the stall task was woken by a timer (as
//!       here, after --gap-ms), the blocked worker was the one parked on the
//!       I/O+timer driver and the other worker is asleep on a condvar; nobody
//!       polls the driver, so timers (and I/O) stop runtime-wide and count is
//!       often 0 (tokio issue #4730; observed on tokio 1.54).
//!   --heartbeat remote  a plain thread ("hb-pacer") wakes the heartbeat task
//!       every 5 ms through tokio::sync::Notify, as work arriving from outside
//!       the runtime does; that wake-up unparks the free worker, so count is
//!       ~stall/5 ms and tids is the other worker: it kept serving.
//!   --contender  a plain thread ("contender") sleeps 7 ms, then takes a
//!       std Mutex that a task holds for 3 ms of every 5 (spinning): it
//!       waits for the lock on a futex about half the time, and is no
//!       worker. Its ids go to the truth file as `{"kind":"contender",
//!       "tid":N,"contended":K}` when the run is done.

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Current,
    Multi,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Cpu,
    Sleep,
}

impl Block {
    fn name(self) -> &'static str {
        match self {
            Block::Cpu => "cpu",
            Block::Sleep => "sleep",
        }
    }
}

struct Args {
    flavor: Flavor,
    block: Block,
    stalls_ms: Vec<u64>,
    gap_ms: u64,
    truth: PathBuf,
    saturate_s: Option<f64>,
    label_prefix: String,
    heartbeat: Heartbeat,
    contender: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    Timer,
    Remote,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "tokio_stalls: {msg}\nusage: tokio_stalls --truth FILE [--flavor current|multi] \
         [--block cpu|sleep] [--stalls-ms 80,150,300] [--gap-ms 250] \
         [--saturate SECONDS] [--label-prefix STR] [--heartbeat timer|remote] [--contender]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        flavor: Flavor::Current,
        block: Block::Cpu,
        stalls_ms: vec![80, 150, 300],
        gap_ms: 250,
        truth: PathBuf::new(),
        saturate_s: None,
        label_prefix: String::new(),
        heartbeat: Heartbeat::Timer,
        contender: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage(&format!("{key} needs a value")))
        };
        match key.as_str() {
            "--flavor" => {
                args.flavor = match value().as_str() {
                    "current" => Flavor::Current,
                    "multi" => Flavor::Multi,
                    v => usage(&format!("bad --flavor {v:?}")),
                }
            }
            "--block" => {
                args.block = match value().as_str() {
                    "cpu" => Block::Cpu,
                    "sleep" => Block::Sleep,
                    v => usage(&format!("bad --block {v:?}")),
                }
            }
            "--stalls-ms" => {
                args.stalls_ms = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.trim()
                            .parse()
                            .unwrap_or_else(|_| usage(&format!("bad stall {s:?}")))
                    })
                    .collect()
            }
            "--gap-ms" => {
                let v = value();
                args.gap_ms = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --gap-ms {v:?}")))
            }
            "--truth" => args.truth = PathBuf::from(value()),
            "--saturate" => {
                let v = value();
                args.saturate_s = Some(
                    v.parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .unwrap_or_else(|| usage(&format!("bad --saturate {v:?}"))),
                )
            }
            "--label-prefix" => args.label_prefix = value(),
            "--heartbeat" => {
                args.heartbeat = match value().as_str() {
                    "timer" => Heartbeat::Timer,
                    "remote" => Heartbeat::Remote,
                    v => usage(&format!("bad --heartbeat {v:?}")),
                }
            }
            "--contender" => args.contender = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if args.truth.as_os_str().is_empty() {
        usage("--truth is required");
    }
    args
}

/// CLOCK_REALTIME in ns, the clock lagtrace reports spans in.
fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

thread_local! {
    static TID: u32 = gettid();
}

/// Heartbeat ticks, and the threads that ran them since the last `reset`.
#[derive(Default)]
struct Beats {
    count: AtomicU64,
    tids: Mutex<Vec<u32>>,
}

impl Beats {
    fn tick(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        let tid = TID.with(|t| *t);
        let mut tids = self.tids.lock().expect("beats lock");
        if !tids.contains(&tid) {
            tids.push(tid);
        }
    }

    fn reset(&self) -> u64 {
        self.tids.lock().expect("beats lock").clear();
        self.count.load(Ordering::SeqCst)
    }

    fn since(&self, before: u64) -> (u64, Vec<u32>) {
        let count = self.count.load(Ordering::SeqCst) - before;
        let mut tids = self.tids.lock().expect("beats lock").clone();
        tids.sort_unstable();
        (count, tids)
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// JSON-lines truth file; each line goes out in one write(2), so a reader
/// never sees half a line.
#[derive(Clone)]
struct Truth(Arc<Mutex<File>>);

impl Truth {
    fn create(path: &PathBuf) -> std::io::Result<Truth> {
        Ok(Truth(Arc::new(Mutex::new(File::create(path)?))))
    }

    fn write(&self, line: String) {
        let mut f = self.0.lock().expect("truth lock");
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.flush())
            .expect("writing the truth file");
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The CPU stall: busy-spins for `ms` of wall time without a syscall
/// (Instant::now is the vDSO), so the worker stays on-CPU the whole time.
#[inline(never)]
fn spin_cpu(ms: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < deadline {
        for i in 0..100 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

/// The off-CPU stall: a blocking sleep, as a synchronous client library makes.
#[inline(never)]
fn blocking_sleep(ms: u64) -> Duration {
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(ms));
    // Used after the sleep returns, so the sleep is no tail call and this
    // frame stays on the stack, as in a real client library.
    start.elapsed()
}

/// Saturate mode's unit of work: a short spin, well under any threshold.
#[inline(never)]
fn spin_briefly(d: Duration) -> u64 {
    let deadline = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < deadline {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    x
}

struct Stall {
    tid: u32,
    start_ns: u64,
    end_ns: u64,
    beats: u64,
    beat_tids: Vec<u32>,
}

/// Runs inside a task's poll: blocks whichever worker thread polls it.
fn stall_now(block: Block, ms: u64, beats: &Beats) -> Stall {
    let tid = gettid();
    let before = beats.reset();
    let start_ns = realtime_ns();
    match block {
        Block::Cpu => {
            std::hint::black_box(spin_cpu(ms));
        }
        Block::Sleep => {
            std::hint::black_box(blocking_sleep(ms));
        }
    }
    let end_ns = realtime_ns();
    let (beats, beat_tids) = beats.since(before);
    Stall {
        tid,
        start_ns,
        end_ns,
        beats,
        beat_tids,
    }
}

/// The `--contender` thread's tid and how many of its lock takes waited.
static CONTENDER: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

fn finish(truth: &Truth) {
    let tid = CONTENDER.0.load(Ordering::Relaxed);
    if tid != 0 {
        truth.write(format!(
            r#"{{"kind":"contender","tid":{tid},"contended":{}}}"#,
            CONTENDER.1.load(Ordering::Relaxed)
        ));
    }
    truth.write(r#"{"kind":"done"}"#.to_string());
    say("DONE");
}

/// `--contender`: a task holds `lock` for 3 ms of every 5 (spinning, so a
/// worker holds it), and a plain thread takes it every 7 ms; when it is
/// held, the thread waits for it on a futex, as a thread waking a runtime
/// through a contended channel does.
fn start_contender() -> std::io::Result<()> {
    let lock = Arc::new(Mutex::new(0u64));
    let held = lock.clone();
    tokio::spawn(async move {
        loop {
            {
                let mut g = held.lock().expect("contender lock");
                *g = g.wrapping_add(spin_briefly(Duration::from_millis(3)));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    std::thread::Builder::new()
        .name("contender".into())
        .spawn(move || {
            CONTENDER.0.store(u64::from(gettid()), Ordering::Relaxed);
            loop {
                std::thread::sleep(Duration::from_millis(7));
                let mut g = match lock.try_lock() {
                    Ok(g) => g,
                    Err(_) => {
                        CONTENDER.1.fetch_add(1, Ordering::Relaxed);
                        lock.lock().expect("contender lock")
                    }
                };
                *g = g.wrapping_add(1);
            }
        })?;
    Ok(())
}

async fn inject_stalls(args: Arc<Args>, truth: Truth, beats: Arc<Beats>) {
    for (i, &ms) in args.stalls_ms.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        }
        let label = format!("{}{}-{i}-{ms}ms", args.label_prefix, args.block.name());
        let block = args.block;
        let b = beats.clone();
        // A task of its own, so it lands on a worker like any request handler.
        let s = tokio::spawn(async move { stall_now(block, ms, &b) })
            .await
            .expect("stall task");
        truth.write(format!(
            r#"{{"kind":"stall","label":{},"tid":{},"start_ns":{},"end_ns":{}}}"#,
            json_str(&label),
            s.tid,
            s.start_ns,
            s.end_ns
        ));
        if args.flavor == Flavor::Multi {
            let tids: Vec<String> = s.beat_tids.iter().map(u32::to_string).collect();
            truth.write(format!(
                r#"{{"kind":"heartbeat","count":{},"during":{},"source":"{}","tids":[{}]}}"#,
                s.beats,
                json_str(&label),
                match args.heartbeat {
                    Heartbeat::Timer => "timer",
                    Heartbeat::Remote => "remote",
                },
                tids.join(",")
            ));
        }
    }
    finish(&truth);
}

async fn saturate(seconds: f64, truth: Truth) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut spinners = Vec::new();
    for _ in 0..64 {
        spinners.push(tokio::spawn(async move {
            let mut polls = 0u64;
            while Instant::now() < deadline {
                spin_briefly(Duration::from_micros(50));
                tokio::task::yield_now().await;
                polls += 1;
            }
            polls
        }));
    }
    let mut timers = Vec::new();
    for k in 0..8u64 {
        timers.push(tokio::spawn(async move {
            let mut ticks = 0u64;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1 + k)).await;
                ticks += 1;
            }
            ticks
        }));
    }
    let mut polls = 0;
    for h in spinners {
        polls += h.await.expect("spinner");
    }
    let mut ticks = 0;
    for h in timers {
        ticks += h.await.expect("timer");
    }
    truth.write(format!(
        r#"{{"kind":"saturate","seconds":{seconds},"spinner_polls":{polls},"timer_ticks":{ticks}}}"#
    ));
    finish(&truth);
}

async fn run(args: Arc<Args>, truth: Truth) -> std::io::Result<()> {
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    // The healthy background load: wakes every 5 ms, does nearly nothing.
    let (first_tick, ticking) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first_tick = Some(first_tick);
        let mut t = interval(Duration::from_millis(5));
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut n = 0u64;
        loop {
            t.tick().await;
            n = std::hint::black_box(n.wrapping_add(1));
            if let Some(tx) = first_tick.take() {
                let _ = tx.send(());
            }
        }
    });
    let beats = Arc::new(Beats::default());
    if args.flavor == Flavor::Multi {
        let beats = beats.clone();
        match args.heartbeat {
            Heartbeat::Timer => {
                tokio::spawn(async move {
                    let mut t = interval(Duration::from_millis(5));
                    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    loop {
                        t.tick().await;
                        beats.tick();
                    }
                });
            }
            Heartbeat::Remote => {
                let notify = Arc::new(tokio::sync::Notify::new());
                let pacer = notify.clone();
                std::thread::Builder::new()
                    .name("hb-pacer".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(Duration::from_millis(5));
                            pacer.notify_one();
                        }
                    })?;
                tokio::spawn(async move {
                    loop {
                        notify.notified().await;
                        beats.tick();
                    }
                });
            }
        }
    }
    if args.contender {
        start_contender()?;
    }
    let _ = ticking.await;
    say(&format!("READY {}", std::process::id()));

    let mut started = false;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                if !started {
                    started = true;
                    match args.saturate_s {
                        Some(s) => tokio::spawn(saturate(s, truth.clone())),
                        None => tokio::spawn(inject_stalls(args.clone(), truth.clone(), beats.clone())),
                    };
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Arc::new(parse_args());
    let truth = match Truth::create(&args.truth) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tokio_stalls: creating {}: {e}", args.truth.display());
            return ExitCode::from(2);
        }
    };
    let mut builder = match args.flavor {
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
        Flavor::Multi => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = builder.enable_all().build().expect("tokio runtime");
    let result = rt.block_on(run(args, truth));
    // Don't wait for a stall or spinner still running: exit promptly.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_stalls: {e}");
            ExitCode::FAILURE
        }
    }
}
