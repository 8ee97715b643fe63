//! The on-CPU sampling clock. By default, where it can serve, the
//! kernel's scheduler tick (`tick.rs`), which costs no event at all.
//! With `-F N`, or where the tick cannot serve, one software `cpu-clock`
//! event per thread of each target, with `inherit` so threads and children
//! created later carry it too, instead of one event per CPU.
//!
//! A per-CPU clock ticks on every CPU whether or not a target runs there,
//! and on this project's reference VM (no PMU) that alone cut a Node
//! server's throughput by a third, with or without lagtrace's program on
//! it (see bench/ATTACH.md). A per-thread clock only runs while its thread
//! is on a CPU, so its cost follows the target's CPU time and leaves the
//! rest of the host alone. If the kernel refuses per-thread events (at
//! attach or for a target found later, e.g. out of fds), the per-CPU clock
//! takes over for all targets.
//!
//! Coverage: every thread of a target at the time it is added gets an
//! event; everything those threads create afterwards inherits one. Forked
//! children that the kernel itself adds to the targets (`--children`) are
//! therefore already covered and get no second event.
use std::collections::HashMap;

use aya::programs::{
    PerfEvent,
    perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
};

use super::{loader::Probes, tick::Tick};
use crate::{
    error::{Error, Result},
    target::tids_of,
};

/// What clocks the on-CPU samples, as chosen at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleClock {
    /// No on-CPU samples (`-F 0`).
    Off,
    /// The scheduler tick, at the kernel's HZ.
    Tick(Tick),
    /// A CPU clock at this many Hz.
    Clock(u64),
}

impl SampleClock {
    /// Samples per second (0 when off).
    pub fn hz(&self) -> u64 {
        match self {
            Self::Off => 0,
            Self::Tick(t) => t.hz,
            Self::Clock(hz) => *hz,
        }
    }

    /// For the start line: `250 Hz (kernel tick)`, `499 Hz`, `off`.
    pub fn describe(&self) -> String {
        match self {
            Self::Off => "off".into(),
            Self::Tick(t) => format!("{} Hz (kernel tick)", t.hz),
            Self::Clock(hz) => format!("{hz} Hz"),
        }
    }
}

/// Where the sampling clock runs.
#[derive(Debug, Default)]
pub(super) enum Sampler {
    /// No sampling (`-F 0`), or not attached yet.
    #[default]
    Off,
    /// One clock per thread of each target; the links of the threads each
    /// target had when it was added.
    PerThread {
        prog: &'static str,
        frequency: u64,
        links: HashMap<u32, Vec<PerfEventLinkId>>,
    },
    /// One clock per CPU, for every process (the fallback).
    PerCpu,
    /// The scheduler tick: nothing per process.
    Tick,
}

/// Whether a `perf_event_open` failure means only that the thread is gone.
fn thread_gone(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s)
        if s.io_error.raw_os_error() == Some(libc::ESRCH))
}

