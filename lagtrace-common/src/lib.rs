//! The one definition of everything that crosses the kernel/userspace boundary.
//!
//! Both `lagtrace-ebpf` (no_std, BPF target) and `lagtrace` (userspace) compile
//! this crate, so a field added here changes both sides at once. Rules that keep
//! the layout honest:
//! - every type is `#[repr(C)]`, with explicit padding fields and `u32` flags in
//!   place of `bool`, so no byte is left undefined;
//! - every ring-buffer record starts with [`EventHeader`], whose `kind` and
//!   `size` let userspace check a record before it decodes it;
//! - nothing here allocates or depends on std.
#![no_std]

pub mod syscalls;

/// Most threads the kernel tracks at once (loop threads of all targets).
pub const MAX_THREADS: u32 = 1024;
/// Most loop threads with kernel sample slots ([`ThreadSamples`]) at once;
/// the slots are preallocated (see `lagtrace-ebpf/src/maps.rs`).
pub const MAX_SAMPLE_THREADS: u32 = 256;
/// Most traced processes (with `--children`, forks add to them).
pub const MAX_TARGETS: u32 = 4096;
/// Sub-buckets per power of two in the iteration histogram (2 bits).
pub const HIST_SUB_BITS: u32 = 2;
/// Buckets in the iteration histogram: 64 powers of two × 4 sub-buckets.
pub const HIST_BUCKETS: usize = 64 << HIST_SUB_BITS;
/// Ring-buffer record kinds.
pub const EVENT_SPAN: u32 = 1;
/// A [`SpanEvent`] closed by the thread's exit (or its whole process's,
/// `kill -9`, `os._exit`) inside the span: it is reported as unfinished.
pub const EVENT_SPAN_EXIT: u32 = 4;
/// An [`ExecEvent`] in the `EXECS` ring buffer (`--name`, `--cgroup`).
pub const EVENT_EXEC: u32 = 5;

/// Sample kinds.
pub const SAMPLE_ON_CPU: u32 = 1;
/// The thread slept (blocked in a syscall, a lock, a page fault).
pub const SAMPLE_OFF_CPU: u32 = 2;
/// The thread was preempted and waited, runnable, for a CPU.
pub const SAMPLE_RUNQUEUE: u32 = 3;
/// The thread was stopped (SIGSTOP, a job-control stop, a debugger): its
/// time counts as off-CPU, its cause is the stop, not the code.
pub const SAMPLE_STOPPED: u32 = 4;

/// `ThreadState::flags` bits.
pub const THREAD_IN_ITER: u32 = 1;
/// The open iteration is past the threshold: its samples stream live.
pub const THREAD_OVER: u32 = 2;
/// A loop thread found asleep in its wait when lagtrace attached (set by
/// userspace): the return of that wait may never reach a program (fexit
/// does not run for a call that was in flight when its trampoline was
/// attached), so the thread's next switch onto a CPU starts its first
/// iteration.
pub const THREAD_WAKE_BEGINS: u32 = 4;

/// Clean iterations a thread first seen in a futex wait must complete
/// before it counts as a runtime worker (`ThreadState::probation`).
///
/// Why: in the worker model any futex wait ends an iteration, and a plain
/// thread of the target that waits for a contended lock (a thread calling
/// `Notify::notify_one`, whose mutex a worker holds) would look like a
/// worker, and its sleeps between lock waits like a blocking span. A worker
/// parks between short bursts of work that do not sleep; such a thread
/// sleeps in every iteration. An iteration that slept restarts the count.
pub const WORKER_PROBATION: u32 = 3;

/// The thread names tokio gives its workers (`tokio-rt-worker`; older
/// tokio's `tokio-runtime-worker`, cut to 15 bytes by the kernel). Such a
/// thread parked in a futex wait with no timeout is a worker from its first
/// wait, with no probation; tokio's blocking-pool threads share the name
/// but park with a keep-alive timeout. The kernel applies this to waits it
/// sees, and userspace to workers already parked when lagtrace attaches.
pub const WORKER_COMM_PREFIX: &[u8] = b"tokio-r";

