//! The traced processes: those named with `--pid` and, with `--children`,
//! those they fork. Enrolling one decides its loop model and whether its
//! Python frames can be read, and tells the kernel.
use std::ops::Deref;

use lagtrace_common::{MODEL_EPOLL, MODEL_WORKER};

use crate::{
    cli::Model,
    error::Result,
    probes::Probes,
    symbolize::{python::is_python, python_live::LivePython},
    target::{Target, exe_name, is_process, looks_like_tokio},
};

pub(super) struct Targets {
    list: Vec<Target>,
    threshold_ns: u64,
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
    pub fn open(pids: &[u32], threshold_ns: u64) -> Result<Self> {
        let list = pids
            .iter()
            .map(|&p| Target::open(p))
            .collect::<Result<_>>()?;
        Ok(Self { list, threshold_ns })
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
    /// thread ids that fork also reports. Returns notes for the user.
    pub fn adopt_children(
        &mut self,
        probes: &mut Probes,
        python: &mut LivePython,
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
