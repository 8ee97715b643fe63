//! The userspace side of the kernel probes: mounting tracefs where needed,
//! loading the BPF object, attaching it, and reading its maps.
//!
//! Every attachment is held by an fd-backed link, so the kernel detaches all
//! of it when lagtrace exits, however it exits (SIGKILL included): nothing
//! is pinned.
pub mod attach;
pub mod btf;
pub mod features;
pub mod loader;
pub mod sampling;
pub mod sched_attach;
pub mod tick;
pub mod tracefs;
pub mod unwind_maps;

pub use attach::AttachMode;
pub use features::Features;
pub use loader::{Counters, ProbeOptions, Probes};
pub use sampling::SampleClock;
