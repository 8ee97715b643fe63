//! What the running kernel offers, probed once at start: the facts the
//! attach mode is chosen from (`attach.rs`), and the one-line refusal when
//! something lagtrace cannot do without is missing.
//!
//! Probes ask the kernel itself where aya can (`is_map_supported`,
//! `is_program_supported`, `is_helper_supported` load a tiny program), and
//! read tracefs for what only ftrace knows (which functions a trampoline can
//! attach to). Nothing here attaches anything: a feature that probes well
//! may still refuse the real attach, and `attach.rs` falls back then.
use std::{fmt, fs, io::BufRead, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use super::tracefs;

/// The kernel function every epoll wait goes through (fs/eventpoll.c).
pub const EPOLL_WAIT_FN: &str = "do_epoll_wait";
/// The kernel function every futex call goes through (kernel/futex/).
pub const FUTEX_FN: &str = "do_futex";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The perf PMU aya attaches kprobes through.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A kernel feature lagtrace cannot run without.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks {feature}; lagtrace needs Linux {minimum} or later with it enabled"
)]
pub struct MissingFeature {
    pub feature: &'static str,
    pub minimum: &'static str,
    pub release: String,
}

/// What the running kernel offers, as far as lagtrace cares.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// `uname -r`.
    pub release: String,
    /// Kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF).
    pub btf: bool,
    /// BPF ring buffer maps (5.8).
    pub ringbuf: bool,
    /// `bpf_loop` from tracing programs (5.17): the table and Python walkers.
    pub bpf_loop: bool,
    /// Raw tracepoint programs (4.17).
    pub raw_tracepoint: bool,
    /// fentry programs (5.5 on x86-64): aya loads one against
    /// `bpf_fentry_test1`, which needs the BPF trampoline.
    pub fentry_programs: bool,
    /// tp_btf programs (5.5): BTF and raw tracepoints are all they need;
    /// the real load decides.
    pub tp_btf: bool,
    /// kprobes through perf (CONFIG_KPROBE_EVENTS). lagtrace does not use
    /// them; reported so a `-v` run says what the host has.
    pub kprobes: bool,
    /// ftrace can patch the epoll wait function, so a trampoline (fentry)
    /// can attach to it.
    pub fentry_epoll: bool,
    /// The same for the futex function (the worker model's wait).
    pub fentry_futex: bool,
    /// fexit may hook functions that sleep (5.13, "bpf: Fix fexit
    /// trampoline"). Before it, detaching a trampoline while a task sleeps
    /// in the hooked function lets that task return into freed memory:
    /// lagtrace's fexit programs sit on `do_epoll_wait` and `do_futex`,
    /// where a loop sleeps most of its life, and a Debian 5.10 guest
    /// locked up (soft lockups of the target and of lagtrace) in a run
    /// that attached and detached them repeatedly.
    pub fexit_on_sleepers: bool,
    /// `raw_syscalls:sys_enter`/`sys_exit` exist.
    pub raw_syscalls: bool,
    /// The classic tracepoints lagtrace attaches that this kernel lacks.
    pub missing_tracepoints: Vec<String>,
}

/// The classic tracepoints lagtrace can use, by category.
const TRACEPOINTS: [(&str, &str); 10] = [
    ("syscalls", "sys_enter_epoll_wait"),
    ("syscalls", "sys_exit_epoll_wait"),
    ("syscalls", "sys_enter_epoll_pwait"),
    ("syscalls", "sys_exit_epoll_pwait"),
    ("syscalls", "sys_enter_futex"),
    ("syscalls", "sys_exit_futex"),
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_fork"),
];

/// Whether ftrace lists each of `names` as traceable (one pass over
/// available_filter_functions, whose lines are `name` or `name [module]`).
fn traceable<const N: usize>(names: [&str; N]) -> [bool; N] {
    let mut found = [false; N];
    let path = format!("{}/available_filter_functions", tracefs::events_dir());
    let Ok(f) = fs::File::open(&path) else {
        return found;
    };
    for line in std::io::BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        let name = line.split_whitespace().next().unwrap_or("");
        for (i, n) in names.iter().enumerate() {
            found[i] |= name == *n;
        }
    }
    found
}

/// `(major, minor)` of a release string such as `5.10.0-32-cloud-amd64`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Features {
    /// Probe the running kernel. A probe that errs counts as "no".
    pub fn probe() -> Self {
        let [fentry_epoll, fentry_futex] = traceable([EPOLL_WAIT_FN, FUTEX_FN]);
        let btf = Path::new(VMLINUX_BTF).exists();
        let fentry_programs = btf && is_program_supported(ProgramType::Tracing).unwrap_or(false);
        let raw_tracepoint = is_program_supported(ProgramType::RawTracePoint).unwrap_or(false);
        let missing_tracepoints = TRACEPOINTS
            .iter()
            .filter(|(c, e)| !tracefs::has_tracepoint(c, e))
            .map(|(c, e)| format!("{c}:{e}"))
            .collect();
        let release = release();
        let fexit_on_sleepers = version(&release).is_some_and(|v| v >= (5, 13));
        Self {
            fexit_on_sleepers,
            release,
            btf,
            ringbuf: is_map_supported(MapType::RingBuf).unwrap_or(false),
            bpf_loop: is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_loop)
                .unwrap_or(false),
            raw_tracepoint,
            fentry_programs,
            tp_btf: btf && raw_tracepoint,
            kprobes: Path::new(KPROBE_PMU).exists(),
            fentry_epoll: fentry_programs && fentry_epoll,
            fentry_futex: fentry_programs && fentry_futex,
            raw_syscalls: tracefs::has_tracepoint("raw_syscalls", "sys_enter")
                && tracefs::has_tracepoint("raw_syscalls", "sys_exit"),
            missing_tracepoints,
        }
    }

    /// Refuse a kernel without what every mode needs: the ring buffer that
    /// carries all events (5.8), and BTF, which the Python walk reads its
    /// thread offsets from (and tp_btf and fentry need).
    pub fn require(&self) -> Result<(), MissingFeature> {
        let missing = |feature, minimum| MissingFeature {
            feature,
            minimum,
            release: self.release.clone(),
        };
        if !self.ringbuf {
            return Err(missing("the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)", "5.8"));
        }
        if !self.btf {
            return Err(missing(
                "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)",
                "5.8",
            ));
        }
        if self
            .missing_tracepoints
            .iter()
            .any(|t| t.starts_with("sched:sched_process_exit"))
        {
            return Err(missing(
                "the sched:sched_process_exit tracepoint (CONFIG_TRACEPOINTS)",
                "5.8",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Features {
    /// One line for `-v`: each feature as `name=yes|no`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "kernel {}: btf={} ringbuf={} bpf_loop={} raw_tp={} tp_btf={} fentry={} kprobes={} \
             fentry({EPOLL_WAIT_FN})={} fentry({FUTEX_FN})={} fexit_on_sleepers={} raw_syscalls={}",
            self.release,
            yn(self.btf),
            yn(self.ringbuf),
            yn(self.bpf_loop),
            yn(self.raw_tracepoint),
            yn(self.tp_btf),
            yn(self.fentry_programs),
            yn(self.kprobes),
            yn(self.fentry_epoll),
            yn(self.fentry_futex),
            yn(self.fexit_on_sleepers),
            yn(self.raw_syscalls),
        )?;
        if !self.missing_tracepoints.is_empty() {
            write!(f, " missing={}", self.missing_tracepoints.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::version;

    #[test]
    fn versions_of_distribution_releases() {
        assert_eq!(version("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(version("5.13"), Some((5, 13)));
        assert_eq!(version("unknown"), None);
    }
}