/// Whether futex operation `op` (private and clock flags included) is a
/// wait: `FUTEX_WAIT` or `FUTEX_WAIT_BITSET`. Other operations (wake,
/// requeue) are not. The kernel and the /proc reader apply the same rule.
#[inline(always)]
pub fn is_futex_wait(op: u64) -> bool {
    const FUTEX_CMD_MASK: u64 = 0x7f;
    const FUTEX_WAIT: u64 = 0;
    const FUTEX_WAIT_BITSET: u64 = 9;
    let cmd = op & FUTEX_CMD_MASK;
    cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET
}

/// Scheduler phase of a thread inside an open iteration.
pub const PHASE_ON_CPU: u32 = 0;
pub const PHASE_OFF_CPU: u32 = 1;
pub const PHASE_RUNQUEUE: u32 = 2;

/// Indices into the `COUNTERS` per-CPU array.
pub const CTR_RINGBUF_LOST: u32 = 0;
/// Kernel stack captures (`bpf_get_stack`) that failed.
pub const CTR_KERNEL_STACK_ERRORS: u32 = 1;
pub const CTR_SAMPLES_DROPPED: u32 = 2;
pub const CTR_THREADS_FULL: u32 = 3;
pub const CTR_SAMPLES: u32 = 4;
pub const CTR_ITERATIONS: u32 = 5;
/// The per-CPU scratch sample or a thread's sample slots were missing.
pub const CTR_NO_SAMPLE_ROOM: u32 = 6;
/// Forked processes not followed: the `TARGETS` map was full.
pub const CTR_TARGETS_FULL: u32 = 7;
/// `CTR_USER_END + k`: user walks that ended with `STACK_END_*` kind `k`.
pub const CTR_USER_END: u32 = 8;
/// Scheduler events of a loop thread inside an iteration that its own
/// later events show were never seen: a switch back onto a CPU (found when
/// the thread runs again while its phase says it is away) or a switch off
/// one (found at a switch-in while its phase says it runs). The accounting
/// heals at that point.
pub const CTR_SCHED_MISSED: u32 = CTR_USER_END + STACK_END_KINDS as u32;
pub const NUM_COUNTERS: u32 = CTR_SCHED_MISSED + 2;

/// `Config::flags` bits.
pub const CFG_SAMPLING: u32 = 1;
pub const CFG_SCHED: u32 = 2;
/// Processes forked by a target become targets too.
pub const CFG_CHILDREN: u32 = 4;
/// Targets are selected by name or cgroup: every exec on the host is sent
/// to userspace as an [`ExecEvent`], which checks it against the selection.
pub const CFG_SELECT: u32 = 8;
/// The epoll waits are hooked only where they return (`--attach exit-tp`):
/// a loop thread that goes to sleep in an epoll wait ends its iteration in
/// `sched_switch`, and a wait that returns without sleeping ends it there.
/// One syscall tracepoint per wait instead of two.
pub const CFG_WAIT_BY_SWITCH: u32 = 16;
/// Fault injection for tests (`LAGTRACE_FAULT_SKIP_SWITCH_IN`): every
/// switch-in of a loop thread inside an iteration is ignored, as when the
/// kernel skips the program, so that the healing of `CTR_SCHED_MISSED` is
/// exercised on every wait instead of now and then.
pub const CFG_FAULT_SKIP_SWITCH_IN: u32 = 32;
/// Set by userspace once every hook is attached; until then no program
/// takes a thread into `THREADS`, so no iteration opens while some of its
/// hooks are missing. Attaching is not atomic. A call in flight keeps the
/// trampoline it entered through, so a worker that parked between the
/// `fentry` and the `fexit` of `do_futex` was known as waiting and its
/// return went unseen: its first stall after attach was lost (1 of 10 in
/// a 6.1 guest). Once armed, a thread the kernel knows entered its wait
/// fully hooked, and one asleep since before is found in /proc
/// (`target::parked`).
pub const CFG_ARMED: u32 = 64;

/// `TargetConfig::model`: where a loop iteration starts and ends.
/// Epoll loops (asyncio, libuv, tokio's driver): at epoll waits only.
pub const MODEL_EPOLL: u32 = 0;
/// Runtime workers that park on futexes (tokio multi-thread): at epoll waits
/// and futex waits, the two ways such a worker goes idle.
pub const MODEL_WORKER: u32 = 1;

