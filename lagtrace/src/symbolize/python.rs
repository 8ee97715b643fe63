//! Python frames of a loop thread, read from the interpreter's own frame
//! state with py-spy (as a library) while a span is open.
//!
//! Reads never stop the target: py-spy runs in non-blocking mode and reads
//! memory with process_vm_readv. A read can tear (the interpreter moved on
//! mid-read); py-spy then fails or returns garbage that the caller rejects
//! by checking that the kernel still shows the same iteration. Such stacks
//! are dropped and counted, never guessed.
//!
//! The target's memory is untrusted: a frame chain can be cyclic (a
//! `previous` pointer set back with ctypes) or absurdly deep, and a process
//! with hundreds of threads makes each full read slow. py-spy bounds its
//! walks at 4096 frames and 4096 threads; on top of that every read here is
//! paid from a budget of lagtrace's own CPU time per process (a share of
//! one CPU; CPU, not wall time, so that a read preempted on a busy host is
//! not charged for the wait), and a read that costs far more than a normal
//! one suspends that process's reads for 20× its cost. A walk that hits the depth bound yields a stack marked
//! truncated, never a loop.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::target::{exe_name, innermost_id};
use py_spy::{Config, PythonSpy, config::LockingStrategy};

pub use crate::spans::PyStack;

/// Read counts, for the summary and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct PyStats {
    pub reads: u64,
    pub failed: u64,
    pub torn: u64,
    pub read_ns: u64,
    /// Reads of the GIL holder only, and those that found another thread
    /// (then a full read follows).
    pub gil_reads: u64,
    pub gil_misses: u64,
    /// Reads that hit py-spy's depth bound (a cyclic or absurdly deep frame
    /// chain): their stack is the truncation marker alone.
    pub truncated: u64,
    /// Reads not made because the process's read budget was spent.
    pub skipped: u64,
}

/// The frame a stack gets when its walk was cut short.
pub const TRUNCATED_FRAME: &str = "[python frames truncated: cyclic or deeper than 4096]";

/// Share of one CPU that Python reads of one process may use, and the
/// burst allowed (a long span's reads may come in a row).
const BUDGET_SHARE: f64 = 0.25;
const BUDGET_BURST: Duration = Duration::from_millis(250);
/// A read slower than this suspends reads of its process for 20× its cost
/// (normal reads cost 16–450 µs).
const SLOW_READ: Duration = Duration::from_millis(5);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A token bucket of read time for one process.
#[derive(Debug)]
struct Budget {
    tokens: Duration,
    at: Instant,
    suspended_until: Option<Instant>,
}

impl Budget {
    fn new() -> Self {
        Self {
            tokens: BUDGET_BURST,
            at: Instant::now(),
            suspended_until: None,
        }
    }

    fn allows(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).mul_f64(BUDGET_SHARE);
        self.tokens = (self.tokens + refill).min(BUDGET_BURST);
        self.at = now;
        self.suspended_until.is_none_or(|t| now >= t) && !self.tokens.is_zero()
    }

    fn spend(&mut self, cost: Duration, now: Instant) {
        self.tokens = self.tokens.saturating_sub(cost);
        if cost > SLOW_READ {
            self.suspended_until = Some(now + cost * 20);
        }
    }
}

/// Two readers per process. Asking the OS whether each thread is running
/// costs most of a full read (about 450 µs against 16 µs measured on
/// CPython 3.12 here), and a thread running Python code holds the GIL
/// anyway, so on-CPU samples read only the GIL holder. Threads waiting off
/// the CPU may have released the GIL: they get the full read.
struct Spies {
    gil: PythonSpy,
    full: PythonSpy,
    /// Before 3.11 a trace carries no OS thread id. A GIL-holder trace can
    /// then be named only while the interpreter is known to have a single
    /// thread: when the last full read, at most `SINGLE_THREAD_TTL` ago,
    /// found exactly one.
    single_thread_since: Option<Instant>,
    budget: Budget,
}

/// How long a full read's "one Python thread" holds for GIL-holder reads.
const SINGLE_THREAD_TTL: std::time::Duration = std::time::Duration::from_millis(500);

pub struct PythonReader {
    spies: HashMap<u32, Spies>,
    pub stats: PyStats,
}

/// True if the process runs CPython: its executable is named python*, or
/// it maps a libpython.
pub fn is_python(pid: u32) -> bool {
    if exe_name(pid).is_some_and(|n| n.starts_with("python")) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("/libpython3"))
}

fn config(gil_only: bool) -> Config {
    Config {
        blocking: LockingStrategy::NonBlocking,
        // A thread blocked in a syscall is exactly what off-CPU spans need.
        include_idle: true,
        collect_thread_names: false,
        gil_only,
        ..Config::default()
    }
}

/// `dir/file.py`: the file and its parent folder, which tells
/// `json/decoder.py` from `app/decoder.py` without a full path.
fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

impl Default for PythonReader {
    fn default() -> Self {
        Self::new()
    }
}

impl PythonReader {
    pub fn new() -> Self {
        Self {
            spies: HashMap::new(),
            stats: PyStats::default(),
        }
    }

    /// Prepare to read a Python process; returns the interpreter version.
    pub fn attach(&mut self, pid: u32) -> Result<String, String> {
        let open = |gil_only| {
            PythonSpy::new(pid as py_spy::Pid, &config(gil_only)).map_err(|e| format!("{e:#}"))
        };
        let (gil, full) = (open(true)?, open(false)?);
        let version = full.version.to_string();
        self.spies.insert(
            pid,
            Spies {
                gil,
                full,
                single_thread_since: None,
                budget: Budget::new(),
            },
        );
        Ok(version)
    }

