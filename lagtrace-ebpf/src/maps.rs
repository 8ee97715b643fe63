//! Every map of the BPF object, in one place, so that names userspace looks up
//! are easy to audit against `lagtrace/src/probes/loader.rs`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
};
use lagtrace_common::{Config, MAX_TARGETS, MAX_THREADS, NUM_COUNTERS, TargetConfig, ThreadState};

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

/// Captured user and kernel stacks, referenced by id from samples.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(32768, 0);

/// Health counters (`CTR_*`), summed over CPUs by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);