/// Run-time settings, written by userspace into the `CONFIG` array at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// An iteration at least this long is a blocking span.
    pub threshold_ns: u64,
    pub flags: u32,
    /// Offsets of fields in the classic sched tracepoints, read from tracefs at
    /// start so that a kernel with another layout still decodes right.
    pub switch_prev_pid_off: u16,
    pub switch_prev_state_off: u16,
    pub switch_next_pid_off: u16,
    pub wakeup_pid_off: u16,
    pub fork_child_off: u16,
    /// Offset of `function` in the `timer:hrtimer_expire_entry` record.
    pub tick_fn_off: u16,
    /// Offsets of `pid` and `__state` (`state` before 5.14) in the kernel's
    /// `task_struct`, from its BTF, for the tp_btf sched programs.
    pub task_pid_off: u32,
    pub task_state_off: u32,
    /// The address of the scheduler tick's hrtimer function
    /// (`tick_sched_timer`, `tick_nohz_handler` from 6.10): the tick
    /// sampler samples on its expiries and ignores every other hrtimer.
    pub tick_fn: u64,
}

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Size of the whole record in bytes.
    pub size: u32,
    pub tgid: u32,
    pub tid: u32,
}

/// A finished blocking span: an iteration at or over the threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanEvent {
    pub header: EventHeader,
    pub iteration: u64,
    /// CLOCK_MONOTONIC ns of the wait return that opened the iteration.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the wait entry that closed it.
    pub end_ns: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
    /// Samples taken in the span, and those lost to a full buffer.
    pub samples: u32,
    pub samples_dropped: u32,
    pub comm: [u8; 16],
}

/// A process that exec'd a new program, while targets are selected by name
/// or cgroup (`CFG_SELECT`). Small on purpose: userspace reads the rest
/// (command line, cgroup) from /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The cgroup v2 id of the process (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// The new program's command name.
    pub comm: [u8; 16],
}

/// A traced process: the value of the `TARGETS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    /// `MODEL_EPOLL` or `MODEL_WORKER`.
    pub model: u32,
    /// Index of the process's mapping table in `UNWIND_PROCS`; 0: none (the
    /// kernel falls back to frame pointers).
    pub unwind_slot: u32,
}

/// Per-thread state of a loop thread, the value of the `THREADS` map.
///
/// Userspace reads it for the histogram and to see iterations that are open
/// right now; only the kernel writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    pub tgid: u32,
    pub flags: u32,
    pub iteration: u64,
    pub iter_start_ns: u64,
    /// Scheduler accounting of the open iteration.
    pub phase: u32,
    /// Samples of the open iteration buffered in `THREAD_SAMPLES` slots.
    pub nbuf: u32,
    pub phase_since_ns: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
    /// Kind of the sample captured when the thread last left the CPU inside
    /// the iteration (its stack is `ThreadSamples::pending`), 0 for none.
    pub pending_kind: u32,
    /// Inside a futex wait that ends the iteration (worker model).
    pub in_futex_wait: u32,
    pub pending_since_ns: u64,
    pub samples: u32,
    pub samples_dropped: u32,
    /// Clean iterations still needed before this thread counts as a loop
    /// thread ([`WORKER_PROBATION`]); 0 for a loop thread. While it is on
    /// probation its iterations are neither counted nor reported.
    pub probation: u32,
    pub _pad0: u32,
    /// Completed iterations and their longest.
    pub iterations: u64,
    pub max_ns: u64,
    pub sum_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

/// On-, off-CPU and runqueue time of an open iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
}

impl ThreadState {
    /// A loop thread: one seen in an epoll wait, or a worker past its
    /// probation. Userspace shows no other thread.
    #[inline(always)]
    pub fn is_loop_thread(&self) -> bool {
        self.probation == 0
    }

    /// Inside an iteration that userspace may show: a loop thread's.
    #[inline(always)]
    pub fn in_shown_iteration(&self) -> bool {
        self.flags & THREAD_IN_ITER != 0 && self.is_loop_thread()
    }

