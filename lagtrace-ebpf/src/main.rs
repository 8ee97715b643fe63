//! lagtrace's kernel side: one BPF object with every program lagtrace loads.
//!
//! The pipeline starts here. `probes/epoll.rs` opens and closes loop
//! iterations at the epoll_wait family, `probes/sample.rs` samples stacks while
//! an iteration is open, `probes/sched.rs` splits an iteration's time into
//! on-CPU, off-CPU and runqueue, and `iteration.rs` holds the logic they share:
//! when an iteration becomes a blocking span and how its samples reach
//! userspace. Programs filter on the target before any other work, because
//! they fire for every process on the host.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod iteration;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod python;
mod unwind;
#[cfg(target_arch = "bpf")]
mod v8;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves every path terminates, so no panic survives loading.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only the BPF build of this crate is meaningful; this keeps host-side
    // `cargo check --workspace` and clippy working.
}