    /// The Python stack of thread `tid` right now. `running`: the thread is
    /// on the CPU, so the cheap GIL-holder read is tried first.
    pub fn stack(&mut self, pid: u32, tid: u32, running: bool) -> Option<PyStack> {
        if running {
            self.stats.gil_reads += 1;
            if let Some(stack) = self.read(pid, tid, true) {
                return Some(stack);
            }
            self.stats.gil_misses += 1;
        }
        self.read(pid, tid, false)
    }

    fn read(&mut self, pid: u32, tid: u32, gil_only: bool) -> Option<PyStack> {
        let spies = self.spies.get_mut(&pid)?;
        let spy = if gil_only {
            &mut spies.gil
        } else {
            &mut spies.full
        };
        let t0 = Instant::now();
        if !spies.budget.allows(t0) {
            self.stats.skipped += 1;
            return None;
        }
        let cpu0 = thread_cpu();
        let traces = spy.get_stack_traces();
        let single = spies
            .single_thread_since
            .is_some_and(|at| at.elapsed() < SINGLE_THREAD_TTL);
        let wall = t0.elapsed();
        spies
            .budget
            .spend(thread_cpu().saturating_sub(cpu0), t0 + wall);
        self.stats.reads += 1;
        self.stats.read_ns += wall.as_nanos() as u64;
        let traces = match traces {
            Ok(t) => t,
            Err(e) if format!("{e:#}").contains("Max frame recursion depth") => {
                self.stats.truncated += 1;
                return Some(vec![TRUNCATED_FRAME.to_string()].into());
            }
            Err(e) => {
                log::debug!("python stack read of {pid}/{tid} failed: {e:#}");
                self.stats.failed += 1;
                return None;
            }
        };
        // 3.11+ records the OS thread id. Before that the thread can only be
        // named exactly when the process has a single Python thread.
        // The OS thread id is numbered in the target's own PID namespace.
        let ns_tid =
            u64::from(innermost_id(&format!("/proc/{pid}/task/{tid}/status")).unwrap_or(tid));
        if !gil_only {
            let one = traces.len() == 1 && traces[0].os_thread_id.is_none();
            spies.single_thread_since = one.then_some(t0);
        }
        let trace = match traces.iter().find(|t| t.os_thread_id == Some(ns_tid)) {
            Some(t) => t,
            // A GIL-only read returns the GIL holder, which is our thread only
            // if the interpreter has no other thread.
            None if traces.len() == 1
                && traces[0].os_thread_id.is_none()
                && (!gil_only || single) =>
            {
                &traces[0]
            }
            None => return None,
        };
        let frames: Vec<String> = trace
            .frames
            .iter()
            .rev()
            .map(|f| {
                if f.line > 0 {
                    format!("{} ({}:{})", f.name, short_path(&f.filename), f.line)
                } else {
                    format!("{} ({})", f.name, short_path(&f.filename))
                }
            })
            .collect();
        if frames.is_empty() {
            return None;
        }
        Some(frames.into())
    }

    pub fn torn(&mut self) {
        self.stats.torn += 1;
    }
}

/// The running asyncio task of a Python stack: the coroutine that the
/// event loop's `Handle._run` (or the pure-Python `Task.__step`) called.
pub fn task_of(stack: &[String]) -> Option<String> {
    // 3.11 names methods `_run`, 3.12+ by qualified name `Handle._run`.
    let run = stack.iter().rposition(|f| {
        f.contains("_run (asyncio/events.py")
            || f.contains("__step_run_and_handle_result (asyncio/tasks.py")
            || f.contains("__step (asyncio/tasks.py")
    })?;
    let coro = stack.get(run + 1)?;
    Some(coro.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_keep_one_folder() {
        assert_eq!(
            short_path("/usr/lib/python3.11/json/decoder.py"),
            "json/decoder.py"
        );
        assert_eq!(short_path("app.py"), "app.py");
        assert_eq!(short_path("/app.py"), "/app.py");
    }

    #[test]
    fn task_is_the_coroutine_under_the_loop() {
        let s: Vec<String> = [
            "<module> (app/main.py:1)",
            "run_forever (asyncio/base_events.py:607)",
            "_run (asyncio/events.py:80)",
            "decode_response (app/client.py:88)",
            "loads (json/__init__.py:346)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            task_of(&s).as_deref(),
            Some("decode_response (app/client.py:88)")
        );
        assert_eq!(task_of(&s[..2]), None);
    }

    #[test]
    fn reads_own_python_child() {
        // A real CPython: the reader names the function it sleeps in.
        let Ok(mut child) = std::process::Command::new("python3")
            .args([
                "-c",
                "import time\ndef napping_here():\n    time.sleep(30)\nnapping_here()",
            ])
            .spawn()
        else {
            eprintln!("SKIP reads_own_python_child: no python3");
            return;
        };
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let mut r = PythonReader::new();
        let attached = r.attach(pid);
        let stack = attached
            .as_ref()
            .ok()
            .and_then(|_| r.stack(pid, pid, false));
        let _ = child.kill();
        let _ = child.wait();
        if unsafe { libc::geteuid() } != 0 && attached.is_err() {
            eprintln!(
                "SKIP reads_own_python_child: cannot read another process here ({attached:?})"
            );
            return;
        }
        let stack = stack.expect("a stack");
        assert!(
            stack.iter().any(|f| f.starts_with("napping_here (")),
            "{stack:?}"
        );
    }
}
