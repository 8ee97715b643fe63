//! The traced processes: those named with `--pid` and, with `--children`,
//! those they fork. Enrolling one decides its loop model and whether its
//! Python frames can be read, and tells the kernel.
use std::{
    collections::HashMap,
    ops::Deref,
    time::{Duration, Instant},
};

use lagtrace_common::{MODEL_EPOLL, MODEL_WORKER};

use crate::{
    cli::Model,
    error::Result,
    probes::Probes,
    symbolize::{python::is_python, python_live::LivePython},
    target::{Target, exe_id, exe_name, has_live_thread, looks_like_tokio, tgid_of},
};

/// How long after an exec the new interpreter gets to become readable
/// (it is still starting when the exec is first seen).
const REATTACH_WINDOW: Duration = Duration::from_secs(3);

/// Longest one turn of the session loop spends adopting children (a Python
/// reader takes tens of ms to set up); the rest wait for the next turn.
const ADOPT_SLICE: Duration = Duration::from_millis(50);

pub(super) struct Targets {
    list: Vec<Target>,
    threshold_ns: u64,
    /// Processes named on the command line (the first `named` of `list`).
    named: usize,
    /// The executable each target runs (device, inode): an exec changes it.
    exes: HashMap<u32, (u64, u64)>,
    /// Targets that exec'd a Python not yet readable, since when.
    reattach: HashMap<u32, Instant>,
}

impl Deref for Targets {
    type Target = Vec<Target>;

    fn deref(&self) -> &Vec<Target> {
        &self.list
    }
}

fn is_node(pid: u32) -> bool {
    exe_name(pid).is_some_and(|n| n.starts_with("node"))
}

/// The kernel model for a process: `--model`, or judged from the process.
pub fn model_for(pid: u32, flag: Model) -> u32 {
    match flag {
        Model::Epoll => MODEL_EPOLL,
        Model::Worker => MODEL_WORKER,
        Model::Auto if is_python(pid) || is_node(pid) => MODEL_EPOLL,
        Model::Auto if looks_like_tokio(pid) => MODEL_WORKER,
        Model::Auto => MODEL_EPOLL,
    }
}

impl Targets {
    /// Open the processes named on the command line. A thread id stands
    /// for its process (with a note); a process named twice is traced once.
    pub fn open(pids: &[u32], threshold_ns: u64) -> Result<(Self, Vec<String>)> {
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
                threshold_ns,
                named,
                exes,
                reattach: HashMap::new(),
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
        python: &mut LivePython,
    ) -> Result<Option<String>> {
        let mut stream_after = 0;
        let mut note = (model == MODEL_WORKER).then(|| {
            format!(
                "pid {}: worker model (spans end at epoll and futex waits)",
                t.pid
            )
        });
        if is_python(t.pid) {
            match python.reader.attach(t.pid) {
                Ok(version) => {
                    // Read Python frames from an eighth of the threshold on,
                    // so a span's early part has them too.
                    stream_after = self.threshold_ns / 8;
                    python.add_target(t.pid, stream_after);
                    note = Some(format!(
                        "pid {} is Python {version}: Python frames on",
                        t.pid
                    ));
                }
                Err(e) => {
                    note = Some(format!(
                        "pid {} looks like Python but its interpreter cannot be read ({e}): native frames only",
                        t.pid
                    ))
                }
            }
        }
        probes.add_target(t.pid, stream_after, model)?;
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
        python: &mut LivePython,
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
            if self.list.iter().any(|t| t.pid == pid) {
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

    /// A child that exited leaves the kernel's table, which has room for
    /// [`lagtrace_common::MAX_TARGETS`] processes.
    pub fn release(&self, pid: u32, probes: &mut Probes) {
        if self.list.iter().position(|t| t.pid == pid) >= Some(self.named) {
            probes.remove_target(pid);
        }
    }

    /// Notice a target that exec'd another program: its Python reader is
    /// set up again for the new interpreter (retried while it starts), or
    /// Python frames stop, with one note either way.
    pub fn check_exec(&mut self, python: &mut LivePython) -> Vec<String> {
        let mut notes = Vec::new();
        for t in &self.list {
            let Some(now) = exe_id(t.pid) else { continue };
            let Some(before) = self.exes.insert(t.pid, now) else {
                continue;
            };
            if before != now {
                // Reads against the old interpreter's layout stop at once.
                let was_read = python.remove_target(t.pid);
                if is_python(t.pid) {
                    self.reattach.insert(t.pid, Instant::now());
                } else if was_read {
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
            match python.reader.attach(pid) {
                Ok(version) => {
                    self.reattach.remove(&pid);
                    python.add_target(pid, self.threshold_ns / 8);
                    notes.push(format!(
                        "pid {pid} exec'd {exe}: Python {version}, Python frames read again"
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
