//! What the probes share: finding a loop thread's state, opening and closing
//! an iteration, and buffering or streaming its samples.
//!
//! Samples taken before an iteration crosses the threshold wait in the
//! thread's own slots (`THREAD_SAMPLES`); most iterations are short and
//! their samples are dropped here without reaching userspace (full slots
//! are sent early, and userspace drops them if no span follows). Once the
//! iteration is over the threshold, the slots are flushed and later samples
//! stream one by one, so a loop stuck for minutes is visible while it is
//! stuck. Every sample travels as one `SampleEvent` with its frames.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
};
use lagtrace_common::{
    CFG_ARMED, CTR_ITERATIONS, CTR_NO_SAMPLE_ROOM, CTR_RINGBUF_LOST, CTR_SAMPLES,
    CTR_SAMPLES_DROPPED, CTR_SCHED_MISSED, CTR_THREADS_FULL, Config, EVENT_SAMPLE, EVENT_SPAN,
    EVENT_SPAN_EXIT, EventHeader, PHASE_ON_CPU, SAMPLE_F_BUFFERED, SAMPLE_SLOTS, SampleEvent,
    SpanEvent, StackSample, THREAD_IN_ITER, THREAD_OVER, TargetConfig, ThreadSamples, ThreadState,
    WORKER_PROBATION, hist_bucket,
};

use aya_log_ebpf::debug;

use crate::maps::{
    CONFIG, COUNTERS, EVENTS, SCRATCH, TARGETS, THREAD_SAMPLES, THREADS, ZERO, ZERO_SAMPLES,
};

/// Buffered batches and off-CPU samples do not wake userspace: it drains
/// them on a short timer. A wakeup per preemption sample would put lagtrace
/// on the CPU of the very thread it samples, preempting it again and feeding
/// back more samples. Spans and live on-CPU samples do wake it.
const NO_WAKEUP: u64 = BPF_RB_NO_WAKEUP as u64;

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn target(tgid: u32) -> Option<&'static TargetConfig> {
    unsafe { TARGETS.get(tgid) }
}

/// The state of a known loop thread.
#[inline(always)]
pub fn thread(tid: u32) -> Option<&'static mut ThreadState> {
    THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// The sample slots of a known loop thread.
#[inline(always)]
pub fn thread_samples(tid: u32) -> Option<&'static mut ThreadSamples> {
    let p = THREAD_SAMPLES.get_ptr_mut(tid);
    if p.is_none() {
        bump(CTR_NO_SAMPLE_ROOM);
    }
    // SAFETY: a map value pointer stays valid for the program's run; only
    // this thread's own probes write its entry, and they do not nest.
    p.map(|p| unsafe { &mut *p })
}

/// This CPU's scratch sample.
#[inline(always)]
pub fn scratch() -> Option<&'static mut StackSample> {
    let p = SCRATCH.get_ptr_mut(0);
    if p.is_none() {
        bump(CTR_NO_SAMPLE_ROOM);
    }
    // SAFETY: a per-CPU map value, used only by on_cpu_sample and
    // sched_switch, which fill and send it before returning and cannot nest
    // on one CPU: sched_switch runs with interrupts off, and the kernel skips
    // a perf_event program while another tracing program runs on the CPU
    // (bpf_prog_active in kernel/events/core.c's bpf_overflow_handler).
    p.map(|p| unsafe { &mut *p })
}

