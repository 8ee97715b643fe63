//! The traced processes: those named with `--pid` and, with `--children`,
//! those they fork. Enrolling one decides its loop model and whether the
//! kernel can walk its Python frames, and tells the kernel.
use std::{
    collections::HashMap,
    ops::Deref,
    time::{Duration, Instant},
};

use lagtrace_common::{MODEL_WORKER, PyTarget};

use crate::{
    cli::Model,
    error::Result,
    probes::Probes,
    probes::btf::task_fsbase_offset,
    symbolize::{
        cpython::{self, PyFrames},
        v8,
    },
    target::{
        Target, exe_id, exe_name, has_live_thread, is_python, model_for,
        parked::{Wait, parked_threads},
        runtime::{has_perf_map, is_node},
        tgid_of,
    },
};

/// Tell the kernel of the loop threads of `pid` asleep in their wait since
/// before they could be seen (see `target::parked`). Called once the
/// programs are armed: a thread that waits later is seen by the kernel
/// itself. An entry the kernel made meanwhile is kept.
pub fn watch_parked(pid: u32, workers: bool, probes: &mut Probes) -> Result<()> {
    let parked = parked_threads(pid, workers);
    for p in &parked {
        probes.seed_parked(pid, p.tid, p.wait == Wait::UntimedFutex)?;
    }
    if !parked.is_empty() {
        log::info!(
            "pid {pid}: loop threads asleep at attach, watched from their wake-up: {parked:?}"
        );
    }
    Ok(())
}

/// With `-v`, the kernel's view of each loop thread at the end: a stall
/// with no span is told apart as a thread never seen, one still on
/// probation, or one whose iteration never began.
pub fn log_known_threads(threads: &[(u32, lagtrace_common::ThreadState)]) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let known: Vec<String> = threads
        .iter()
        .map(|(tid, t)| {
            format!(
                "{tid} (pid {}): {} iterations begun, {} ended, probation {}, flags {:#x}, \
                 in futex wait {}",
                t.tgid, t.iteration, t.iterations, t.probation, t.flags, t.in_futex_wait
            )
        })
        .collect();
    log::info!("loop threads the kernel knows at exit: {known:?}");
}

/// How long after an exec the new interpreter gets to become readable
/// (it is still starting when the exec is first seen).
const REATTACH_WINDOW: Duration = Duration::from_secs(3);

/// Longest one turn of the session loop spends adopting children (a Python
/// reader takes tens of ms to set up); the rest wait for the next turn.
const ADOPT_SLICE: Duration = Duration::from_millis(50);

pub(super) struct Targets {
    list: Vec<Target>,
    /// Processes named on the command line (the first `named` of `list`).
    named: usize,
    /// The executable each target runs (device, inode): an exec changes it.
    exes: HashMap<u32, (u64, u64)>,
    /// Targets that exec'd a Python not yet readable, since when.
    reattach: HashMap<u32, Instant>,
    /// Exited targets dropped from `list` (see `churn.rs`), the latest
    /// [`MAX_PRUNED_KEPT`]: their late spans are not adopted again.
    pub pruned: std::collections::VecDeque<u32>,
}

/// Pruned pids remembered, so a late span does not re-adopt one.
const MAX_PRUNED_KEPT: usize = 4096;

impl Deref for Targets {
    type Target = Vec<Target>;

    fn deref(&self) -> &Vec<Target> {
        &self.list
    }
}

/// Find a CPython target's interpreter and tell the kernel how to walk its
/// frames. Returns its version.
fn enroll_python(pid: u32, probes: &mut Probes, python: &mut PyFrames) -> Result<String, String> {
    let it = cpython::interp::find(pid).map_err(|e| e.to_string())?;
    cpython::check(&it)?;
    let task_fsbase = task_fsbase_offset().map_err(|e| e.to_string())?;
    probes
        .set_python_target(
            pid,
            PyTarget {
                interp_head_addr: it.interp_head_addr(),
                task_fsbase,
                _pad: 0,
                offsets: it.layout.kernel,
            },
        )
        .map_err(|e| e.to_string())?;
    let version = it.version_string();
    python.add(it);
    Ok(version)
}

/// Tell the kernel how to read a node target's JS frames, from the V8
/// metadata of the binary it runs.
fn enroll_node(pid: u32, probes: &mut Probes) -> Result<(), String> {
    if v8::turned_off() {
        return Err("LAGTRACE_V8=off".into());
    }
    let layout = v8::metadata::for_pid(pid)?;
    probes
        .set_v8_target(pid, layout.kernel())
        .map_err(|e| e.to_string())
}