/// A clock per target thread takes an fd each: lift the soft fd limit to
/// the hard one, as the kernel lets any process do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Probes {
    /// Sample on the scheduler tick: one tracepoint, whatever the targets.
    pub(super) fn attach_tick(&mut self, prog: &'static str) -> Result<()> {
        let tp: &mut aya::programs::TracePoint = self.program(prog)?;
        tp.attach("timer", "hrtimer_expire_entry")
            .map_err(|source| Error::Attach {
                probe: "tracepoint timer:hrtimer_expire_entry".into(),
                source,
            })?;
        self.sampler = Sampler::Tick;
        self.attached
            .push("timer:hrtimer_expire_entry (tick sampler)".into());
        Ok(())
    }

    /// Start sampling: a clock on every thread of every target already in
    /// the kernel's table, or, if the kernel refuses that, on every CPU.
    pub(super) fn attach_sampler(&mut self, prog: &'static str, frequency: u64) -> Result<()> {
        raise_fd_limit();
        self.sampler = Sampler::PerThread {
            prog,
            frequency,
            links: HashMap::new(),
        };
        for tgid in self.target_pids() {
            self.cover_process(tgid)?;
        }
        if matches!(self.sampler, Sampler::PerThread { .. }) {
            self.attached
                .push(format!("perf_event cpu-clock per thread @ {frequency} Hz"));
        }
        Ok(())
    }

    /// Sample `tgid`: its own per-thread clocks or, if the kernel refuses
    /// them (out of fds, say), from now on one clock per CPU for all.
    pub(super) fn cover_process(&mut self, tgid: u32) -> Result<()> {
        let Err(why) = self.sample_process(tgid) else {
            return Ok(());
        };
        let Sampler::PerThread {
            prog, frequency, ..
        } = self.sampler
        else {
            return Ok(());
        };
        log::warn!("per-thread sampling refused ({why}): one sampling clock per CPU from now on");
        self.unsample_all();
        self.sampler = Sampler::PerCpu;
        self.attach_per_cpu(prog, frequency)
    }

    fn attach_per_cpu(&mut self, prog: &'static str, frequency: u64) -> Result<()> {
        let pe: &mut PerfEvent = self.program(prog)?;
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| Error::io(format!("reading {what}"), e))?;
        for cpu in cpus {
            pe.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency),
                false,
            )
            .map_err(|source| Error::Attach {
                probe: format!("perf_event cpu-clock on CPU {cpu}"),
                source,
            })?;
        }
        self.attached
            .push(format!("perf_event cpu-clock per CPU @ {frequency} Hz"));
        Ok(())
    }

    /// Put a clock on every thread `tgid` has now (inherited by whatever
    /// they create later). A no-op before the sampler is attached, for a
    /// process already covered, and with the per-CPU clock.
    fn sample_process(&mut self, tgid: u32) -> Result<()> {
        let Sampler::PerThread {
            prog, frequency, ..
        } = &self.sampler
        else {
            return Ok(());
        };
        let (prog, frequency) = (*prog, *frequency);
        let covered =
            matches!(&self.sampler, Sampler::PerThread { links, .. } if links.contains_key(&tgid));
        if covered {
            return Ok(());
        }
        let pe: &mut PerfEvent = self.program(prog)?;
        let mut opened = Vec::new();
        let mut failure = None;
        for tid in tids_of(tgid) {
            match pe.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::OneProcess {
                    pid: tid,
                    cpu: None,
                },
                SamplePolicy::Frequency(frequency),
                true,
            ) {
                Ok(link) => opened.push(link),
                Err(e) if thread_gone(&e) => {}
                Err(source) => {
                    failure = Some(Error::Attach {
                        probe: format!("perf_event cpu-clock on thread {tid} of pid {tgid}"),
                        source,
                    });
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for link in opened {
                let _ = pe.detach(link);
            }
            return Err(e);
        }
        if let Sampler::PerThread { links, .. } = &mut self.sampler {
            links.insert(tgid, opened);
        }
        Ok(())
    }

    /// Close the clocks opened for `tgid` (it exited or left the targets).
    pub(super) fn unsample_process(&mut self, tgid: u32) {
        let (prog, gone) = match &mut self.sampler {
            Sampler::PerThread { prog, links, .. } => (*prog, links.remove(&tgid)),
            _ => return,
        };
        let Some(gone) = gone else { return };
        if let Ok(pe) = self.program::<PerfEvent>(prog) {
            for link in gone {
                let _ = pe.detach(link);
            }
        }
    }

    fn unsample_all(&mut self) {
        let tgids: Vec<u32> = match &self.sampler {
            Sampler::PerThread { links, .. } => links.keys().copied().collect(),
            _ => return,
        };
        for tgid in tgids {
            self.unsample_process(tgid);
        }
    }

    /// Processes that carry per-thread clocks opened by lagtrace.
    pub fn sampled_processes(&self) -> usize {
        match &self.sampler {
            Sampler::PerThread { links, .. } => links.len(),
            _ => 0,
        }
    }
}