/// The state of a thread of a target, created on first sight with
/// `probation` clean iterations to go before it counts (0: at once).
#[inline(always)]
pub fn thread_or_insert<C: EbpfContext>(
    ctx: &C,
    tid: u32,
    tgid: u32,
    probation: u32,
) -> Option<&'static mut ThreadState> {
    if let Some(t) = thread(tid) {
        if t.tgid == tgid {
            return Some(t);
        }
        // A stale entry of a dead thread whose tid was reused: start afresh.
        let _ = THREADS.remove(tid);
        let _ = THREAD_SAMPLES.remove(tid);
    }
    // Not before every hook is attached (see CFG_ARMED).
    if config()?.flags & CFG_ARMED == 0 {
        return None;
    }
    let zero = ZERO.get_ptr(0)?;
    // By reference: the value is far larger than the 512-byte BPF stack.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a by-value ThreadState would be copied onto the BPF stack"
    )]
    let inserted = THREADS.insert(tid, unsafe { &*zero }, BPF_NOEXIST.into());
    if inserted.is_err() {
        bump(CTR_THREADS_FULL);
        return None;
    }
    let zero_samples = ZERO_SAMPLES.get_ptr(0)?;
    // SAFETY: ZERO_SAMPLES is never written; by reference for the same
    // reason as above.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a by-value ThreadSamples would be copied onto the BPF stack"
    )]
    let inserted = THREAD_SAMPLES.insert(tid, unsafe { &*zero_samples }, BPF_NOEXIST.into());
    if inserted.is_err() {
        let _ = THREADS.remove(tid);
        bump(CTR_THREADS_FULL);
        return None;
    }
    let t = thread(tid)?;
    t.tgid = tgid;
    t.probation = probation;
    debug!(ctx, "lagtrace: new loop thread tid={} tgid={}", tid, tgid);
    Some(t)
}

/// A wait returned: the thread starts serving callbacks.
#[inline(always)]
pub fn begin(t: &mut ThreadState, now: u64) {
    t.flags = THREAD_IN_ITER;
    t.iteration += 1;
    t.iter_start_ns = now;
    t.phase = PHASE_ON_CPU;
    t.phase_since_ns = now;
    t.on_cpu_ns = 0;
    t.off_cpu_ns = 0;
    t.runqueue_ns = 0;
    t.pending_kind = 0;
    t.samples = 0;
    t.samples_dropped = 0;
    t.nbuf = 0;
}

/// The thread runs again: its time away (off-CPU, or on the runqueue) ends,
/// and the stack it waited in becomes a sample weighted by that time.
/// `FULL`: through [`push_sample`]; else through [`keep_sample`], whose
/// verifier cost is small enough to add to every program.
#[inline(always)]
pub fn resume<const FULL: bool>(t: &mut ThreadState, tid: u32, now: u64) {
    close_phase(t, now);
    t.phase = PHASE_ON_CPU;
    if t.pending_kind == 0 {
        return;
    }
    t.pending_kind = 0;
    let Some(slots) = thread_samples(tid) else {
        return;
    };
    slots.pending.weight_ns = now.saturating_sub(slots.pending.ts_ns);
    let p: *mut StackSample = &mut slots.pending;
    if FULL {
        push_sample(t, tid, now, p);
    } else {
        keep_sample(t, tid, now, p);
    }
}

/// Called from the loop thread's own context (a syscall of it, a perf
/// sample on it, its own switch-out), which proves it is on a CPU. If its
/// phase says it is away, the switch that brought it back was never seen.
/// The kernel does not promise a program run per event (its recursion
/// guards skip runs), and on a 6.18 VM about one loop-thread switch-in per
/// few seconds of tracing reached no program. Without this, the next
/// switch-out overwrote the stack the thread had waited in, and the span
/// reported its wait without one. The time since the unseen switch-in
/// counts as part of the wait; `CTR_SCHED_MISSED` counts these.
#[inline(always)]
pub fn running(t: &mut ThreadState, tid: u32, now: u64) {
    if t.phase != PHASE_ON_CPU {
        bump(CTR_SCHED_MISSED);
        resume::<false>(t, tid, now);
    }
}

