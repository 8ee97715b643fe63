//! How loop iterations are hooked: the attach modes, the choice among them
//! on the running kernel, and attaching the chosen one.
//!
//! Every mode runs the same kernel logic (`lagtrace-ebpf/src/probes/epoll.rs`
//! and `futex.rs`) at the same two moments, a wait entered and a wait
//! returned, so every mode gives the same spans; they differ only in what
//! the rest of the host pays:
//! - `fentry`: trampolines on `do_epoll_wait` and `do_futex`. Only calls of
//!   those functions pay; needs BTF and ftrace-patchable functions.
//! - `tp_btf` / `raw_tracepoint`: the generic `sys_enter`/`sys_exit` hooks,
//!   filtered by tgid first and syscall number second in BPF. No trace
//!   record is formatted, but every syscall of the host runs the program.
//! - `tracepoints`: the classic `syscalls:sys_{enter,exit}_epoll_*` and
//!   `_futex` tracepoints. Only those syscalls run the program, after the
//!   kernel formats a trace record for them.
//! - `exit_tracepoints`: the same, but only where an epoll wait returns.
//!   A wait's entry matters only if the thread falls asleep in it, and
//!   then `sched_switch` (run anyway for the off-CPU split) sees it: the
//!   wait-aware tp_btf program reads the sleeping task's syscall number.
//!   A wait that returns without sleeping ends its iteration on return, so
//!   the iteration takes in that wait's few microseconds. One tracepoint
//!   and one program per wait instead of two.
//!
//! Any syscall tracepoint puts every task of the host on the syscall slow
//! path; only `fentry` avoids that.
use std::fmt;

use aya::{
    Btf,
    programs::{BtfTracePoint, FEntry, FExit, RawTracePoint, TracePoint},
};

use super::{
    Probes,
    features::{EPOLL_WAIT_FN, FUTEX_FN, Features},
    tracefs,
};
use lagtrace_common::CFG_WAIT_BY_SWITCH;

use crate::{
    cli::Attach,
    error::{Error, Result},
};

/// How iterations are hooked (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Fentry,
    TpBtf,
    RawTracepoint,
    Tracepoints,
    ExitTracepoints,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fentry => "fentry",
            Self::TpBtf => "tp_btf",
            Self::RawTracepoint => "raw_tracepoint",
            Self::Tracepoints => "tracepoints",
            Self::ExitTracepoints => "exit_tracepoints",
        })
    }
}

/// The generic syscall hooks and the wait-aware sched_switch read x86-64
/// syscall numbers and `pt_regs`.
const SYSCALL_HOOKS_ARCH: bool = cfg!(target_arch = "x86_64");

/// Among the modes that hook syscalls, the order `auto` tries them in: the
/// cheapest first, as measured by `cargo xtask bench` (bench/ATTACH.md).
/// `exit_tracepoints` costs the target least; it needs the wait-aware
/// tp_btf sched_switch (5.17+, x86-64, scheduler accounting on), and where
/// that is missing `tracepoints` is the cheapest for the rest of the host.
const AUTO_SYSCALL_ORDER: [AttachMode; 4] = [
    AttachMode::ExitTracepoints,
    AttachMode::Tracepoints,
    AttachMode::TpBtf,
    AttachMode::RawTracepoint,
];