    /// The phase accounting of the open iteration as of `now`: the times
    /// closed so far, plus the time since the last scheduler transition
    /// charged to the phase the thread is in. The one definition: the
    /// kernel closes phases with it ([`ThreadState::close_phase`]) and
    /// userspace reads an iteration still open with it.
    #[inline(always)]
    pub fn phase_times(&self, now: u64) -> PhaseTimes {
        let d = now.saturating_sub(self.phase_since_ns);
        let mut p = PhaseTimes {
            on_cpu_ns: self.on_cpu_ns,
            off_cpu_ns: self.off_cpu_ns,
            runqueue_ns: self.runqueue_ns,
        };
        match self.phase {
            PHASE_OFF_CPU => p.off_cpu_ns += d,
            PHASE_RUNQUEUE => p.runqueue_ns += d,
            _ => p.on_cpu_ns += d,
        }
        p
    }

    /// Add the time since the last scheduler transition to the current
    /// phase, and start timing the next one at `now`.
    #[inline(always)]
    pub fn close_phase(&mut self, now: u64) {
        let p = self.phase_times(now);
        self.on_cpu_ns = p.on_cpu_ns;
        self.off_cpu_ns = p.off_cpu_ns;
        self.runqueue_ns = p.runqueue_ns;
        self.phase_since_ns = now;
    }
}

/// The histogram bucket of a duration: 4 sub-buckets per power of two.
///
/// Written without loops or `leading_zeros` so that the BPF verifier accepts
/// it; userspace uses the same function, so both agree on bucket bounds.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    let mut v = ns;
    let mut log = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        log += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log += 2;
    }
    if v >= 1 << 1 {
        log += 1;
    }
    if log < HIST_SUB_BITS {
        return ns as usize;
    }
    let sub = (ns >> (log - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1);
    ((((log - HIST_SUB_BITS + 1) as u64) << HIST_SUB_BITS) + sub) as usize & (HIST_BUCKETS - 1)
}

/// The smallest duration in bucket `b` (inverse of [`hist_bucket`]).
pub fn hist_bucket_low(b: usize) -> u64 {
    let sub = (b & ((1 << HIST_SUB_BITS) - 1)) as u64;
    let group = (b >> HIST_SUB_BITS) as u32;
    if group == 0 {
        return sub;
    }
    let log = group - 1 + HIST_SUB_BITS;
    (1u64 << log) + (sub << (log - HIST_SUB_BITS))
}

// ---------------------------------------------------------------------------
// The sample record of issues #11 (native unwinding) and #12 (Python frames
// read in the kernel), designed once for both. A sample carries its frames
// as addresses (native) and (code object, instruction offset) pairs
// (Python), written by the kernel at the instant of the sample. No stack
// map id: nothing is deduplicated in a map that can fill.
// ---------------------------------------------------------------------------

/// Deepest native user stack the kernel unwinds.
pub const MAX_USER_FRAMES: usize = 128;
/// Deepest kernel stack kept (`bpf_get_stack`).
pub const MAX_KERNEL_FRAMES: usize = 32;
/// Deepest Python stack walked in the kernel; deeper stacks are truncated
/// (innermost frames kept) and marked `STACK_END_DEPTH`.
pub const MAX_PY_FRAMES: usize = 64;
/// Full samples a thread buffers in the kernel before its iteration crosses
/// the threshold (a power of two, for the mask).
/// At the default 499 Hz this holds 64 ms of samples, more than the 50 ms
/// default threshold. Memory: `size_of::<ThreadSamples>()` per loop thread.
pub const SAMPLE_SLOTS: usize = 32;

/// An on-CPU sample is taken only once its iteration is at least
/// `threshold >> SAMPLE_MIN_AGE_SHIFT` old (1/64 of the threshold: 0.78 ms
/// at the default 50 ms). A healthy loop's iterations are microseconds long,
/// and a sample in one is walked, buffered and dropped unseen: the age check
/// spares that work (a full walk is several µs). A span loses at most its
/// first 1/64 of the threshold to it, so at most 1.6 % of its on-CPU
/// samples. Off-CPU stacks (taken at the switch) are not gated.
pub const SAMPLE_MIN_AGE_SHIFT: u32 = 6;

/// Ring-buffer record kind of a [`SampleEvent`].
pub const EVENT_SAMPLE: u32 = 3;

