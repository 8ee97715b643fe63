//! A second witness for span boundaries, independent of lagtrace: the
//! kernel's own ftrace records of every thread's epoll and futex calls,
//! taken in a tracefs instance of the test's own while lagtrace traces.
//!
//! A span is the time from the wait's return that began a loop iteration
//! to the loop's next wait (an epoll call; a futex park for a tokio
//! worker). The target's clock reads around its stall lie inside that
//! iteration, so they only bound a span from below; the loop's own work
//! around the stall (an interpreter's bookkeeping, a hypervisor's pause)
//! is in the span and outside them. These records say where the waits are.
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use lagtrace::clock::WallClock;
use lagtrace::probes::tracefs::{TRACEFS, ensure_mounted};

const WAIT_CALLS: [&str; 4] = ["epoll_wait", "epoll_pwait", "epoll_pwait2", "futex"];

/// Per-CPU buffer of the instance: a test host's epoll calls over a
/// scenario fit many times over.
const BUFFER_KB: &str = "4096";

/// One boundary of a thread's wait call: `Enter` or `Exit` at a
/// CLOCK_MONOTONIC ns (the clock of `bpf_ktime_get_ns`), and whether the
/// call is an epoll wait (else a futex).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    Enter(u64, bool),
    Exit(u64, bool),
}

impl Boundary {
    fn ns(&self) -> u64 {
        match *self {
            Boundary::Enter(t, _) | Boundary::Exit(t, _) => t,
        }
    }
}

/// A loop iteration as the epoll records bound it, in wall-clock ns.
#[derive(Debug, Clone, Copy)]
pub struct Iteration {
    /// The epoll return that began it.
    pub began: u64,
    /// The next epoll call: the end of the iteration.
    pub ended: u64,
}

/// A recording in progress; [`Recording::finish`] stops it. The instance
/// is removed on drop.
pub struct Recording {
    dir: PathBuf,
    enabled: Vec<PathBuf>,
    since_mono_ns: u64,
    attached_mono_ns: Option<u64>,
}

/// What a finished recording saw: `(tid, boundary)` in time order, the
/// offset from CLOCK_MONOTONIC to wall-clock ns, and when it began.
#[derive(Debug)]
pub struct Witness {
    records: Vec<(u32, Boundary)>,
    wall: WallClock,
    since_mono_ns: u64,
    /// When the harness saw lagtrace's start line (see
    /// [`Recording::mark_attached`]).
    attached_mono_ns: Option<u64>,
}

impl Recording {
    /// Start recording every thread's epoll and futex calls, or say why not.
    ///
    /// Start it before lagtrace attaches: adding a probe to a tracepoint
    /// that has one changes how the kernel calls them, and that change is
    /// then lagtrace's attach, not a moment inside the traced scenario.
    pub fn start() -> Result<Self, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        ensure_mounted().map_err(|e| format!("mounting tracefs: {e}"))?;
        let instances = PathBuf::from(TRACEFS).join("instances");
        if !instances.is_dir() {
            return Err(format!("{} is missing", instances.display()));
        }
        let name = format!(
            "lagtrace-witness-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = instances.join(name);
        fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut rec = Recording {
            dir,
            enabled: Vec::new(),
            since_mono_ns: 0,
            attached_mono_ns: None,
        };
        rec.write("buffer_size_kb", BUFFER_KB)?;
        rec.write("trace_clock", "mono")?;
        for call in WAIT_CALLS {
            for phase in ["enter", "exit"] {
                let ev = rec.dir.join(format!("events/syscalls/sys_{phase}_{call}"));
                if ev.is_dir() {
                    fs::write(ev.join("enable"), "1")
                        .map_err(|e| format!("enabling {}: {e}", ev.display()))?;
                    rec.enabled.push(ev);
                }
            }
        }
        if rec.enabled.is_empty() {
            return Err("the kernel has no syscalls:sys_*_epoll_*/futex tracepoints".into());
        }
        rec.write("tracing_on", "1")?;
        rec.since_mono_ns = WallClock::now_mono_ns();
        Ok(rec)
    }

    /// [`Recording::start`], or None after a NOTE saying why not (the
    /// tests then keep the truth bar).
    pub fn start_or_note() -> Option<Self> {
        Self::start()
            .map_err(|why| eprintln!("NOTE no epoll witness: {why}"))
            .ok()
    }

