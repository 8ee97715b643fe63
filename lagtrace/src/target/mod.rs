//! What lagtrace knows of a traced process, all in this module: that it
//! exists and is not a kernel thread, its command and PID namespace, and
//! whether it still runs (here); which runtime it is, and so its loop model
//! and whether it has a perf map (`runtime`); its threads' names and roles
//! (`threads`); which of its workers are parked when lagtrace attaches
//! (`parked`). Everything is read from /proc; nothing here changes the
//! target. (Its Python layout, once found, lives with the Python reader in
//! `symbolize::cpython`.)
pub mod parked;
pub mod runtime;
pub mod threads;

use std::fs;

pub use runtime::{Runtime, is_python, looks_like_tokio, model_for};
pub use threads::{ThreadNames, ThreadRole, thread_label, unnamed};

use crate::error::{Error, Result};

/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    /// The pid as the target sees it in its own PID namespace, where it differs.
    pub ns_pid: Option<u32>,
}

impl Target {
    /// Check that `pid` is a live user process and describe it. A process
    /// whose main thread has exited (`pthread_exit`) while others run is
    /// live: its leader is a zombie, its other threads are not.
    pub fn open(pid: u32) -> Result<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|_| Error::NoSuchProcess { pid })?;
        let fields = stat_fields(&stat).ok_or(Error::NoSuchProcess { pid })?;
        let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            return Err(Error::KernelThread { pid });
        }
        if !has_live_thread(pid) {
            return Err(Error::Exited { pid });
        }
        Ok(Self {
            pid,
            comm: read_comm(pid, None).unwrap_or_else(|| "?".into()),
            ns_pid: ns_pid(pid),
        })
    }

    /// `python3`, or `python3, pid 1 in its namespace` for a container.
    pub fn describe(&self) -> String {
        match self.ns_pid {
            Some(ns) => format!("{}, pid {ns} in its namespace", self.comm),
            None => self.comm.clone(),
        }
    }

    /// True while the process exists with a thread that is not a zombie.
    pub fn alive(&self) -> bool {
        has_live_thread(self.pid)
    }
}

/// The state letter of a task (`R`, `S`, `Z`…), from its stat file.
fn state_of(stat_path: &str) -> Option<char> {
    let stat = fs::read_to_string(stat_path).ok()?;
    stat_fields(&stat)?.first()?.chars().next()
}

fn live_state(state: Option<char>) -> bool {
    !matches!(state, Some('Z' | 'X') | None)
}

/// True if process `pid` has a thread that is not a zombie. The leader
/// first (the common case, one read); when it is a zombie, the others.
pub fn has_live_thread(pid: u32) -> bool {
    if live_state(state_of(&format!("/proc/{pid}/stat"))) {
        return true;
    }
    tids_of(pid)
        .into_iter()
        .any(|tid| live_state(state_of(&format!("/proc/{pid}/task/{tid}/stat"))))
}

/// The thread ids of process `pid` (none if it is gone).
pub fn tids_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The process a task id belongs to: `id` itself for a process, its thread
/// group's leader for a thread id (which /proc resolves though it does not
/// list it).
pub fn tgid_of(id: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Fields of /proc/PID/stat after the `(comm)`, which may hold spaces.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// The command name of a process or of one of its threads.
pub fn read_comm(pid: u32, tid: Option<u32>) -> Option<String> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/comm"),
        None => format!("/proc/{pid}/comm"),
    };
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The innermost id of a task in its own PID namespace: the last number of
/// the NSpid line of `/proc/PID/status` or `/proc/PID/task/TID/status`.
pub fn innermost_id(status_path: &str) -> Option<u32> {
    let status = fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The innermost pid of `pid`, if it differs.
fn ns_pid(pid: u32) -> Option<u32> {
    innermost_id(&format!("/proc/{pid}/status")).filter(|&inner| inner != pid)
}

/// The file name of a process's executable, e.g. `python3.12`.
pub fn exe_name(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// The executable a process runs, as (device, inode): an exec changes it
/// even when the new program has the same name.
pub fn exe_id(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// True for a process (as opposed to a thread id) that is alive.
pub fn is_process(pid: u32) -> bool {
    tgid_of(pid) == Some(pid)
}

/// Refuse early, with the capability names, when this process cannot load
/// BPF programs; the kernel's own EPERM later says much less.
pub fn check_privileges() -> Result<()> {
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |cap: u64| cap_eff & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Privileges {
        what: format!("not root and without {}", missing.join(" and ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let s = "42 (a b) c) S 1 42 42 0 -1 4194560 0 0";
        assert_eq!(stat_fields(s).unwrap()[0], "S");
        assert_eq!(stat_fields(s).unwrap()[6], "4194560");
    }

    #[test]
    fn a_thread_without_a_name_shows_its_role() {
        let mut names = ThreadNames::default();
        let gone = u32::MAX - 1;
        assert_eq!(names.get(gone, gone, &[0; 16]), format!("[{gone} loop]"));
        assert_eq!(names.get(gone, gone - 1, b"uv-loop\0"), "uv-loop");
        let unnamed_label = thread_label(&format!("[{gone} loop]"), Some(7), gone);
        assert_eq!(unnamed_label, format!("[7/{gone} loop]"));
        assert_eq!(thread_label("uv-loop", None, 12), "uv-loop[12]");
        // A name that only looks like another thread's label is a name.
        assert_eq!(thread_label("[5 loop]", None, 12), "[5 loop][12]");
    }

    #[test]
    fn self_is_a_live_user_process() {
        let me = Target::open(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(matches!(
            Target::open(u32::MAX - 1),
            Err(Error::NoSuchProcess { .. })
        ));
    }

    #[test]
    fn a_thread_id_resolves_to_its_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_eq!(tgid_of(tid), Some(std::process::id()));
        assert!(!is_process(tid));
        stop_tx.send(()).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn kthreadd_is_refused() {
        // pid 2 is kthreadd on Linux hosts; in a container it may be missing.
        match Target::open(2) {
            Err(Error::KernelThread { pid: 2 }) | Err(Error::NoSuchProcess { .. }) => {}
            Ok(t) => eprintln!("SKIP: pid 2 is {} here, not kthreadd", t.comm),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}