/// How a stack walk ended (`StackSample::user_end`, `lang_end`).
/// Not walked (no table for the process, or not a Python target).
pub const STACK_END_NONE: u8 = 0;
/// Reached the outermost frame (the thread's start, or a zero return address).
pub const STACK_END_ROOT: u8 = 1;
/// Hit the depth limit: the innermost frames are kept, the rest cut.
pub const STACK_END_DEPTH: u8 = 2;
/// The PC lies in no mapping with an unwind table, and the frame-pointer
/// fallback could not go on.
pub const STACK_END_NO_TABLE: u8 = 3;
/// A read of the target's memory failed.
pub const STACK_END_READ_ERROR: u8 = 4;
/// A cycle or an implausible step (a stack pointer that did not grow).
pub const STACK_END_BAD_FRAME: u8 = 5;
/// Number of `STACK_END_*` values (for per-kind counters).
pub const STACK_END_KINDS: usize = 6;

/// `StackSample::flags` bits.
/// At least one user frame was found through the frame pointer, not a table.
pub const SAMPLE_F_FP_FALLBACK: u32 = 1;
/// The user registers were not available (a kernel thread, or an old kernel
/// without `bpf_task_pt_regs`): `user` comes from `bpf_get_stack`.
pub const SAMPLE_F_KERNEL_FP_WALK: u32 = 2;
/// Sent from the thread's pre-threshold slots when its iteration became
/// long, not live: userspace must not read language frames for it now.
pub const SAMPLE_F_BUFFERED: u32 = 4;
/// Taken in the timer interrupt (the tick sampler): the kernel stack begins
/// with the interrupt's own frames, which userspace cuts off at the
/// interrupt's entry to leave the interrupted code.
pub const SAMPLE_F_IN_IRQ: u32 = 8;

/// One language frame as the kernel sees it: a Python frame or a JS
/// frame of V8, told apart by [`LANG_FRAME_JS`] in `flags`. Each is
/// resolved once per object in userspace (name, file, line).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LangFrameRec {
    /// Python: address of the `PyCodeObject`. JS: the tagged address of the
    /// function's `SharedFunctionInfo`.
    pub code: u64,
    /// Python: instruction offset in bytes from the start of the code's
    /// bytecode (`f_lasti` × 2 before 3.10's units, `prev_instr -
    /// co_code_adaptive` on 3.11+), for the line table. JS: the frame's
    /// bytecode offset slot when it holds a Smi (meaningful for interpreted
    /// frames only), else [`JS_NO_OFFSET`].
    pub instr_offset: u32,
    /// `PY_FRAME_*` / `LANG_FRAME_*` bits; for JS also the native frame
    /// index ([`LANG_NATIVE_SHIFT`]) and the name check ([`LANG_CHECK_SHIFT`]).
    pub flags: u32,
}

/// The record of a Python frame: a [`LangFrameRec`] without
/// [`LANG_FRAME_JS`].
pub type PyFrameRec = LangFrameRec;

/// `LangFrameRec::flags`: a V8 JS frame (else a Python frame).
pub const LANG_FRAME_JS: u32 = 2;
/// JS frames: bits 8..16 of `flags` hold the index in `StackSample::user`
/// of the native frame whose frame pointer the JS frame was read from.
pub const LANG_NATIVE_SHIFT: u32 = 8;
/// JS frames: bits 16..32 of `flags` hold bits 3..19 of the
/// `SharedFunctionInfo`'s `name_or_scope_info` word as read at the sample,
/// so userspace can tell that the object at `code` is still the one that
/// was on the stack (V8's GC moves objects).
pub const LANG_CHECK_SHIFT: u32 = 16;
/// JS frames: no bytecode offset.
pub const JS_NO_OFFSET: u32 = u32::MAX;

/// The name check of a JS frame (see [`LANG_CHECK_SHIFT`]).
#[inline(always)]
pub fn js_name_check(name_or_scope_info: u64) -> u32 {
    ((name_or_scope_info >> 3) & 0xffff) as u32
}

/// One sample taken inside an open iteration, with its frames.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackSample {
    /// CLOCK_MONOTONIC time the sample was taken (for off-CPU: when it left).
    pub ts_ns: u64,
    /// Off-CPU and runqueue samples: how long until the thread ran again.
    pub weight_ns: u64,
    /// One of `SAMPLE_*`.
    pub kind: u32,
    /// `SAMPLE_F_*`.
    pub flags: u32,
    pub user_len: u16,
    pub kernel_len: u16,
    pub lang_len: u16,
    /// `STACK_END_*` of the native user walk and of the language (Python
    /// or JS) walk.
    pub user_end: u8,
    pub lang_end: u8,
    /// Native user return addresses, innermost first (`user[0]` is the PC).
    pub user: [u64; MAX_USER_FRAMES],
    /// Kernel addresses, innermost first.
    pub kernel: [u64; MAX_KERNEL_FRAMES],
    /// Language frames (Python, or JS on V8), innermost first.
    pub lang: [LangFrameRec; MAX_PY_FRAMES],
}