/// Why `mode` cannot work on this kernel, if it cannot. `sched_btf`: the
/// tp_btf sched programs can run (scheduler accounting on, `task_struct`
/// offsets known).
fn unavailable(mode: AttachMode, f: &Features, sched_btf: bool) -> Option<String> {
    match mode {
        AttachMode::ExitTracepoints if !SYSCALL_HOOKS_ARCH => {
            Some("the wait-aware sched_switch reads x86-64 syscall numbers only".into())
        }
        AttachMode::ExitTracepoints if !f.bpf_loop || !f.tp_btf => Some(
            "its wait-aware tp_btf sched_switch needs BTF, bpf_loop and bpf_task_pt_regs (Linux 5.17)".into(),
        ),
        AttachMode::ExitTracepoints if !sched_btf => Some(
            "it needs the tp_btf sched programs (not with --no-sched, nor without task_struct offsets in BTF)".into(),
        ),
        AttachMode::ExitTracepoints
            if f.missing_tracepoints
                .iter()
                .any(|t| t.ends_with("exit_epoll_wait")) =>
        {
            Some("the kernel has no syscalls:sys_exit_epoll_wait tracepoint".into())
        }
        AttachMode::Fentry if !f.fentry_programs => {
            Some("the kernel refuses fentry programs (no BPF trampoline)".into())
        }
        AttachMode::Fentry if !f.fexit_on_sleepers => Some(
            "fexit on functions that sleep (do_epoll_wait, do_futex) is unsafe before Linux 5.13: a task asleep in one when lagtrace detaches returns into a freed trampoline".into(),
        ),
        AttachMode::Fentry if !f.fentry_epoll => Some(format!(
            "ftrace cannot patch {EPOLL_WAIT_FN} (not in available_filter_functions)"
        )),
        AttachMode::TpBtf | AttachMode::RawTracepoint if !SYSCALL_HOOKS_ARCH => {
            Some("the generic syscall hooks are implemented for x86-64 only".into())
        }
        AttachMode::TpBtf | AttachMode::RawTracepoint if !f.raw_syscalls => {
            Some("the kernel has no raw_syscalls tracepoints".into())
        }
        AttachMode::TpBtf if !f.tp_btf => {
            Some("the kernel has no BTF or no raw tracepoints, which tp_btf needs".into())
        }
        AttachMode::RawTracepoint if !f.raw_tracepoint => {
            Some("the kernel has no raw tracepoint programs".into())
        }
        AttachMode::Tracepoints
            if f.missing_tracepoints
                .iter()
                .any(|t| t.ends_with("epoll_wait")) =>
        {
            Some("the kernel has no syscalls:*_epoll_wait tracepoints".into())
        }
        _ => None,
    }
}

