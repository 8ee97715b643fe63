//! Unwind tables for the kernel's native unwinder (issue #11): built in
//! userspace from each executable file's `.eh_frame` (or `.debug_frame`),
//! compacted to the few rules x86_64 code uses, and loaded into BPF maps
//! that `lagtrace-ebpf/src/unwind.rs` walks at every sample.
//!
//! `compact.rs` turns gimli's rows into compact rows (pure, tested against
//! gimli), `elf.rs` reads one file, `tables.rs` shares files across
//! processes and writes the kernel's maps. Nothing here reads a target's
//! memory or stops it.
pub mod compact;
pub mod elf;
pub mod tables;

#[cfg(test)]
mod check;

pub use tables::{TableStats, UnwindTables};
