//! Loads lagtrace's BPF object, configures it and attaches every program.
//!
//! The order matters: config and targets are written before anything is
//! attached, so no program ever runs half-configured.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{PerfEvent, TracePoint},
};
use lagtrace_common::{
    CFG_ARMED, CFG_CHILDREN, CFG_FAULT_SKIP_SWITCH_IN, CFG_SAMPLING, CFG_SCHED, CFG_SELECT,
    CTR_ITERATIONS, CTR_KERNEL_STACK_ERRORS, CTR_NO_SAMPLE_ROOM, CTR_RINGBUF_LOST, CTR_SAMPLES,
    CTR_SAMPLES_DROPPED, CTR_SCHED_MISSED, CTR_TARGETS_FULL, CTR_THREADS_FULL, CTR_USER_END,
    Config, MODEL_WORKER, PyTarget, STACK_END_KINDS, THREAD_WAKE_BEGINS, TargetConfig,
    ThreadSamples, ThreadState, V8Offsets,
};

use super::{
    SampleClock,
    attach::{AttachMode, candidates},
    features::Features,
    tracefs,
};
use crate::{
    cli::Attach,
    error::{Error, Result},
    events::SampleRec,
};

/// `bpf_map_update_elem`'s flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// What to attach and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub threshold_ns: u64,
    /// What clocks the on-CPU samples.
    pub sampling: SampleClock,
    /// Attach sched_switch and sched_wakeup.
    pub sched: bool,
    /// Follow processes forked by targets.
    pub children: bool,
    /// Some target uses the worker model: attach the futex wait points.
    pub workers: bool,
    /// How to hook loop iterations (`--attach`).
    pub attach: Attach,
    /// Targets are selected by name or cgroup: send every exec.
    pub select: bool,
    /// Fault injection for tests: ignore every switch-in of a loop thread
    /// (see [`CFG_FAULT_SKIP_SWITCH_IN`]).
    pub fault_skip_switch_in: bool,
}

/// The kernel's health counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_lost: u64,
    /// Kernel stack captures that failed.
    pub kernel_stack_errors: u64,
    /// Samples lost for want of a scratch sample or a thread's slots.
    pub no_sample_room: u64,
    /// User stack walks by how they ended (`STACK_END_*` index).
    pub user_ends: [u64; STACK_END_KINDS],
    pub samples_dropped: u64,
    pub threads_full: u64,
    /// Forked children not followed (the kernel's target table was full).
    pub targets_full: u64,
    pub samples: u64,
    pub iterations: u64,
    /// Scheduler events of loop threads never seen, found and healed later
    /// (`CTR_SCHED_MISSED`).
    pub sched_missed: u64,
}

pub struct Probes {
    ebpf: Ebpf,
    /// Whether lagtrace mounted tracefs (reported, and left mounted: other
    /// tools on the host may start using it meanwhile).
    pub mounted_tracefs: bool,
    /// Wait points that exist on this kernel and were attached.
    pub attached: Vec<String>,
    /// Why the stack walkers (tables, Python frames) could not load here,
    /// when the frame-pointer variants were loaded instead.
    pub walk_refused: Option<String>,
    /// What the running kernel offers (probed in [`Probes::load`]).
    pub features: Features,
    /// How iterations are hooked, once attached, and why (`-v`).
    pub mode: Option<(AttachMode, String)>,
    /// `task_struct` offsets were found in BTF (the tp_btf sched programs
    /// need them).
    pub(super) task_offsets_known: bool,
    /// Why the wait-aware sched_switch (`--attach exit-tp`) is not the one
    /// attached; None once it is.
    pub(super) sched_waits_refused: Option<String>,
    /// Where the on-CPU sampling clock runs.
    pub(super) sampler: super::sampling::Sampler,
}

/// The two program types whose stack capture has a fallback variant.
trait Loadable {
    fn load_once(&mut self) -> std::result::Result<(), aya::programs::ProgramError>;
}

impl Loadable for TracePoint {
    fn load_once(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
        if self.fd().is_err() {
            self.load()?;
        }
        Ok(())
    }
}

