//! The asyncio Task a loop thread runs right now, and its name
//! (`Task.get_name()`), read from the target's memory while a span is
//! still open. CPython 3.8–3.13; 3.7's Tasks have no names.
//!
//! How the Task is found, for the C `_asyncio.Task` that both asyncio's
//! loop and uvloop run:
//! - `asyncio.tasks._current_tasks` is `_asyncio`'s own dict of the Task
//!   each loop is stepping (`enter_task`/`leave_task` around every step).
//!   It is reached from the globals of a frame on the thread's stack
//!   (`_current_tasks`, or `tasks` → its dict, or `asyncio` → `tasks`),
//!   once per process, then cached.
//! - A Task in it is this thread's when its coroutine's frame is on this
//!   thread's frame chain (3.11+ finds the thread by its native tid; older
//!   versions have no such field and accept any thread's chain).
//!
//! `TaskObj` is private to Modules/_asynciomodule.c and changes with each
//! version; its offsets below were measured on the pyenv builds of each
//! version (ctypes: where `id(task.get_coro())` sits in the object) and
//! agree with the struct in each version's source (FutureObj_HEAD, then
//! `task_fut_waiter`, `task_coro`, `task_name`, …). `tests/task_names.rs`
//! checks them on every version installed.
//!
//! It must never attach a wrong name: an answer counts only if it was read
//! while the span was open (`read_end_ns` before the span's end), its
//! object's type is `_asyncio.Task`, and the coroutine's code is on the
//! span's sampled Python stacks (see `TaskNames::name`).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    interp::Interpreter,
    mem::Mem,
    pyobj,
    reader::{Pending, Poll, Reader},
    walk::{self, MAX_THREADS_WALKED, Pick},
};
use crate::clock::WallClock;

/// Most distinct globals dicts searched for `_current_tasks` (outermost
/// frames first: asyncio's runner and the main module are there).
const MAX_GLOBALS: usize = 8;
/// After a process where `_current_tasks` was not found, how long before
/// it is searched for again (a search reads up to a few hundred objects).
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Where a coroutine object keeps its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CoroFrame {
    /// `gi_frame`/`cr_frame`, a pointer to a `PyFrameObject` (≤3.10).
    Pointer(u64),
    /// `gi_iframe`, the `_PyInterpreterFrame` inside the object (3.11+).
    Inline(u64),
}

/// What this module reads of one CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TaskLayout {
    /// `offsetof(TaskObj, task_coro)`; `task_name` follows it.
    task_coro: u64,
    coro_frame: CoroFrame,
    /// `f_globals` in a `PyFrameObject` (≤3.10) or `_PyInterpreterFrame`.
    frame_globals: u64,
}

fn task_layout(minor: u32) -> Option<TaskLayout> {
    let (task_coro, coro_frame, frame_globals) = match minor {
        8 => (112, CoroFrame::Pointer(16), 48),
        9 => (152, CoroFrame::Pointer(16), 48),
        10 => (160, CoroFrame::Pointer(16), 48),
        11 => (136, CoroFrame::Inline(80), 8),
        12 => (136, CoroFrame::Inline(72), 24),
        13 => (120, CoroFrame::Inline(72), 24),
        _ => return None,
    };
    Some(TaskLayout {
        task_coro,
        coro_frame,
        frame_globals,
    })
}

/// The Task found running on a thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    /// `get_name()`: the name given, or `Task-N` for an unnamed one.
    pub name: String,
    /// The code object of the Task's coroutine, to match the span's stacks.
    pub coro_code: u64,
}

/// One look-up's answer.
#[derive(Clone, Debug, Default)]
struct Answer {
    /// `_current_tasks`, for the next look-up in this process.
    current_tasks: Option<u64>,
    /// `_current_tasks` was searched for (the thread had frames) and not
    /// found.
    missed: bool,
    task: Option<RunningTask>,
    /// CLOCK_MONOTONIC when the read ended.
    read_end_ns: u64,
}

/// Frame addresses of a thread, innermost first.
fn frame_chain(mem: &Mem, it: &Interpreter, ts: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(mut f) = walk::top_frame(mem, it, ts) else {
        return out;
    };
    let back = u64::from(it.layout.kernel.frame_back);
    for _ in 0..2 * lagtrace_common::MAX_PY_FRAMES {
        if f == 0 || out.contains(&f) {
            break;
        }
        out.push(f);
        match mem.u64(f + back) {
            Ok(b) => f = b,
            Err(_) => break,
        }
    }
    out
}

/// The frame chains to search: the thread's own (3.11+), else every
/// thread's.
fn chains(mem: &Mem, it: &Interpreter, tid: u32) -> Vec<Vec<u64>> {
    if it.layout.native_thread_id.is_some() {
        return walk::thread_state(mem, it, Pick::NativeTid(u64::from(tid)))
            .map(|ts| vec![frame_chain(mem, it, ts)])
            .unwrap_or_default();
    }
    let o = &it.layout.kernel;
    let mut out = Vec::new();
    let Ok(interp) = mem.u64(it.interp_head_addr()) else {
        return out;
    };
    let mut ts = mem
        .u64(interp + u64::from(o.interp_tstate_head))
        .unwrap_or(0);
    for _ in 0..MAX_THREADS_WALKED {
        if ts == 0 {
            break;
        }
        out.push(frame_chain(mem, it, ts));
        ts = mem.u64(ts + u64::from(o.tstate_next)).unwrap_or(0);
    }
    out
}