/// One sample on its way to userspace: the only sample record kind.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleEvent {
    pub header: EventHeader,
    pub iteration: u64,
    pub sample: StackSample,
}

/// A loop thread's kernel-side sample storage, the value of the
/// `THREAD_SAMPLES` map (apart from `ThreadState`, which userspace reads
/// often and which must stay small).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadSamples {
    /// The stack captured when the thread last left the CPU inside the
    /// iteration, sent when it runs again (see `ThreadState::pending_kind`).
    pub pending: StackSample,
    /// Samples of the open iteration, kept until it proves to be a span.
    pub slots: [StackSample; SAMPLE_SLOTS],
}

// ---------------------------------------------------------------------------
// CPython layouts for the kernel's frame walk (#12). Userspace picks them per
// target (a generated per-version table, or the target's own
// `_Py_DebugOffsets` on 3.13+) and writes them to the `PY_TARGETS` map.
// ---------------------------------------------------------------------------

/// Most Python targets whose frames the kernel walks at once.
pub const MAX_PY_TARGETS: u32 = 256;
/// A field the version does not have.
pub const PY_OFF_NONE: u16 = u16::MAX;

/// `PyOffsets::instr_kind`: how a frame records where it is.
/// `f_lasti`, an `int` in bytes (3.8, 3.9).
pub const PY_INSTR_LASTI_BYTES: u8 = 1;
/// `f_lasti`, an `int` in 2-byte code units (3.10).
pub const PY_INSTR_LASTI_UNITS: u8 = 2;
/// A pointer into the code's `co_code_adaptive` (3.11+: `prev_instr`, and
/// `instr_ptr` from 3.13).
pub const PY_INSTR_POINTER: u8 = 3;

/// `LangFrameRec::flags` of a Python frame: the frame was entered from C, i.e. it is the first
/// Python frame a `_PyEval_EvalFrameDefault` call ran (3.11+: `is_entry`, or
/// the frame just above a C-stack shim frame on 3.12+; before 3.11 every
/// frame has its own eval call).
pub const PY_FRAME_ENTRY: u32 = 1;

