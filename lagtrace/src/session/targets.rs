//! The traced processes: those named with `--pid` and, with `--children`,
//! those they fork. Enrolling one decides its loop model and whether the
//! kernel can walk its Python frames, and tells the kernel.
use std::ops::Deref;

use lagtrace_common::{MODEL_EPOLL, MODEL_WORKER, PyTarget};

use crate::{
    cli::Model,
    error::Result,
    probes::Probes,
    probes::btf::task_fsbase_offset,
    symbolize::{
        cpython::{self, PyFrames},
        python::is_python,
    },
    target::{Target, exe_name, is_process, looks_like_tokio},
};

pub(super) struct Targets {
    list: Vec<Target>,
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

impl Targets {
    pub fn open(pids: &[u32]) -> Result<Self> {
        let list = pids
            .iter()
            .map(|&p| Target::open(p))
            .collect::<Result<_>>()?;
        Ok(Self { list })
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
        probes.add_target(t.pid, 0, model)?;
        Ok(note)
    }

    /// Adopt processes the kernel added on fork (`--children`); drop the
    /// thread ids that fork also reports. Returns notes for the user.
    pub fn adopt_children(
        &mut self,
        probes: &mut Probes,
        python: &mut PyFrames,
        flag: Model,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        for pid in probes.target_pids() {
            if self.list.iter().any(|t| t.pid == pid) {
                continue;
            }
            if !is_process(pid) {
                probes.remove_target(pid);
                continue;
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
            self.list.push(t);
        }
        notes
    }
}