impl Loadable for PerfEvent {
    fn load_once(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
        if self.fd().is_err() {
            self.load()?;
        }
        Ok(())
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn attach_err(probe: String) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Attach { probe, source }
}

impl Probes {
    pub fn load(opts: &ProbeOptions) -> Result<Self> {
        let mounted_tracefs = tracefs::ensure_mounted()?;
        let features = Features::probe();
        log::info!("{features}");
        features.require()?;
        // 0 when unknown: the tp_btf sched programs are then not used.
        let (task_pid_off, task_state_off) = super::btf::task_sched_offsets().unwrap_or_else(|e| {
            log::info!("no task_struct offsets from BTF ({e}): sched by classic tracepoints");
            (0, 0)
        });
        let tick = match opts.sampling {
            SampleClock::Tick(t) => Some(t),
            _ => None,
        };
        let config = Config {
            threshold_ns: opts.threshold_ns,
            flags: if opts.sampling != SampleClock::Off {
                CFG_SAMPLING
            } else {
                0
            } | if opts.sched { CFG_SCHED } else { 0 }
                | if opts.children { CFG_CHILDREN } else { 0 }
                | if opts.select { CFG_SELECT } else { 0 }
                | if opts.fault_skip_switch_in {
                    CFG_FAULT_SKIP_SWITCH_IN
                } else {
                    0
                },
            switch_prev_pid_off: tracefs::field_offset("sched", "sched_switch", "prev_pid")?,
            switch_prev_state_off: tracefs::field_offset("sched", "sched_switch", "prev_state")?,
            switch_next_pid_off: tracefs::field_offset("sched", "sched_switch", "next_pid")?,
            wakeup_pid_off: tracefs::field_offset("sched", "sched_wakeup", "pid")?,
            fork_child_off: tracefs::field_offset("sched", "sched_process_fork", "child_pid")?,
            tick_fn_off: tick.map_or(0, |t| t.function_off),
            task_pid_off,
            task_state_off,
            tick_fn: tick.map_or(0, |t| t.function),
        };
        let mut ebpf = EbpfLoader::new()
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/lagtrace-ebpf"
            )))
            .map_err(|source| Error::Load { source })?;
        {
            let mut cfg: Array<_, Config> =
                Array::try_from(ebpf.map_mut("CONFIG").expect("CONFIG map"))
                    .map_err(map_err("CONFIG"))?;
            cfg.set(0, config, 0).map_err(map_err("CONFIG"))?;
        }
        Ok(Self {
            ebpf,
            mounted_tracefs,
            attached: Vec::new(),
            walk_refused: None,
            features,
            mode: None,
            task_offsets_known: task_pid_off != 0,
            sched_waits_refused: Some("the tp_btf sched programs are not attached".into()),
            sampler: Default::default(),
        })
    }

    /// Start the kernel-side diagnostics stream (shown at -v).
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Trace this process: every thread of it, including threads created
    /// later, in the loop `model` (`MODEL_*`).
    /// A process the kernel added on fork is already sampled through its
    /// parent's inherited clocks; any other gets its own.
    pub fn add_target(&mut self, tgid: u32, model: u32) -> Result<()> {
        let map = self.ebpf.map_mut("TARGETS").expect("TARGETS map");
        let mut targets: HashMap<_, u32, TargetConfig> =
            HashMap::try_from(map).map_err(map_err("TARGETS"))?;
        let forked = targets.get(&tgid, 0).is_ok();
        targets
            .insert(
                tgid,
                TargetConfig {
                    model,
                    unwind_slot: 0,
                },
                0,
            )
            .map_err(map_err("TARGETS"))?;
        if !forked {
            self.cover_process(tgid)?;
        }
        Ok(())
    }

    /// Walk this Python process's frames in the kernel at each sample.
    pub fn set_python_target(&mut self, tgid: u32, target: PyTarget) -> Result<()> {
        self.set_per_process("PY_TARGETS", tgid, target)
    }

    /// Write `value` for `tgid` into the per-process map `name`.
    fn set_per_process<V: aya::Pod>(
        &mut self,
        name: &'static str,
        tgid: u32,
        value: V,
    ) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(name)
            .expect("a map of lagtrace's BPF object");
        let mut m: HashMap<_, u32, V> = HashMap::try_from(map).map_err(map_err(name))?;
        m.insert(tgid, value, 0).map_err(map_err(name))
    }

    /// Drop `tgid` from the per-process map `name`, if it is there.
    fn remove_per_process<V: aya::Pod>(&mut self, name: &str, tgid: u32) {
        if let Some(map) = self.ebpf.map_mut(name)
            && let Ok(mut m) = HashMap::<_, u32, V>::try_from(map)
        {
            let _ = m.remove(&tgid);
        }
    }

    /// Read this node process's JS frames from V8's frames at each sample.
    pub fn set_v8_target(&mut self, tgid: u32, offsets: V8Offsets) -> Result<()> {
        self.set_per_process("V8_TARGETS", tgid, offsets)
    }

    /// Stop reading a process's JS frames (it exec'd another program).
    pub fn remove_v8_target(&mut self, tgid: u32) {
        self.remove_per_process::<V8Offsets>("V8_TARGETS", tgid);
    }

    /// The kernel's state of one loop thread.
    pub fn thread(&self, tid: u32) -> Option<ThreadState> {
        let threads: HashMap<_, u32, ThreadState> =
            HashMap::try_from(self.ebpf.map("THREADS")?).ok()?;
        threads.get(&tid, 0).ok()
    }

    /// Load the stack-walking program `full`, or its frame-pointer variant
    /// `{full}_fp` where this kernel refuses it (it lacks `bpf_loop`, 5.17+,
    /// or `bpf_task_pt_regs`, 5.15+). Returns the name loaded.
    fn load_walker<T>(&mut self, full: &'static str, fp: &'static str) -> Result<&'static str>
    where
        T: Loadable,
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        if self.walk_refused.is_none() {
            let prog: &mut T = self.program(full)?;
            match prog.load_once() {
                Ok(()) => return Ok(full),
                Err(e) => {
                    let why = e.to_string();
                    let first = why.lines().next().unwrap_or("").to_string();
                    log::info!("program {full} refused by this kernel, using {fp}: {why}");
                    self.walk_refused = Some(first);
                }
            }
        }
        let prog: &mut T = self.program(fp)?;
        prog.load_once()
            .map_err(attach_err(format!("program {fp}")))?;
        Ok(fp)
    }

    /// Attach all programs. The targets must be set first.
    pub fn attach(&mut self, opts: &ProbeOptions) -> Result<()> {
        // No iteration opens before the arm at the end (see CFG_ARMED), so
        // none misses the scheduler programs (loading the sched_switch
        // walker takes most of a second) or half of its wait hooks.
        let sched_btf = opts.sched && self.task_offsets_known && self.features.tp_btf;
        let candidates = candidates(opts.attach, &self.features, sched_btf)?;
        // The exit-only mode needs the wait-aware sched_switch in place first.
        let waits = candidates
            .first()
            .is_some_and(|(m, _)| *m == AttachMode::ExitTracepoints);
        let mut points: Vec<(&str, &str, String)> = Vec::new();
        points.push(("thread_exit", "sched", "sched_process_exit".into()));
        if opts.children {
            points.push(("process_fork", "sched", "sched_process_fork".into()));
        }
        if opts.select {
            points.push(("process_exec", "sched", "sched_process_exec".into()));
        }
        let sched_btf = opts.sched
            && opts.attach != Attach::Tracepoints
            && self
                .attach_sched_btf(waits)
                .inspect_err(|why| log::info!("off-CPU by classic tracepoints: {why}"))
                .is_ok();
        if opts.sched && !sched_btf {
            let switch = self.load_walker::<TracePoint>("sched_switch", "sched_switch_fp")?;
            points.push((switch, "sched", "sched_switch".into()));
            points.push(("sched_wakeup", "sched", "sched_wakeup".into()));
        }
        for (prog, category, name) in points {
            if !tracefs::has_tracepoint(category, &name) {
                log::warn!("tracepoint {category}:{name} does not exist on this kernel; skipped");
                continue;
            }
            let tp: &mut TracePoint = self.program(prog)?;
            if tp.fd().is_err() {
                tp.load().map_err(attach_err(format!("program {prog}")))?;
            }
            tp.attach(category, &name)
                .map_err(attach_err(format!("tracepoint {category}:{name}")))?;
            self.attached.push(format!("{category}:{name}"));
        }
        match opts.sampling {
            SampleClock::Off => {}
            SampleClock::Tick(_) => {
                let name = self.load_walker::<TracePoint>("tick_sample", "tick_sample_fp")?;
                self.attach_tick(name)?;
            }
            SampleClock::Clock(hz) => {
                let name = self.load_walker::<PerfEvent>("on_cpu_sample", "on_cpu_sample_fp")?;
                self.attach_sampler(name, hz)?;
            }
        }
        let mode = self.attach_iterations(candidates, opts.workers)?;
        self.mode = Some(mode);
        // All at once from here (see CFG_ARMED); the caller then looks for
        // threads already asleep in their wait.
        self.set_flag(CFG_ARMED, true)
    }

    /// Set or clear one of the `CFG_*` bits in the kernel's config.
    pub(super) fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let map = self.ebpf.map_mut("CONFIG").expect("CONFIG map");
        let mut cfg: Array<_, Config> = Array::try_from(map).map_err(map_err("CONFIG"))?;
        let mut c = cfg.get(&0, 0).map_err(map_err("CONFIG"))?;
        if on {
            c.flags |= flag;
        } else {
            c.flags &= !flag;
        }
        cfg.set(0, c, 0).map_err(map_err("CONFIG"))
    }

    /// Every tgid in the targets map (with `--children`, forks add to it).
    pub fn target_pids(&self) -> Vec<u32> {
        self.targets().into_iter().map(|(tgid, _)| tgid).collect()
    }

    /// Every traced tgid, and whether it is in the worker model.
    pub fn target_models(&self) -> Vec<(u32, bool)> {
        self.targets()
            .into_iter()
            .map(|(tgid, c)| (tgid, c.model == MODEL_WORKER))
            .collect()
    }

    fn targets(&self) -> Vec<(u32, TargetConfig)> {
        let Some(map) = self.ebpf.map("TARGETS") else {
            return Vec::new();
        };
        match HashMap::<_, u32, TargetConfig>::try_from(map) {
            Ok(t) => t.iter().filter_map(|r| r.ok()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Stop walking a process's Python frames (it exec'd another program).
    pub fn remove_python_target(&mut self, tgid: u32) {
        self.remove_per_process::<PyTarget>("PY_TARGETS", tgid);
    }

    /// Stop tracing a process that exited (or a thread id the kernel took
    /// for one). Its loop threads stay in the kernel's table until their
    /// last figures are read; the wait points find a known loop thread
    /// without consulting the targets, but a dead one never waits again.
    pub fn remove_target(&mut self, tgid: u32) {
        self.remove_per_process::<TargetConfig>("TARGETS", tgid);
        self.remove_python_target(tgid);
        self.remove_v8_target(tgid);
        self.unsample_process(tgid);
    }

    pub(super) fn program<T>(&mut self, name: &str) -> Result<&mut T>
    where
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        if self.ebpf.program(name).is_none() {
            let have: Vec<&str> = self.ebpf.programs().map(|(n, _)| n).collect();
            return Err(Error::Attach {
                probe: format!("program {name}: not in the BPF object (it has {have:?})"),
                source: aya::programs::ProgramError::UnexpectedProgramType,
            });
        }
        let prog = self.ebpf.program_mut(name).expect("checked above");
        prog.try_into()
            .map_err(attach_err(format!("program {name}")))
    }

    pub(super) fn ebpf_map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }

    pub(super) fn ebpf_map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// The ring buffer of spans and samples; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").expect("EVENTS map");
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }

    /// The ring buffer of execs (`--name`, `--cgroup`); once.
    pub fn take_execs(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EXECS").expect("EXECS map");
        RingBuf::try_from(map).map_err(map_err("EXECS"))
    }

    /// Every loop thread the kernel knows, with its state.
    pub fn threads(&self) -> Result<Vec<(u32, ThreadState)>> {
        let threads: HashMap<_, u32, ThreadState> =
            HashMap::try_from(self.ebpf.map("THREADS").expect("THREADS map"))
                .map_err(map_err("THREADS"))?;
        Ok(threads.iter().filter_map(|r| r.ok()).collect())
    }

    /// Trust `tid` of `tgid` as a loop thread asleep in its wait since
    /// before attach (see `target::parked`), a futex wait if `futex`: its
    /// wake-up starts an iteration, with no probation, at its first switch
    /// onto a CPU or the wait's return, whichever a program sees first. A
    /// thread the kernel already knows is left as it is.
    pub fn seed_parked(&mut self, tgid: u32, tid: u32, futex: bool) -> Result<()> {
        let mut threads: HashMap<_, u32, ThreadState> =
            HashMap::try_from(self.ebpf.map_mut("THREADS").expect("THREADS map"))
                .map_err(map_err("THREADS"))?;
        // SAFETY: ThreadState is Pod (plain integers): all zeroes is valid.
        let mut t: ThreadState = unsafe { std::mem::zeroed() };
        t.tgid = tgid;
        t.in_futex_wait = futex.into();
        t.flags = THREAD_WAKE_BEGINS;
        if threads.insert(tid, t, BPF_NOEXIST).is_err() {
            return Ok(());
        }
        let mut slots: HashMap<_, u32, ThreadSamples> = HashMap::try_from(
            self.ebpf
                .map_mut("THREAD_SAMPLES")
                .expect("THREAD_SAMPLES map"),
        )
        .map_err(map_err("THREAD_SAMPLES"))?;
        // SAFETY: ThreadSamples is Pod; boxed, as it is tens of KiB.
        let zero: Box<ThreadSamples> = unsafe { Box::new_zeroed().assume_init() };
        let _ = slots.insert(tid, zero, BPF_NOEXIST);
        Ok(())
    }

    /// Forget a thread that exited (after its last snapshot was taken).
    pub fn forget_thread(&mut self, tid: u32) {
        if let Ok(mut threads) = HashMap::<_, u32, ThreadState>::try_from(
            self.ebpf.map_mut("THREADS").expect("THREADS map"),
        ) {
            let _ = threads.remove(&tid);
        }
        if let Ok(mut slots) = HashMap::<_, u32, ThreadSamples>::try_from(
            self.ebpf
                .map_mut("THREAD_SAMPLES")
                .expect("THREAD_SAMPLES map"),
        ) {
            let _ = slots.remove(&tid);
        }
    }

    pub fn counters(&self) -> Result<Counters> {
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").expect("COUNTERS map"))
                .map_err(map_err("COUNTERS"))?;
        let sum = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(Counters {
            ringbuf_lost: sum(CTR_RINGBUF_LOST),
            kernel_stack_errors: sum(CTR_KERNEL_STACK_ERRORS),
            no_sample_room: sum(CTR_NO_SAMPLE_ROOM),
            user_ends: std::array::from_fn(|k| sum(CTR_USER_END + k as u32)),
            samples_dropped: sum(CTR_SAMPLES_DROPPED),
            threads_full: sum(CTR_THREADS_FULL),
            targets_full: sum(CTR_TARGETS_FULL),
            samples: sum(CTR_SAMPLES),
            iterations: sum(CTR_ITERATIONS),
            sched_missed: sum(CTR_SCHED_MISSED),
        })
    }

    /// The stack a thread waits in (captured when it left the CPU), as
    /// the kernel holds it for the sample it sends when the thread runs
    /// again. Its `weight_ns` is 0: the wait is not over.
    pub fn pending_sample(&self, tid: u32) -> Option<SampleRec> {
        let map: HashMap<_, u32, ThreadSamples> =
            HashMap::try_from(self.ebpf.map("THREAD_SAMPLES")?).ok()?;
        // Boxed: the value is about 75 KiB.
        let slots: Box<ThreadSamples> = Box::new(map.get(&tid, 0).ok()?);
        SampleRec::from_kernel(&slots.pending).ok()
    }
}