/// Field offsets (bytes) the kernel's frame walk needs, for one CPython
/// version. "Frame" is `PyFrameObject` before 3.11 and `_PyInterpreterFrame`
/// from 3.11 on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyOffsets {
    /// `PyInterpreterState.tstate_head` (≤3.10) / `.threads.head` (3.11+).
    pub interp_tstate_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id`: the thread's `pthread_self()`, which on
    /// x86-64 is its fs base, so the kernel can match it on every version.
    pub tstate_thread_id: u16,
    /// `PyThreadState.frame` (≤3.10), `.cframe` (3.11, 3.12) or
    /// `.current_frame` (3.13+).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12), else `PY_OFF_NONE`.
    pub cframe_current_frame: u16,
    /// `f_back` / `previous`.
    pub frame_back: u16,
    /// `f_code` / `f_executable`.
    pub frame_code: u16,
    /// `f_lasti` / `prev_instr` / `instr_ptr`, read as `instr_kind` says.
    pub frame_instr: u16,
    /// `_PyInterpreterFrame.owner` (3.11+), else `PY_OFF_NONE`.
    pub frame_owner: u16,
    /// `_PyInterpreterFrame.is_entry` (3.11 only), else `PY_OFF_NONE`.
    pub frame_is_entry: u16,
    /// `PyCodeObject.co_code_adaptive` (3.11+), else `PY_OFF_NONE`.
    pub code_adaptive: u16,
    /// One of `PY_INSTR_*`.
    pub instr_kind: u8,
    /// The `owner` value of a C-stack shim frame (`FRAME_OWNED_BY_CSTACK`,
    /// 3.12+), skipped by the walk; `u8::MAX` where there is none.
    pub owner_cstack: u8,
    pub _pad: [u8; 8],
}

/// A Python target: the value of the `PY_TARGETS` map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyTarget {
    /// Address in the target of `_PyRuntime.interpreters.head` (a pointer to
    /// the main interpreter's `PyInterpreterState`).
    pub interp_head_addr: u64,
    /// Offset of `thread.fsbase` in the kernel's `task_struct` (from BTF).
    pub task_fsbase: u32,
    pub _pad: u32,
    pub offsets: PyOffsets,
}

// ---------------------------------------------------------------------------
// V8 frames (#13): read from a node target's frame pointers during the
// native walk. Userspace takes the layout from the node binary's `v8dbg_*`
// postmortem symbols (`lagtrace/src/symbolize/v8/metadata.rs`) and writes
// it to the `V8_TARGETS` map.
// ---------------------------------------------------------------------------

/// Most node targets whose JS frames the kernel reads at once.
pub const MAX_V8_TARGETS: u32 = 256;
/// Bytes below a frame pointer read at once: the slots a JS frame keeps
/// there (context or frame type, function, bytecode array and offset).
pub const V8_FP_SLOTS: usize = 8;

/// What the kernel needs of a V8 build (x86-64, no pointer compression:
/// tagged pointers are 8 bytes, heap objects are tagged `01`, Smis are
/// `value << 32`; userspace refuses other builds). Value of `V8_TARGETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Offsets {
    /// Slots (8-byte words) below the frame pointer, counted from
    /// `fp - 8 * V8_FP_SLOTS`: `fp + v8dbg_off_fp_context_or_frame_type`,
    /// `fp + v8dbg_off_fp_function`, `fp + v8dbg_off_fp_bytecode_offset`.
    pub slot_context: u8,
    pub slot_function: u8,
    pub slot_bytecode_offset: u8,
    pub _pad: u8,
    /// `JSFunction::shared`, `Map::instance_type`,
    /// `SharedFunctionInfo::name_or_scope_info` (bytes from the object; the
    /// kernel reads the first 64 bytes of a function and 32 of a
    /// `SharedFunctionInfo`, so the first and last are 8-aligned and below
    /// 64 and 32).
    pub jsfunction_shared: u16,
    pub map_instance_type: u16,
    pub sfi_name: u16,
    /// Instance types: the `JSFunction` range, and `SharedFunctionInfo`.
    pub type_jsfunction_first: u16,
    pub type_jsfunction_last: u16,
    pub type_sfi: u16,
}

// ---------------------------------------------------------------------------
// Unwind tables of issue #11, built in userspace from .eh_frame/.debug_frame
// and walked by the kernel. All files share one array of rows; each process
// has a sorted table of its executable mappings, each pointing at its file's
// range of rows.
// ---------------------------------------------------------------------------

/// Rows in the shared `UNWIND_ROWS` array (8 bytes each: 16 MiB).
pub const UNWIND_MAX_ROWS: u32 = 1 << 21;
/// Executable mappings per process table (a power of two).
pub const UNWIND_MAX_MAPPINGS: usize = 256;
/// Process tables in `UNWIND_PROCS`; slot 0 is never used.
pub const UNWIND_MAX_PROCS: u32 = 64;

/// `UnwindRow::rule` low bits: how the CFA is found.
/// No rule x86_64 code commonly uses: fall back to the frame pointer.
pub const CFA_NONE: u8 = 0;
/// CFA = rsp + `cfa_off`.
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_off`.
pub const CFA_RBP: u8 = 2;
/// A PLT stub: CFA = rsp + 8, + 8 more once `(rip & 15) >= cfa_off`.
pub const CFA_PLT: u8 = 3;
/// A signal trampoline (`__restore_rt`): the registers are in the
/// `ucontext` at rsp.
pub const CFA_SIGNAL: u8 = 4;
/// The return address is undefined: the outermost frame.
pub const CFA_END: u8 = 5;
/// Mask of the CFA kind in `UnwindRow::rule`.
pub const CFA_MASK: u8 = 0x0f;
/// rbp was saved at CFA + `rbp_off` × 8 (else it is unchanged).
pub const RBP_SAVED: u8 = 0x10;

/// One compact unwind rule, valid from `pc` to the next row's `pc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// Address in the file (ELF virtual address), up to 4 GiB.
    pub pc: u32,
    pub cfa_off: u16,
    /// `CFA_*` | `RBP_SAVED`.
    pub rule: u8,
    /// Where rbp was saved, in 8-byte units from the CFA.
    pub rbp_off: i8,
}