/// The thread enters the next wait: account the iteration, and report it if
/// it was a blocking span. The thread is running (every caller is one of
/// its own events), so a wait whose end was not seen is closed first.
#[inline(always)]
pub fn end(t: &mut ThreadState, tid: u32, now: u64) {
    let Some(cfg) = config() else { return };
    running(t, tid, now);
    let dur = now.saturating_sub(t.iter_start_ns);
    close_phase(t, now);
    t.flags = 0;
    if t.probation != 0 {
        // Not yet a worker (see WORKER_PROBATION): an iteration that slept
        // restarts the count, and none is counted or reported meanwhile.
        t.probation = if t.off_cpu_ns > 0 {
            WORKER_PROBATION
        } else {
            t.probation - 1
        };
        t.nbuf = 0;
        return;
    }
    t.iterations += 1;
    t.sum_ns += dur;
    if dur > t.max_ns {
        t.max_ns = dur;
    }
    let b = hist_bucket(dur) & (t.hist.len() - 1);
    t.hist[b] += 1;
    bump(CTR_ITERATIONS);
    if dur >= cfg.threshold_ns {
        flush(t, tid);
        emit_span(t, tid, now, EVENT_SPAN);
    }
    t.nbuf = 0;
}

/// The thread exits inside an iteration (`kill -9`, `os._exit`,
/// `pthread_exit`): a span is reported as unfinished, with what it has. It
/// is not an iteration of the loop, so the histogram does not count it.
#[inline(always)]
pub fn end_at_exit(t: &mut ThreadState, tid: u32, now: u64) {
    let Some(cfg) = config() else { return };
    if t.flags & THREAD_IN_ITER == 0 || t.probation != 0 {
        return;
    }
    close_phase(t, now);
    if now.saturating_sub(t.iter_start_ns) >= cfg.threshold_ns {
        // The wait it was in when killed is its last sample.
        if t.pending_kind != 0
            && t.phase != PHASE_ON_CPU
            && let Some(slots) = thread_samples(tid)
        {
            t.pending_kind = 0;
            slots.pending.weight_ns = now.saturating_sub(slots.pending.ts_ns);
            let p: *const StackSample = &slots.pending;
            push_sample(t, tid, now, p);
        }
        flush(t, tid);
        emit_span(t, tid, now, EVENT_SPAN_EXIT);
    }
}

/// Add the time since the last scheduler transition to the current phase
/// (defined once, in lagtrace-common, for both sides).
#[inline(always)]
pub fn close_phase(t: &mut ThreadState, now: u64) {
    t.close_phase(now);
}

