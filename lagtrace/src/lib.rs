//! lagtrace: event-loop stalls ("blocking spans") found from outside the
//! process, with eBPF.
//!
//! The modules follow the pipeline: `probes` (kernel programs, loaded and
//! attached) → `events` (decoded kernel records) → `spans` (assembly) →
//! `symbolize` → `aggregate` → `output`. `session` runs it end to end.
pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod error;
pub mod events;
pub mod output;
pub mod probes;
pub mod report;
pub mod session;
pub mod spans;
pub mod symbolize;
pub mod target;
pub mod unwind;
