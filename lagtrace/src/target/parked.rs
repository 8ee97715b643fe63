//! Runtime workers already parked when lagtrace attaches. The kernel learns
//! a worker from its futex waits: a thread named like a tokio worker that
//! parks with no timeout is one from its first wait
//! (`WORKER_COMM_PREFIX`), any other thread after a few clean iterations
//! (`WORKER_PROBATION`). A worker that parked before attach shows the
//! kernel no wait until it wakes, so the first task it woke for (often
//! the stall itself) went unseen. This finds such workers in /proc by the
//! same rule, and the kernel is told of them once its programs run.
use std::fs;

use lagtrace_common::WORKER_COMM_PREFIX;

use super::read_comm;

/// The futex syscall's number on this architecture.
#[cfg(target_arch = "x86_64")]
const SYS_FUTEX: u64 = 202;
#[cfg(target_arch = "aarch64")]
const SYS_FUTEX: u64 = 98;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_FUTEX: u64 = u64::MAX;

const FUTEX_CMD_MASK: u64 = 0x7f;
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;

/// The threads of `pid` that are tokio workers parked in a futex wait.
pub fn parked_workers(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| {
            read_comm(pid, Some(tid)).is_some_and(|c| c.as_bytes().starts_with(WORKER_COMM_PREFIX))
        })
        .filter(|&tid| {
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
                .is_ok_and(|s| is_untimed_futex_wait(&s))
        })
        .collect()
}

/// True if a `/proc/PID/task/TID/syscall` line (`nr arg1 … arg6 sp pc`,
/// the arguments in hex) is a futex wait with no timeout: a thread parked
/// until someone wakes it. `running` and other syscalls are false.
pub fn is_untimed_futex_wait(line: &str) -> bool {
    let mut fields = line.split_whitespace();
    if fields.next().and_then(|nr| nr.parse::<u64>().ok()) != Some(SYS_FUTEX) {
        return false;
    }
    let args: Vec<u64> = fields
        .take(4)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let [_uaddr, op, _val, timeout] = args[..] else {
        return false;
    };
    let cmd = op & FUTEX_CMD_MASK;
    (cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET) && timeout == 0
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn a_parked_worker_is_an_untimed_futex_wait() {
        // Read from a tokio 1.54 worker parked on its condvar.
        let parked =
            "202 0x5589d3117818 0x89 0x60 0x0 0x0 0xffffffff 0x7f683ddf47d8 0x7f683def9829";
        assert!(is_untimed_futex_wait(parked));
        // FUTEX_WAIT | FUTEX_PRIVATE_FLAG, as older glibc condvars wait.
        assert!(is_untimed_futex_wait(
            "202 0x1000 0x80 0x1 0x0 0x0 0x0 0x0 0x0"
        ));
    }

    #[test]
    fn other_waits_are_not_parked_workers() {
        // A blocking-pool thread: the same wait with a keep-alive timeout.
        assert!(!is_untimed_futex_wait(
            "202 0x5589d3117818 0x89 0x60 0x7f683ddf4700 0x0 0xffffffff 0x0 0x0"
        ));
        // A futex wake (op 0x81), an epoll wait (the driver), a thread on a CPU.
        assert!(!is_untimed_futex_wait(
            "202 0x1000 0x81 0x1 0x0 0x0 0x0 0x0 0x0"
        ));
        assert!(!is_untimed_futex_wait(
            "232 0x4 0x5589d310bf80 0x400 0x5 0x0 0x8000000000000000 0x0 0x0"
        ));
        assert!(!is_untimed_futex_wait("running"));
        assert!(!is_untimed_futex_wait(""));
    }

    #[test]
    fn this_process_has_no_tokio_workers() {
        assert!(parked_workers(std::process::id()).is_empty());
    }
}