impl Targets {
    /// Open the processes named on the command line. A thread id stands
    /// for its process (with a note); a process named twice is traced once.
    pub fn open(pids: &[u32]) -> Result<(Self, Vec<String>)> {
        let mut list: Vec<Target> = Vec::new();
        let mut notes = Vec::new();
        for &id in pids {
            let pid = match tgid_of(id) {
                Some(tgid) if tgid != id => {
                    notes.push(format!(
                        "{id} is a thread of process {tgid}: tracing process {tgid}"
                    ));
                    tgid
                }
                _ => id,
            };
            if list.iter().any(|t| t.pid == pid) {
                continue;
            }
            list.push(Target::open(pid)?);
        }
        let exes = list
            .iter()
            .filter_map(|t| Some((t.pid, exe_id(t.pid)?)))
            .collect();
        let named = list.len();
        Ok((
            Self {
                list,
                named,
                exes,
                reattach: HashMap::new(),
                pruned: Default::default(),
            },
            notes,
        ))
    }

    /// Tell the kernel about a target and set up its Python reader.
    /// Returns a note for the user.
    pub fn enroll(
        &self,
        t: &Target,
        model: u32,
        probes: &mut Probes,
        python: &mut PyFrames,
    ) -> Result<Option<String>> {
        let mut note = (model == MODEL_WORKER).then(|| {
            format!(
                "pid {}: worker model (spans end at epoll and futex waits)",
                t.pid
            )
        });
        if is_python(t.pid) {
            note = Some(match enroll_python(t.pid, probes, python) {
                Ok(version) => format!("pid {} is Python {version}: Python frames on", t.pid),
                Err(e) => format!(
                    "pid {} looks like Python but its frames cannot be read ({e}): native frames only",
                    t.pid
                ),
            });
        }
        if is_node(t.pid) {
            let v8 = enroll_node(t.pid, probes);
            note = match v8 {
                Ok(()) => Some(format!(
                    "pid {} is node: JS frames read from V8's frames",
                    t.pid
                )),
                Err(_) if has_perf_map(t.pid) => note,
                Err(e) => Some(format!(
                    "pid {} is node without a perf map, and its V8 frames cannot be read ({e}): JS functions show as [unknown]; start node with --perf-basic-prof (and --interpreted-frames-native-stack) to name them",
                    t.pid
                )),
            };
        }
        probes.add_target(t.pid, model)?;
        // A target enrolled before attach has its parked threads found once
        // the programs run (see `watch_parked`).
        if probes.mode.is_some() {
            watch_parked(t.pid, model == MODEL_WORKER, probes)?;
        }
        Ok(note)
    }

    /// Adopt processes the kernel added on fork (`--children`); drop the
    /// thread ids that fork also reports. `seen`: processes whose loop
    /// threads or spans the kernel reported, with their command; a child
    /// that exited before it could be adopted is still adopted from them,
    /// so its spans get a summary. Returns notes for the user.
    pub fn adopt_children(
        &mut self,
        probes: &mut Probes,
        python: &mut PyFrames,
        flag: Model,
        seen: &[(u32, String)],
    ) -> Vec<String> {
        let started = Instant::now();
        let mut notes = Vec::new();
        let mut candidates: Vec<u32> = probes.target_pids();
        candidates.extend(seen.iter().map(|(p, _)| *p));
        candidates.sort_unstable();
        candidates.dedup();
        for pid in candidates {
            if self.list.iter().any(|t| t.pid == pid) || self.pruned.contains(&pid) {
                continue;
            }
            if started.elapsed() > ADOPT_SLICE {
                break;
            }
            let comm_seen = seen.iter().find(|(p, _)| *p == pid).map(|(_, c)| c);
            match tgid_of(pid) {
                // A new thread of a traced process, not a process.
                Some(tgid) if tgid != pid => {
                    probes.remove_target(pid);
                    continue;
                }
                Some(_) if has_live_thread(pid) => {}
                // Gone before it could be read. The kernel saw its loop,
                // so it was a process: adopt it as exited.
                _ => {
                    probes.remove_target(pid);
                    if let Some(comm) = comm_seen {
                        notes.push(format!(
                            "following child pid {pid} ({comm}), which exited before it could be read: its spans are kept, without Python frames"
                        ));
                        self.list.push(Target {
                            pid,
                            comm: comm.clone(),
                            ns_pid: None,
                        });
                    }
                    continue;
                }
            }
            let Ok(t) = Target::open(pid) else { continue };
            let model = model_for(pid, flag);
            match self.enroll(&t, model, probes, python) {
                Ok(note) => notes.push(format!(
                    "following child pid {} ({}){}",
                    t.pid,
                    t.comm,
                    note.map(|n| format!("; {n}")).unwrap_or_default()
                )),
                Err(e) => log::warn!("cannot follow child pid {pid}: {e}"),
            }
            if let Some(id) = exe_id(pid) {
                self.exes.insert(pid, id);
            }
            self.list.push(t);
        }
        notes
    }

