//! One file per probe. Each entry point only delegates to its `try_` function.
pub mod epoll;
pub mod exec;
pub mod exit;
pub mod fentry;
pub mod fork;
pub mod futex;
pub mod sample;
pub mod sched;
pub mod sched_btf;
pub mod stacks;
pub mod syscalls;