/// `asyncio.tasks._current_tasks`, from the globals of the frames given
/// (outermost first, each distinct globals dict once).
fn find_current_tasks(mem: &Mem, it: &Interpreter, l: &TaskLayout, frames: &[u64]) -> Option<u64> {
    let (minor, code) = (it.layout.minor, &it.layout.code);
    let get = |dict, key| pyobj::dict_get(mem, code, minor, dict, key);
    let mut seen = Vec::new();
    for &f in frames.iter().rev() {
        let Ok(globals) = mem.u64(f + l.frame_globals) else {
            continue;
        };
        if globals == 0 || seen.contains(&globals) {
            continue;
        }
        if seen.len() == MAX_GLOBALS {
            break;
        }
        seen.push(globals);
        let tasks_dict = |g| get(g, "tasks").and_then(|m| pyobj::module_dict(mem, m));
        let found = get(globals, "_current_tasks")
            .or_else(|| tasks_dict(globals).and_then(|d| get(d, "_current_tasks")))
            .or_else(|| {
                let asyncio = get(globals, "asyncio").and_then(|m| pyobj::module_dict(mem, m))?;
                get(tasks_dict(asyncio)?, "_current_tasks")
            });
        if let Some(d) = found.filter(|&d| pyobj::is_type(mem, d, "dict")) {
            return Some(d);
        }
    }
    None
}

/// `task_name`: a `str`, or an int counter that `get_name()` formats as
/// `Task-N`.
fn task_name(mem: &Mem, it: &Interpreter, obj: u64) -> Option<String> {
    if pyobj::is_type(mem, obj, "str") {
        return super::code::read_str(mem, &it.layout.code, obj).ok();
    }
    pyobj::small_int(mem, it.layout.minor, obj).map(|n| format!("Task-{n}"))
}

/// The Task running on thread `tid` now, with `current_tasks` as cached.
fn look_up(mem: &Mem, it: &Interpreter, tid: u32, cached: Option<u64>) -> Answer {
    let t0 = Instant::now();
    let mut answer = Answer::default();
    if let Some(l) = task_layout(it.layout.minor) {
        let chains = chains(mem, it, tid);
        let current = cached
            .filter(|&d| pyobj::is_type(mem, d, "dict"))
            .or_else(|| {
                chains
                    .iter()
                    .find_map(|c| find_current_tasks(mem, it, &l, c))
            });
        answer.current_tasks = current;
        answer.missed = current.is_none() && chains.iter().any(|c| !c.is_empty());
        answer.task = current.and_then(|d| running(mem, it, &l, d, &chains));
    }
    answer.read_end_ns = WallClock::now_mono_ns();
    log::debug!(
        "asyncio Task of {}/{tid}: {:?} in {:?}",
        it.pid,
        answer.task.as_ref().map(|t| &t.name),
        t0.elapsed()
    );
    answer
}

fn running(
    mem: &Mem,
    it: &Interpreter,
    l: &TaskLayout,
    current_tasks: u64,
    chains: &[Vec<u64>],
) -> Option<RunningTask> {
    let entries = pyobj::dict_entries(mem, it.layout.minor, current_tasks).ok()?;
    for (_, task) in entries {
        if !pyobj::is_type(mem, task, "_asyncio.Task") {
            continue;
        }
        let Ok([coro, name]) = mem.array::<16>(task + l.task_coro).map(|b| {
            [0, 8].map(|i| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default()))
        }) else {
            continue;
        };
        let frame = match l.coro_frame {
            CoroFrame::Pointer(at) => mem.u64(coro + at).unwrap_or(0),
            CoroFrame::Inline(at) => coro + at,
        };
        if coro == 0 || frame == 0 || !chains.iter().any(|c| c.contains(&frame)) {
            continue;
        }
        let Ok(coro_code) = mem.u64(frame + u64::from(it.layout.kernel.frame_code)) else {
            continue;
        };
        return task_name(mem, it, name).map(|name| RunningTask { name, coro_code });
    }
    None
}

enum State {
    Waiting(Pending<Answer>),
    Done(Answer),
}

/// Look-ups per loop thread: at most one per iteration, the last kept.
#[derive(Default)]
pub struct TaskNames {
    by_tid: HashMap<u32, (u64, State)>,
    current_tasks: HashMap<u32, u64>,
    /// Processes where `_current_tasks` was last not found, and when.
    missed: HashMap<u32, Instant>,
}

/// What is known of a span's Task.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A read is still running: the span can wait for it.
    Waiting,
    Known(Option<RunningTask>),
}

