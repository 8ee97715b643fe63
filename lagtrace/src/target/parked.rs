//! Loop threads already asleep in their wait when lagtrace attaches. The
//! kernel learns a loop thread from its waits, and one asleep since before
//! attach shows it nothing until it wakes. With `fentry` it shows nothing
//! even then: a trampoline's fexit does not run for a call that was in
//! flight when it was attached. So the first iteration after attach (often
//! the stall itself) went unseen. This finds such threads in /proc, and
//! the kernel is told of them once its programs are armed (`CFG_ARMED`):
//! their next switch onto a CPU starts an iteration (`THREAD_WAKE_BEGINS`).
//! A thread the kernel knew before the scan entered its wait with every
//! hook in place, so its return will be seen, and it is left alone.
//!
//! Asleep in an epoll wait: any thread, as the kernel makes any thread of a
//! target a loop thread at its first epoll wait. Asleep in a futex wait
//! (worker model only): a thread named like a tokio worker, waiting with no
//! timeout, the rule the kernel applies to the waits it sees
//! (`WORKER_COMM_PREFIX`); other threads earn their place by probation.
use std::fs;

use lagtrace_common::{WORKER_COMM_PREFIX, is_futex_wait};

use super::{read_comm, tids_of};

/// Syscall numbers on this architecture: futex, and the epoll waits.
#[cfg(target_arch = "x86_64")]
const SYS_FUTEX: u64 = lagtrace_common::syscalls::FUTEX;
#[cfg(target_arch = "x86_64")]
const SYS_EPOLL_WAITS: [u64; 3] = lagtrace_common::syscalls::EPOLL_WAITS;
#[cfg(target_arch = "aarch64")]
const SYS_FUTEX: u64 = 98;
#[cfg(target_arch = "aarch64")]
const SYS_EPOLL_WAITS: [u64; 2] = [22, 441];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_FUTEX: u64 = u64::MAX;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_EPOLL_WAITS: [u64; 0] = [];

/// The wait a thread sleeps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Epoll,
    /// A futex wait with no timeout.
    UntimedFutex,
}

/// A loop thread found asleep in its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub tid: u32,
    pub wait: Wait,
}

/// The threads of `pid` asleep in a loop's wait; futex waits count only
/// for the worker model (`workers`) and a thread named like a worker.
/// With `-v`, what was read for the threads left out (the syscall number
/// and first arguments, or `running`), to tell a missed first iteration's
/// cause.
pub fn parked_threads(pid: u32, workers: bool) -> Vec<Parked> {
    let verbose = log::log_enabled!(log::Level::Info);
    let mut parked = Vec::new();
    let mut others = Vec::new();
    for tid in tids_of(pid) {
        let Ok(line) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
            continue;
        };
        let named = || {
            read_comm(pid, Some(tid)).is_some_and(|c| c.as_bytes().starts_with(WORKER_COMM_PREFIX))
        };
        match waiting_in(&line) {
            Some(wait) if wait == Wait::Epoll || (workers && named()) => {
                parked.push(Parked { tid, wait });
            }
            _ if verbose => {
                let read: Vec<&str> = line.split_whitespace().take(5).collect();
                others.push(format!("{tid}: {}", read.join(" ")));
            }
            _ => {}
        }
    }
    if verbose {
        log::info!("pid {pid}: threads not asleep in a loop wait at attach: {others:?}");
    }
    parked
}

/// The wait a `/proc/PID/task/TID/syscall` line (`nr arg1 … arg6 sp pc`,
/// the arguments in hex) shows: an epoll wait, or a futex wait with no
/// timeout (a thread parked until someone wakes it). None for anything
/// else, `running` included.
pub fn waiting_in(line: &str) -> Option<Wait> {
    let mut fields = line.split_whitespace();
    let nr: u64 = fields.next()?.parse().ok()?;
    if SYS_EPOLL_WAITS.contains(&nr) {
        return Some(Wait::Epoll);
    }
    if nr != SYS_FUTEX {
        return None;
    }
    let args: Vec<u64> = fields
        .take(4)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let [_uaddr, op, _val, timeout] = args[..] else {
        return None;
    };
    (is_futex_wait(op) && timeout == 0).then_some(Wait::UntimedFutex)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn a_parked_worker_is_an_untimed_futex_wait() {
        // Read from a tokio 1.54 worker parked on its condvar.
        let parked =
            "202 0x5589d3117818 0x89 0x60 0x0 0x0 0xffffffff 0x7f683ddf47d8 0x7f683def9829";
        assert_eq!(waiting_in(parked), Some(Wait::UntimedFutex));
        // FUTEX_WAIT | FUTEX_PRIVATE_FLAG, as older glibc condvars wait.
        let plain = "202 0x1000 0x80 0x1 0x0 0x0 0x0 0x0 0x0";
        assert_eq!(waiting_in(plain), Some(Wait::UntimedFutex));
    }

    #[test]
    fn an_epoll_wait_is_one_whatever_its_timeout() {
        // The tokio driver's epoll_wait, and an epoll_pwait.
        let driver = "232 0x4 0x5589d310bf80 0x400 0x5 0x0 0x8000000000000000 0x0 0x0";
        assert_eq!(waiting_in(driver), Some(Wait::Epoll));
        let pwait = "281 0x3 0x7ffc 0x40 0xffffffffffffffff 0x0 0x8 0x0 0x0";
        assert_eq!(waiting_in(pwait), Some(Wait::Epoll));
    }

    #[test]
    fn other_waits_are_not_parked_loops() {
        // A blocking-pool thread: the same futex wait with a keep-alive timeout.
        let pool = "202 0x5589d3117818 0x89 0x60 0x7f683ddf4700 0x0 0xffffffff 0x0 0x0";
        assert_eq!(waiting_in(pool), None);
        // A futex wake (op 0x81), a read, a thread on a CPU, nothing.
        assert_eq!(waiting_in("202 0x1000 0x81 0x1 0x0 0x0 0x0 0x0 0x0"), None);
        assert_eq!(waiting_in("0 0x3 0x7ffc 0x1000 0x0 0x0 0x0 0x0 0x0"), None);
        assert_eq!(waiting_in("running"), None);
        assert_eq!(waiting_in(""), None);
    }

    #[test]
    fn this_process_has_no_parked_loop_threads() {
        assert!(parked_threads(std::process::id(), true).is_empty());
    }
}
