//! The floors of section 8: what a target pays for a piece of lagtrace's
//! kernel set-up with none of lagtrace's programs, each made by `perf` on
//! the target alone. The epoll syscall tracepoints enabled by `perf stat`
//! (counting, no BPF) are the tracepoint modes' floor; a `perf record`
//! cpu-clock at lagtrace's default rate is the sampling clock's own cost
//! (on a VM, each tick is a timer interrupt the hypervisor delivers).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The epoll syscall tracepoints of every wait kind the targets use,
/// entry and exit.
const EPOLL_TRACEPOINTS: &str = "syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,\
syscalls:sys_enter_epoll_pwait,syscalls:sys_exit_epoll_pwait";
/// Their exits only, what `--attach exit-tp` enables.
const EPOLL_EXIT_TRACEPOINTS: &str = "syscalls:sys_exit_epoll_wait,syscalls:sys_exit_epoll_pwait";
/// lagtrace's default `-F`: the clock floor samples at the same rate.
const DEFAULT_HZ: &str = "499";

/// Which floor a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// Epoll tracepoints, entry and exit: `--attach tracepoints`.
    Both,
    /// Their exits only: `--attach exit-tp`.
    Exits,
    /// A cpu-clock sampling the target's threads at lagtrace's default rate.
    Clock,
}

impl Floor {
    pub fn label(self) -> &'static str {
        match self {
            Self::Both => "the epoll tracepoints alone (`perf stat`, no lagtrace)",
            Self::Exits => "the epoll exit tracepoints alone (`perf stat`, no lagtrace)",
            Self::Clock => "a 499 Hz cpu-clock alone (`perf record -F 499 -p`, no lagtrace)",
        }
    }
}

/// A `perf` process holding one floor on a target until stopped.
pub struct PerfFloor(Child);

impl PerfFloor {
    /// Start `floor` on `pid` (a clock's samples go to a file in `out`);
    /// returned once perf has had time to attach. Why not, if perf is
    /// missing.
    pub fn start(pid: u32, floor: Floor, out: &Path) -> Result<Self, String> {
        let pid = pid.to_string();
        let mut cmd = Command::new("perf");
        match floor {
            Floor::Both | Floor::Exits => {
                let events = if floor == Floor::Both {
                    EPOLL_TRACEPOINTS
                } else {
                    EPOLL_EXIT_TRACEPOINTS
                };
                cmd.args(["stat", "-x,", "-e", events, "-p", &pid]);
            }
            Floor::Clock => {
                cmd.args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    DEFAULT_HZ,
                    "-p",
                    &pid,
                ])
                .arg("-o")
                .arg(out.join("clock-floor.perf.data"));
            }
        }
        let perf = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e} (install linux-perf)"))?;
        // perf says nothing when it has attached; give it time to.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(perf))
    }

    /// Stop perf (SIGINT, as at a terminal) and reap it.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on perf's pid, which has not been reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}