/// One executable mapping of a process with an unwind table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// File address = runtime address - `bias`.
    pub bias: u64,
    /// The file's rows in `UNWIND_ROWS`.
    pub row_start: u32,
    pub row_count: u32,
}

/// A process's executable mappings with tables, sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcUnwind {
    pub count: u32,
    pub _pad: u32,
    pub maps: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and arrays of
    // integers, with every padding byte spelled out as a field.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TargetConfig {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SpanEvent {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::LangFrameRec {}
    unsafe impl aya::Pod for super::V8Offsets {}
    unsafe impl aya::Pod for super::StackSample {}
    unsafe impl aya::Pod for super::SampleEvent {}
    unsafe impl aya::Pod for super::ThreadSamples {}
    unsafe impl aya::Pod for super::PyOffsets {}
    unsafe impl aya::Pod for super::PyTarget {}
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindMapping {}
    unsafe impl aya::Pod for super::ProcUnwind {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_iteration() {
        let mut t = ThreadState {
            tgid: 1,
            flags: THREAD_IN_ITER,
            iteration: 1,
            iter_start_ns: 100,
            phase: PHASE_ON_CPU,
            nbuf: 0,
            phase_since_ns: 100,
            on_cpu_ns: 0,
            off_cpu_ns: 0,
            runqueue_ns: 0,
            pending_kind: 0,
            in_futex_wait: 0,
            pending_since_ns: 0,
            samples: 0,
            samples_dropped: 0,
            probation: 0,
            _pad0: 0,
            iterations: 0,
            max_ns: 0,
            sum_ns: 0,
            hist: [0; HIST_BUCKETS],
        };
        t.close_phase(130);
        t.phase = PHASE_OFF_CPU;
        t.close_phase(180);
        t.phase = PHASE_RUNQUEUE;
        let open = t.phase_times(200);
        assert_eq!(
            (open.on_cpu_ns, open.off_cpu_ns, open.runqueue_ns),
            (30, 50, 20)
        );
        assert_eq!(t.runqueue_ns, 0, "reading does not charge");
        t.close_phase(200);
        assert_eq!(
            t.on_cpu_ns + t.off_cpu_ns + t.runqueue_ns,
            200 - t.iter_start_ns
        );
    }

    #[test]
    fn buckets_are_monotonic_and_invert() {
        let mut last = 0;
        for ns in 0..5000u64 {
            let b = hist_bucket(ns);
            assert!(b >= last, "ns {ns}");
            last = b;
        }
        for ns in (0..5000u64)
            .chain((1..40).map(|s| 1u64 << s))
            .chain([u64::MAX / 2])
        {
            let b = hist_bucket(ns);
            assert!(b < HIST_BUCKETS);
            assert!(hist_bucket_low(b) <= ns, "ns {ns} bucket {b}");
            if b + 1 < HIST_BUCKETS {
                assert!(hist_bucket_low(b + 1) > ns, "ns {ns} bucket {b}");
            }
        }
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<EventHeader>(), 16);
        assert_eq!(size_of::<SpanEvent>(), 16 + 8 * 6 + 8 + 16);
        assert_eq!(size_of::<Config>(), 40);
        assert_eq!(size_of::<ExecEvent>(), 16 + 8 + 16);
        assert_eq!(size_of::<LangFrameRec>(), 16);
        assert_eq!(
            size_of::<StackSample>(),
            32 + 8 * MAX_USER_FRAMES + 8 * MAX_KERNEL_FRAMES + 16 * MAX_PY_FRAMES
        );
        assert_eq!(size_of::<SampleEvent>(), 16 + 8 + size_of::<StackSample>());
        assert_eq!(size_of::<PyOffsets>(), 32);
        assert_eq!(size_of::<V8Offsets>(), 16);
        assert_eq!(size_of::<PyTarget>(), 16 + size_of::<PyOffsets>());
        assert_eq!(size_of::<UnwindRow>(), 8);
        assert_eq!(size_of::<UnwindMapping>(), 32);
        assert_eq!(size_of::<ProcUnwind>(), 8 + 32 * UNWIND_MAX_MAPPINGS);
    }
}