    /// [`Recording::finish`], or None after a NOTE saying why not.
    pub fn finish_or_note(self) -> Option<Witness> {
        self.finish()
            .map_err(|why| eprintln!("NOTE no epoll witness: {why}"))
            .ok()
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.dir.join(file), value)
            .map_err(|e| format!("writing {value} to {}/{file}: {e}", self.dir.display()))
    }

    /// Stop and read the records, or say why they are not whole.
    pub fn finish(self) -> Result<Witness, String> {
        self.write("tracing_on", "0")?;
        let text = fs::read_to_string(self.dir.join("trace"))
            .map_err(|e| format!("reading the trace: {e}"))?;
        let lost = self.overruns();
        if lost > 0 {
            return Err(format!("the ring buffer overran by {lost} events"));
        }
        Ok(Witness {
            records: text.lines().filter_map(parse_line).collect(),
            wall: WallClock::measure(),
            since_mono_ns: self.since_mono_ns,
            attached_mono_ns: self.attached_mono_ns,
        })
    }

    /// lagtrace printed its start line: it has armed its programs and
    /// looked for threads asleep in their wait, which it watches from
    /// their next switch onto a CPU.
    pub fn mark_attached(&mut self) {
        self.attached_mono_ns = Some(WallClock::now_mono_ns());
    }

    fn overruns(&self) -> u64 {
        let Ok(cpus) = fs::read_dir(self.dir.join("per_cpu")) else {
            return 0;
        };
        cpus.flatten()
            .filter_map(|cpu| fs::read_to_string(cpu.path().join("stats")).ok())
            .flat_map(|stats| {
                stats
                    .lines()
                    .filter_map(|l| l.strip_prefix("overrun: ")?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        for ev in &self.enabled {
            let _ = fs::write(ev.join("enable"), "0");
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Witness {
    /// When recording began, in wall-clock ns: a span that began earlier
    /// has no witnessed start.
    pub fn since(&self) -> u64 {
        self.wall.to_unix_ns(self.since_mono_ns)
    }

    /// Whether `tid` made any wait call while recording.
    pub fn saw(&self, tid: u32) -> bool {
        self.records.iter().any(|(t, _)| *t == tid)
    }

    /// `tid`'s boundaries from `from` to `to` (wall-clock ns, inclusive), in
    /// monotonic ns.
    fn of(&self, tid: u32, from: u64, to: u64) -> impl Iterator<Item = Boundary> + '_ {
        let lo = from.saturating_sub(self.offset_ns());
        let hi = to.saturating_sub(self.offset_ns());
        self.records
            .iter()
            .filter(move |(t, b)| *t == tid && (lo..=hi).contains(&b.ns()))
            .map(|(_, b)| *b)
    }

    /// Whether `tid` returned from a wait within `tol` of `at`.
    pub fn returned_near(&self, tid: u32, at: u64, tol: u64) -> bool {
        self.of(tid, at.saturating_sub(tol), at + tol)
            .any(|b| matches!(b, Boundary::Exit(..)))
    }

    /// Whether `tid` entered a wait within `tol` of `at`, or was inside an
    /// epoll call at `at` (entered before, returned after, or not yet).
    pub fn waiting_near(&self, tid: u32, at: u64, tol: u64) -> bool {
        if self
            .of(tid, at.saturating_sub(tol), at + tol)
            .any(|b| matches!(b, Boundary::Enter(..)))
        {
            return true;
        }
        let mono = at.saturating_sub(self.offset_ns());
        let last = self
            .records
            .iter()
            .filter(|(t, b)| *t == tid && b.ns() <= mono)
            .map(|(_, b)| *b)
            .next_back();
        matches!(last, Some(Boundary::Enter(_, true)))
    }

    /// Whether `tid` was, at `at` (wall-clock ns), inside a wait call that
    /// began before lagtrace attached. lagtrace begins the iteration of a
    /// thread it found asleep at attach when the thread next gets a CPU:
    /// inside that call, before its return (ms before it, under emulation).
    pub fn in_a_wait_from_before_attach(&self, tid: u32, at: u64) -> bool {
        let Some(attached) = self.attached_mono_ns else {
            return false;
        };
        let mono = at.saturating_sub(self.offset_ns());
        let mut of_tid = self.records.iter().filter(|(t, _)| *t == tid);
        let last = of_tid
            .clone()
            .filter(|(_, b)| b.ns() <= mono)
            .map(|(_, b)| *b)
            .next_back();
        match last {
            Some(Boundary::Enter(began, _)) => began <= attached,
            // No record before: the call began before the recording, if
            // the thread's next record is its return.
            None => matches!(
                of_tid.find(|(_, b)| b.ns() > mono).map(|(_, b)| *b),
                Some(Boundary::Exit(..))
            ),
            Some(Boundary::Exit(..)) => false,
        }
    }

    /// `tid`'s epoll returns from `from` to `to` (wall-clock ns). A return
    /// inside a span is an iteration boundary the span ran over; an entry
    /// alone is not, as a span may end inside that call (see
    /// [`Witness::waiting_near`]).
    pub fn epoll_returns(&self, tid: u32, from: u64, to: u64) -> usize {
        self.of(tid, from, to)
            .filter(|b| matches!(b, Boundary::Exit(_, true)))
            .count()
    }

    /// The epoll-bounded iteration of `tid` that began within `slack_ns` of
    /// `start_unix_ns`, if it began at an epoll return.
    pub fn iteration(&self, tid: u32, start_unix_ns: u64, slack_ns: u64) -> Option<Iteration> {
        let lo = start_unix_ns.saturating_sub(slack_ns);
        let began = self
            .of(tid, lo, start_unix_ns + slack_ns)
            .filter_map(|b| match b {
                Boundary::Exit(t, true) => Some(t + self.offset_ns()),
                _ => None,
            })
            .min_by_key(|t| t.abs_diff(start_unix_ns))?;
        let ended = self.of(tid, began + 1, u64::MAX).find_map(|b| match b {
            Boundary::Enter(t, true) => Some(t + self.offset_ns()),
            _ => None,
        })?;
        Some(Iteration { began, ended })
    }

    /// `tid`'s records from `from` to `to` (wall-clock ns), as text in ms
    /// relative to `origin`, for a failure message.
    pub fn around(&self, tid: u32, from: u64, to: u64, origin: u64) -> String {
        let lo = origin.saturating_sub(self.offset_ns()) as f64;
        self.of(tid, from, to)
            .map(|b| {
                let (what, t, epoll) = match b {
                    Boundary::Enter(t, e) => ("enter", t, e),
                    Boundary::Exit(t, e) => ("exit", t, e),
                };
                let call = if epoll { "epoll" } else { "futex" };
                format!("{call} {what} {:+.3}", (t as f64 - lo) / 1e6)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many records of any thread lie from `from` to `to` (wall-clock
    /// ns): none at all in a span's window means the recording, not the
    /// thread, was silent there.
    pub fn records_between(&self, from: u64, to: u64) -> usize {
        let lo = from.saturating_sub(self.offset_ns());
        let hi = to.saturating_sub(self.offset_ns());
        self.records
            .iter()
            .filter(|(_, b)| (lo..=hi).contains(&b.ns()))
            .count()
    }

    fn offset_ns(&self) -> u64 {
        self.wall.to_unix_ns(0)
    }
}

/// `node-123 [001] ..... 23806.878257: sys_epoll_pwait(epfd: 0xe, ...)` is
/// `tid` 123's entry into an epoll wait, `...: sys_epoll_pwait -> 0x1` its
/// exit; `sys_futex` lines are futex calls.
pub fn parse_line(line: &str) -> Option<(u32, Boundary)> {
    if line.starts_with('#') {
        return None;
    }
    let (task, rest) = line.split_once(" [")?;
    let tid = task.trim_end().rsplit_once('-')?.1.parse().ok()?;
    let (head, event) = rest.split_once(": sys_")?;
    let (s, us) = head.rsplit(' ').next()?.split_once('.')?;
    let ns = s.parse::<u64>().ok()? * 1_000_000_000 + us.parse::<u64>().ok()? * 1_000;
    let epoll = event.starts_with("epoll_");
    if !epoll && !event.starts_with("futex") {
        return None;
    }
    if event.contains(" -> ") {
        Some((tid, Boundary::Exit(ns, epoll)))
    } else if event.contains('(') {
        Some((tid, Boundary::Enter(ns, epoll)))
    } else {
        None
    }
}