fn emit_span(t: &ThreadState, tid: u32, now: u64, kind: u32) {
    let Some(mut entry) = EVENTS.reserve::<SpanEvent>(0) else {
        bump(CTR_RINGBUF_LOST);
        return;
    };
    entry.write(SpanEvent {
        header: EventHeader {
            kind,
            size: core::mem::size_of::<SpanEvent>() as u32,
            tgid: t.tgid,
            tid,
        },
        iteration: t.iteration,
        start_ns: t.iter_start_ns,
        end_ns: now,
        on_cpu_ns: t.on_cpu_ns,
        off_cpu_ns: t.off_cpu_ns,
        runqueue_ns: t.runqueue_ns,
        samples: t.samples,
        samples_dropped: t.samples_dropped,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    entry.submit(0);
}

/// Send the buffered samples of the open iteration, one record each.
#[inline(always)]
fn flush(t: &mut ThreadState, tid: u32) {
    let n = t.nbuf as usize;
    t.nbuf = 0;
    if n == 0 {
        return;
    }
    let Some(slots) = thread_samples(tid) else {
        return;
    };
    for i in 0..SAMPLE_SLOTS {
        if i >= n {
            break;
        }
        let s = &mut slots.slots[i];
        s.flags |= SAMPLE_F_BUFFERED;
        send(t, tid, s as *const StackSample, NO_WAKEUP);
    }
}

/// Copy a whole sample in one helper call. Its size is constant, so the
/// copy adds no branch for the verifier to follow: copying only the used
/// part (four reads of variable size) cost no measurable time per sample
/// on 6.18 but multiplied the verifier's states in the 32-slot flush loop
/// past the 1M-instruction limit on 5.10 and 6.1. False if the read failed.
#[inline(always)]
pub fn copy_sample(dst: *mut StackSample, src: *const StackSample) -> bool {
    // SAFETY: both point at whole `StackSample`s (map values or a reserved
    // record); the helper copies exactly one.
    unsafe { bpf_probe_read_kernel(dst.cast(), size_of::<StackSample>() as u32, src.cast()) == 0 }
}

/// One sample to userspace: reserve its record and copy the sample in.
#[inline(always)]
fn send(t: &ThreadState, tid: u32, s: *const StackSample, flags: u64) {
    let Some(mut entry) = EVENTS.reserve::<SampleEvent>(0) else {
        bump(CTR_RINGBUF_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring-buffer record of
    // `size_of::<SampleEvent>()` bytes, written here before it is submitted;
    // the copy reads one whole `StackSample` from a map value.
    unsafe {
        (*ev).header = EventHeader {
            kind: EVENT_SAMPLE,
            size: size_of::<SampleEvent>() as u32,
            tgid: t.tgid,
            tid,
        };
        (*ev).iteration = t.iteration;
        if !copy_sample(core::ptr::addr_of_mut!((*ev).sample), s) {
            entry.discard(0);
            bump(CTR_RINGBUF_LOST);
            return;
        }
    }
    entry.submit(flags);
}

/// Count a sample of the open iteration. `None`: the thread is on
/// probation, reports nothing, and so keeps no samples. Else whether the
/// iteration is still under the threshold (not yet known to be a span).
#[inline(always)]
fn count_sample(t: &mut ThreadState, now: u64) -> Option<bool> {
    let cfg = config()?;
    if t.probation != 0 {
        return None;
    }
    t.samples += 1;
    bump(CTR_SAMPLES);
    Some(t.flags & THREAD_OVER == 0 && now.saturating_sub(t.iter_start_ns) < cfg.threshold_ns)
}

/// Keep one sample of the open iteration: in the thread's slots while the
/// iteration may still turn out short, straight to userspace once it is a
/// span. `s` is a scratch or pending sample with its frames filled (a raw
/// pointer: the pending sample lives in the same map value as the slots).
#[inline(always)]
pub fn push_sample(t: &mut ThreadState, tid: u32, now: u64, s: *const StackSample) {
    let Some(under) = count_sample(t, now) else {
        return;
    };
    if under {
        // Full slots (a high frequency, or a long threshold) go to
        // userspace ahead of time rather than being dropped: it keeps them
        // with their iteration and discards them if no span follows.
        if t.nbuf as usize >= SAMPLE_SLOTS {
            flush(t, tid);
        }
        let n = t.nbuf as usize;
        if n >= SAMPLE_SLOTS {
            t.samples_dropped += 1;
            bump(CTR_SAMPLES_DROPPED);
            return;
        }
        let Some(slots) = thread_samples(tid) else {
            t.samples_dropped += 1;
            return;
        };
        let dst = &mut slots.slots[n & (SAMPLE_SLOTS - 1)];
        if copy_sample(dst, s) {
            t.nbuf += 1;
        } else {
            t.samples_dropped += 1;
        }
        return;
    }
    t.flags |= THREAD_OVER;
    flush(t, tid);
    // No sample wakes userspace: it drains the ring buffer every 10 ms
    // (`DRAIN_TICK`), and since the Python frames are read here, nothing
    // of a sample needs userspace while the code still runs. Span events
    // wake it. (A wakeup per on-CPU sample cost lagtrace a context switch
    // per sample during a stall storm.)
    send(t, tid, s, NO_WAKEUP);
}

/// [`push_sample`] without its slots, for the rare heal of [`running`],
/// which every program inlines: the slot index and the flush loop are what
/// the verifier's work grows with (5.10 refused the classic sched program
/// with a second copy, "R1 unbounded memory access"). The sample goes
/// straight to userspace, marked buffered while the iteration is still
/// under the threshold, as a flush of full slots would send it: userspace
/// keeps it with its iteration and drops it if no span follows.
#[inline(always)]
fn keep_sample(t: &mut ThreadState, tid: u32, now: u64, s: *mut StackSample) {
    let Some(under) = count_sample(t, now) else {
        return;
    };
    if under {
        // SAFETY: `s` is the thread's pending sample, a map value that only
        // this thread's own probes write, and they do not nest.
        unsafe { (*s).flags |= SAMPLE_F_BUFFERED };
    }
    send(t, tid, s, NO_WAKEUP);
}
