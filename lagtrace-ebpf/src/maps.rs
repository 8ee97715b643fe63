//! Every map of the BPF object, in one place, so that names userspace looks up
//! are easy to audit against `lagtrace/src/probes/loader.rs`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lagtrace_common::{
    Config, MAX_PY_TARGETS, MAX_SAMPLE_THREADS, MAX_TARGETS, MAX_THREADS, MAX_V8_TARGETS,
    NUM_COUNTERS, ProcUnwind, PyTarget, StackSample, TargetConfig, ThreadSamples, ThreadState,
    UNWIND_MAX_PROCS, UNWIND_MAX_ROWS, UnwindRow, V8Offsets,
};

use crate::python::PyFrameBuf;

/// Index 0 holds the run-time [`Config`].
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Traced processes by tgid. Every program checks this (or `THREADS`) first.
#[map]
pub static TARGETS: HashMap<u32, TargetConfig> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Loop threads by tid: created on a thread's first epoll wait return.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(MAX_THREADS, 0);

/// A zeroed `ThreadState` to insert from: the value is far larger than the
/// 512-byte BPF stack. Nothing ever writes to it.
#[map]
pub static ZERO: PerCpuArray<ThreadState> = PerCpuArray::with_max_entries(1, 0);

/// Spans and sample batches on their way to userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Execs on their way to userspace (`--name`, `--cgroup`): apart from
/// `EVENTS`, so a flood of spans cannot crowd out a new target, and small,
/// since an exec is rare next to a loop iteration.
#[map]
pub static EXECS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);

/// Sample slots of each loop thread by tid (see [`ThreadSamples`]), created
/// with its `THREADS` entry. Preallocated, because kernels before 6.1 let
/// perf_event programs use only preallocated hash maps: a slot set is about
/// 75 KiB, so this map holds fewer threads than `THREADS`
/// ([`MAX_SAMPLE_THREADS`], about 19 MiB in all); a loop thread past it is
/// not tracked and counted.
#[map]
pub static THREAD_SAMPLES: HashMap<u32, ThreadSamples> =
    HashMap::with_max_entries(MAX_SAMPLE_THREADS, 0);

/// A zeroed `ThreadSamples` to insert from (too big for a per-CPU array,
/// whose values are capped at 32 KiB). Nothing ever writes to it.
#[map]
pub static ZERO_SAMPLES: Array<ThreadSamples> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space where a sample is built: a `StackSample` is far
/// larger than the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<StackSample> = PerCpuArray::with_max_entries(1, 0);

/// Health counters (`CTR_*`), summed over CPUs by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// Python targets by tgid: where the interpreter is and its layout, written
/// by userspace at attach (see `python.rs`).
#[map]
pub static PY_TARGETS: HashMap<u32, PyTarget> = HashMap::with_max_entries(MAX_PY_TARGETS, 0);
/// The `PyThreadState` last found for a thread (tid), checked before each
/// use; least recently used entries go when it is full.
#[map]
pub static PY_TSTATE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_THREADS * 16, 0);
/// Per-CPU buffer each Python frame is read into whole (`python.rs`).
#[map]
pub static PY_FRAME_BUF: PerCpuArray<PyFrameBuf> = PerCpuArray::with_max_entries(1, 0);
/// Compact unwind rows of every file with a table, each file's rows sorted
/// by address in one range (`UnwindMapping::row_start`, `row_count`).
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(UNWIND_MAX_ROWS, 0);

/// Per-process tables of executable mappings, by `TargetConfig::unwind_slot`.
#[map]
pub static UNWIND_PROCS: Array<ProcUnwind> = Array::with_max_entries(UNWIND_MAX_PROCS, 0);

/// Node targets by tgid: the V8 layout their JS frames are read with
/// during the native walk (see `v8.rs`), written by userspace at attach.
#[map]
pub static V8_TARGETS: HashMap<u32, V8Offsets> = HashMap::with_max_entries(MAX_V8_TARGETS, 0);