/// The modes to try, in order, each with why it is tried; an error if a
/// forced mode cannot work here.
pub fn candidates(req: Attach, f: &Features, sched_btf: bool) -> Result<Vec<(AttachMode, String)>> {
    let forced = match req {
        Attach::Auto => None,
        Attach::Fentry => Some(AttachMode::Fentry),
        Attach::TpBtf => Some(AttachMode::TpBtf),
        Attach::RawTp => Some(AttachMode::RawTracepoint),
        Attach::Tracepoints => Some(AttachMode::Tracepoints),
        Attach::ExitTp => Some(AttachMode::ExitTracepoints),
    };
    if let Some(mode) = forced {
        if let Some(why) = unavailable(mode, f, sched_btf) {
            return Err(Error::Unsupported {
                what: format!(
                    "--attach {mode} cannot work on this kernel ({}): {why}; use --attach auto",
                    f.release
                ),
            });
        }
        return Ok(vec![(mode, "forced by --attach".into())]);
    }
    let mut out = Vec::new();
    let mut passed = Vec::new();
    for mode in std::iter::once(AttachMode::Fentry).chain(AUTO_SYSCALL_ORDER) {
        match unavailable(mode, f, sched_btf) {
            Some(why) => passed.push(format!("not {mode}: {why}")),
            None => {
                let mut why = if mode == AttachMode::Fentry {
                    "fentry costs only the target's waits".to_string()
                } else {
                    format!("{mode} is the cheapest syscall hook here (bench/ATTACH.md)")
                };
                if !passed.is_empty() {
                    why = format!("{why}; {}", passed.join("; "));
                }
                out.push((mode, why));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Unsupported {
            what: format!(
                "this kernel ({}) offers no way to hook epoll waits: {}",
                f.release,
                passed.join("; ")
            ),
        });
    }
    Ok(out)
}

impl Probes {
    /// Attach the iteration hooks: the first of `candidates` that attaches.
    /// Returns the mode used and why.
    pub(super) fn attach_iterations(
        &mut self,
        candidates: Vec<(AttachMode, String)>,
        workers: bool,
    ) -> Result<(AttachMode, String)> {
        let mut refused = Vec::new();
        let last = candidates.len() - 1;
        for (i, (mode, why)) in candidates.into_iter().enumerate() {
            match self.attach_mode(mode, workers) {
                Ok(()) => {
                    if !refused.is_empty() {
                        return Ok((mode, format!("{why}; {}", refused.join("; "))));
                    }
                    return Ok((mode, why));
                }
                Err(e) if i < last => {
                    log::info!("attach mode {mode} failed, trying the next: {e}");
                    refused.push(format!("{mode} refused: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last candidate returns")
    }

    fn attach_mode(&mut self, mode: AttachMode, workers: bool) -> Result<()> {
        match mode {
            AttachMode::Fentry => self.attach_fentry(workers),
            AttachMode::TpBtf => {
                let btf = kernel_btf()?;
                self.attach_pair::<BtfTracePoint>(&btf, "btf_sys_enter", "btf_sys_exit")
            }
            AttachMode::RawTracepoint => {
                for (prog, tp) in [("raw_sys_enter", "sys_enter"), ("raw_sys_exit", "sys_exit")] {
                    let p: &mut RawTracePoint = self.program(prog)?;
                    p.load().map_err(attach_err(format!("program {prog}")))?;
                    p.attach(tp)
                        .map_err(attach_err(format!("raw tracepoint {tp}")))?;
                    self.attached.push(format!("raw_tp:{tp}"));
                }
                Ok(())
            }
            AttachMode::Tracepoints => self.attach_syscall_tracepoints(workers, EpollPoints::Both),
            AttachMode::ExitTracepoints => {
                if let Some(why) = &self.sched_waits_refused {
                    return Err(Error::Unsupported {
                        what: format!("the wait-aware sched_switch did not load: {why}"),
                    });
                }
                self.set_flag(CFG_WAIT_BY_SWITCH, true)?;
                let attached = self.attach_syscall_tracepoints(workers, EpollPoints::Exits);
                if attached.is_err() {
                    self.set_flag(CFG_WAIT_BY_SWITCH, false)?;
                }
                attached
            }
        }
    }

    /// fentry/fexit on the epoll wait function, and on the futex function
    /// for the worker model (or its classic tracepoints where ftrace cannot
    /// patch it). No iteration opens before all are attached (`CFG_ARMED`),
    /// so the order does not matter.
    fn attach_fentry(&mut self, workers: bool) -> Result<()> {
        let btf = kernel_btf()?;
        if workers
            && let Err(e) = self.attach_trampolines(&btf, FUTEX_FN, "fentry_futex", "fexit_futex")
        {
            log::info!("fentry on {FUTEX_FN} refused, futex waits by tracepoint: {e}");
            self.attach_syscall_tracepoints(true, EpollPoints::None)?;
        }
        self.attach_trampolines(&btf, EPOLL_WAIT_FN, "fentry_epoll_wait", "fexit_epoll_wait")
    }

    /// fentry then fexit on `func`; a refused fexit detaches the fentry, so
    /// a failure leaves nothing attached.
    fn attach_trampolines(
        &mut self,
        btf: &Btf,
        func: &str,
        entry: &'static str,
        exit: &'static str,
    ) -> Result<()> {
        let p: &mut FEntry = self.program(entry)?;
        p.load(func, btf)
            .map_err(attach_err(format!("program {entry}")))?;
        let link = p.attach().map_err(attach_err(format!("fentry {func}")))?;
        let x: &mut FExit = self.program(exit)?;
        let attached = x
            .load(func, btf)
            .and_then(|()| x.attach().map(drop))
            .map_err(attach_err(format!("fexit {func}")));
        if let Err(e) = attached {
            let p: &mut FEntry = self.program(entry)?;
            let _ = p.detach(link);
            return Err(e);
        }
        self.attached.push(format!("fentry+fexit:{func}"));
        Ok(())
    }

    /// Two tp_btf programs on the generic syscall hooks.
    fn attach_pair<T>(&mut self, btf: &Btf, enter: &'static str, exit: &'static str) -> Result<()>
    where
        T: BtfTracing,
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        for (prog, tp) in [(enter, "sys_enter"), (exit, "sys_exit")] {
            let p: &mut T = self.program(prog)?;
            p.load_attach(tp, btf)
                .map_err(attach_err(format!("tp_btf {tp}")))?;
            self.attached.push(format!("tp_btf:{tp}"));
        }
        Ok(())
    }

    /// The classic per-syscall tracepoints: the epoll waits' (`epoll`)
    /// and, for the worker model, both of futex.
    ///
    /// Before the kernel was armed only once all were attached
    /// (`CFG_ARMED`), the entries had to go first: a worker whose wait
    /// returned on a hooked exit and which parked on a futex before that
    /// entry had its hook stayed inside an iteration through the park, and
    /// its first stall after attach came out 3–8 ms long in about 1 run
    /// in 7. They still go first.
    fn attach_syscall_tracepoints(&mut self, workers: bool, epoll: EpollPoints) -> Result<()> {
        let mut points: Vec<(&str, String)> = Vec::new();
        if workers {
            points.push(("futex_enter", "sys_enter_futex".into()));
        }
        if epoll == EpollPoints::Both {
            for sc in WAIT_SYSCALLS {
                points.push(("epoll_enter", format!("sys_enter_{sc}")));
            }
        }
        if workers {
            points.push(("futex_exit", "sys_exit_futex".into()));
        }
        if epoll != EpollPoints::None {
            for sc in WAIT_SYSCALLS {
                points.push(("epoll_exit", format!("sys_exit_{sc}")));
            }
        }
        for (prog, name) in points {
            if !tracefs::has_tracepoint("syscalls", &name) {
                // epoll_pwait2 is 5.11+; the others are everywhere.
                log::warn!("tracepoint syscalls:{name} does not exist on this kernel; skipped");
                continue;
            }
            let tp: &mut TracePoint = self.program(prog)?;
            if tp.fd().is_err() {
                tp.load().map_err(attach_err(format!("program {prog}")))?;
            }
            tp.attach("syscalls", &name)
                .map_err(attach_err(format!("tracepoint syscalls:{name}")))?;
            self.attached.push(format!("syscalls:{name}"));
        }
        Ok(())
    }
}

const WAIT_SYSCALLS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// Which of the epoll waits' syscall tracepoints to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpollPoints {
    /// None (fentry hooks the waits; futex by tracepoint).
    None,
    /// Their exits only (`exit_tracepoints`).
    Exits,
    /// Entry and exit (`tracepoints`).
    Both,
}

/// Program types loaded against a BTF name and attached without arguments.
pub(super) trait BtfTracing {
    fn load_attach(
        &mut self,
        name: &str,
        btf: &Btf,
    ) -> std::result::Result<(), aya::programs::ProgramError>;
}

impl BtfTracing for BtfTracePoint {
    fn load_attach(
        &mut self,
        name: &str,
        btf: &Btf,
    ) -> std::result::Result<(), aya::programs::ProgramError> {
        if self.fd().is_err() {
            self.load(name, btf)?;
        }
        self.attach().map(drop)
    }
}

fn kernel_btf() -> Result<Btf> {
    Btf::from_sys_fs().map_err(|e| Error::Unsupported {
        what: format!("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): {e}"),
    })
}

fn attach_err(probe: String) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Attach { probe, source }
}
