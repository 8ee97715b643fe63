//! The x86-64 syscall numbers the kernel side filters on, and userspace's
//! parked-thread scan reads back from `/proc/PID/syscall`: one list, so the
//! two cannot disagree on what counts as an epoll wait.

/// `futex`.
pub const FUTEX: u64 = 202;
/// `epoll_wait`.
pub const EPOLL_WAIT: u64 = 232;
/// `epoll_pwait`.
pub const EPOLL_PWAIT: u64 = 281;
/// `epoll_pwait2` (5.11).
pub const EPOLL_PWAIT2: u64 = 441;
/// Every epoll wait: the calls that end one loop iteration and begin the next.
pub const EPOLL_WAITS: [u64; 3] = [EPOLL_WAIT, EPOLL_PWAIT, EPOLL_PWAIT2];