    /// Adopt the descendants the named targets already had at attach
    /// (`--children` on a pre-fork master): all of them, however long
    /// their Python readers take to set up. Returns notes for the user.
    pub fn adopt_existing(
        &mut self,
        probes: &mut Probes,
        python: &mut PyFrames,
        flag: Model,
    ) -> Vec<String> {
        let roots: Vec<u32> = self.list.iter().map(|t| t.pid).collect();
        let found: Vec<(u32, String)> = super::descendants::descendants(&roots)
            .into_iter()
            .filter_map(|pid| Some((pid, crate::target::read_comm(pid, None)?)))
            .collect();
        let mut notes = Vec::new();
        // Each call adopts for one slice; go on while it makes progress.
        loop {
            let before = self.list.len();
            notes.extend(self.adopt_children(probes, python, flag, &found));
            let left = found
                .iter()
                .any(|(p, _)| !self.list.iter().any(|t| t.pid == *p));
            if !left || self.list.len() == before {
                break;
            }
        }
        notes
    }

    /// Trace a process selected by `--name`/`--cgroup` after start. One
    /// caught at its exec has no interpreter yet: its Python frames are
    /// looked for on the next turns, as after a target's exec.
    pub fn adopt_selected(
        &mut self,
        pid: u32,
        flag: Model,
        probes: &mut Probes,
        python: &mut PyFrames,
    ) -> Result<String> {
        let t = Target::open(pid)?;
        let model = model_for(pid, flag);
        let note = if is_python(pid) && cpython::interp::find(pid).is_err() {
            probes.add_target(pid, model)?;
            self.reattach.insert(pid, Instant::now());
            None
        } else {
            self.enroll(&t, model, probes, python)?
        };
        if let Some(id) = exe_id(pid) {
            self.exes.insert(pid, id);
        }
        let line = format!(
            "tracing pid {} ({}){}",
            t.pid,
            t.describe(),
            note.map(|n| format!("; {n}")).unwrap_or_default()
        );
        self.list.push(t);
        Ok(line)
    }

    /// A child that exited leaves the kernel's table, which has room for
    /// [`lagtrace_common::MAX_TARGETS`] processes.
    /// Returns whether it left the kernel's table.
    pub fn release(&self, pid: u32, probes: &mut Probes) -> bool {
        let adopted = self.list.iter().position(|t| t.pid == pid) >= Some(self.named);
        if adopted {
            probes.remove_target(pid);
        }
        adopted
    }

    /// Drop the oldest exited adopted targets past `keep` from the list
    /// (and from `exited`); returns their pids. Targets named on the
    /// command line stay.
    pub fn prune_exited(&mut self, exited: &mut Vec<u32>, keep: usize) -> Vec<u32> {
        let gone: Vec<u32> = self.list[self.named..]
            .iter()
            .map(|t| t.pid)
            .filter(|pid| exited.contains(pid))
            .collect();
        let drop: Vec<u32> = gone[..gone.len().saturating_sub(keep)].to_vec();
        if drop.is_empty() {
            return drop;
        }
        self.list.retain(|t| !drop.contains(&t.pid));
        exited.retain(|pid| !drop.contains(pid));
        for pid in &drop {
            self.exes.remove(pid);
            self.reattach.remove(pid);
            self.pruned.push_back(*pid);
        }
        while self.pruned.len() > MAX_PRUNED_KEPT {
            self.pruned.pop_front();
        }
        drop
    }

    /// Notice a target that exec'd another program: the kernel walks the
    /// new interpreter's frames once it is found (retried while it starts),
    /// or Python frames stop, with one note either way.
    pub fn check_exec(&mut self, probes: &mut Probes, python: &mut PyFrames) -> Vec<String> {
        let mut notes = Vec::new();
        for t in &self.list {
            let Some(now) = exe_id(t.pid) else { continue };
            let Some(before) = self.exes.insert(t.pid, now) else {
                continue;
            };
            if before != now {
                // Walks with the old interpreter's layout stop at once.
                probes.remove_python_target(t.pid);
                probes.remove_v8_target(t.pid);
                let was_walked = python.remove(t.pid);
                if is_python(t.pid) {
                    self.reattach.insert(t.pid, Instant::now());
                } else if was_walked {
                    let exe = exe_name(t.pid).unwrap_or_else(|| "?".into());
                    notes.push(format!(
                        "pid {} exec'd {exe}, which is not Python: Python frames stop",
                        t.pid
                    ));
                }
            }
        }
        let pending: Vec<(u32, Instant)> = self.reattach.iter().map(|(p, t)| (*p, *t)).collect();
        for (pid, since) in pending {
            let exe = exe_name(pid).unwrap_or_else(|| "?".into());
            match enroll_python(pid, probes, python) {
                Ok(version) => {
                    self.reattach.remove(&pid);
                    notes.push(format!(
                        "pid {pid} exec'd {exe}: Python {version}, Python frames on again"
                    ));
                }
                Err(e) if since.elapsed() > REATTACH_WINDOW || !has_live_thread(pid) => {
                    self.reattach.remove(&pid);
                    notes.push(format!(
                        "pid {pid} exec'd {exe}, whose interpreter cannot be read ({e}): Python frames stop"
                    ));
                }
                Err(_) => {}
            }
        }
        notes
    }
}