impl TaskNames {
    /// Start a look-up of the Task `tid` runs in `iteration`, unless one
    /// was started for that iteration. Runs on the reader thread.
    pub fn start(&mut self, reader: &Reader, it: &Interpreter, tid: u32, iteration: u64) {
        if task_layout(it.layout.minor).is_none()
            || self.by_tid.get(&tid).is_some_and(|(i, _)| *i == iteration)
            || self
                .missed
                .get(&it.pid)
                .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return;
        }
        // The last look-up on this thread, for an iteration that may never
        // have become a span: keep what it found about the process.
        if let Some((_, old)) = self.by_tid.remove(&tid) {
            let old = match old {
                State::Done(a) => Some(a),
                State::Waiting(p) => match p.poll() {
                    Poll::Ready(a) => Some(a),
                    _ => None,
                },
            };
            if let Some(a) = old {
                self.absorb(it.pid, &a);
                if self.missed.contains_key(&it.pid) {
                    return;
                }
            }
        }
        let (it, cached) = (it.clone(), self.current_tasks.get(&it.pid).copied());
        let (now, pending) = reader.run(move || look_up(&Mem { pid: it.pid }, &it, tid, cached));
        let state = match now {
            Poll::Ready(a) => State::Done(a),
            Poll::NotYet => State::Waiting(pending),
            Poll::Lost => State::Done(Answer::default()),
        };
        self.by_tid.insert(tid, (iteration, state));
    }

    /// The Task that ran `tid`'s `iteration`, if a look-up
    /// read it while the span was open (before `end_ns`) and its
    /// coroutine's code is one of `codes` (the span's Python frames).
    pub fn name(
        &mut self,
        pid: u32,
        tid: u32,
        iteration: u64,
        end_ns: u64,
        codes: &[u64],
    ) -> Lookup {
        let Some((i, state)) = self.by_tid.get_mut(&tid) else {
            return Lookup::Known(None);
        };
        if *i != iteration {
            return Lookup::Known(None);
        }
        if let State::Waiting(p) = state {
            match p.poll() {
                Poll::Ready(a) => *state = State::Done(a),
                Poll::NotYet => return Lookup::Waiting,
                Poll::Lost => *state = State::Done(Answer::default()),
            }
        }
        let State::Done(a) = state else {
            return Lookup::Known(None);
        };
        let a = a.clone();
        self.absorb(pid, &a);
        Lookup::Known(
            a.task
                .as_ref()
                .filter(|t| a.read_end_ns <= end_ns && codes.contains(&t.coro_code))
                .cloned(),
        )
    }

    /// Keep what an answer says about its process for the next look-ups.
    fn absorb(&mut self, pid: u32, a: &Answer) {
        if let Some(d) = a.current_tasks {
            self.current_tasks.insert(pid, d);
            self.missed.remove(&pid);
        } else if a.missed {
            self.missed.insert(pid, Instant::now());
        }
    }

    /// Forget threads that are gone and processes no longer traced.
    pub fn retain(&mut self, live_tid: impl Fn(u32) -> bool, live_pid: impl Fn(u32) -> bool) {
        self.by_tid.retain(|tid, _| live_tid(*tid));
        self.current_tasks.retain(|pid, _| live_pid(*pid));
        self.missed.retain(|pid, _| live_pid(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_with_task_names_has_a_layout() {
        assert!(task_layout(7).is_none(), "3.7 Tasks have no names");
        for minor in 8..=13 {
            let l = task_layout(minor).expect("3.8-3.13");
            assert!(matches!(l.coro_frame, CoroFrame::Inline(_)) == (minor >= 11));
        }
    }

    fn answered(read_end_ns: u64) -> TaskNames {
        let mut t = TaskNames::default();
        let answer = Answer {
            current_tasks: Some(0x1000),
            missed: false,
            task: Some(RunningTask {
                name: "checkout-42".into(),
                coro_code: 0xc0de,
            }),
            read_end_ns,
        };
        t.by_tid.insert(7, (3, State::Done(answer)));
        t
    }

    #[test]
    fn a_name_is_kept_only_if_read_while_the_span_was_open_and_its_code_ran() {
        let named = |r| Lookup::Known(Some(r));
        let task = RunningTask {
            name: "checkout-42".into(),
            coro_code: 0xc0de,
        };
        // Read before the span ended, coroutine on the span's stacks.
        assert_eq!(answered(100).name(1, 7, 3, 200, &[1, 0xc0de]), named(task));
        // Read after the span ended: the Task then may be another one.
        assert_eq!(
            answered(300).name(1, 7, 3, 200, &[0xc0de]),
            Lookup::Known(None)
        );
        // The span's stacks never ran that coroutine.
        assert_eq!(
            answered(100).name(1, 7, 3, 200, &[1, 2]),
            Lookup::Known(None)
        );
        // Another iteration, or another thread.
        assert_eq!(
            answered(100).name(1, 7, 4, 200, &[0xc0de]),
            Lookup::Known(None)
        );
        assert_eq!(
            answered(100).name(1, 8, 3, 200, &[0xc0de]),
            Lookup::Known(None)
        );
    }
}
