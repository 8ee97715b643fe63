//! What lagtrace knows of a traced process from /proc: that it exists, is not
//! a kernel thread, its command, its threads' names, and whether it still
//! runs. Nothing here changes the target.
use std::{collections::HashMap, fs};

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
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|e| e.ok()).any(|e| {
        let tid = e.file_name();
        live_state(state_of(&format!(
            "/proc/{pid}/task/{}/stat",
            tid.to_string_lossy()
        )))
    })
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

/// Thread names, looked up once per thread and remembered after it exits
/// (up to [`MAX_NAMES`] threads; past that the memory starts over). A
/// thread without a name gets its role instead (see [`unnamed`]).
#[derive(Default)]
pub struct ThreadNames {
    names: HashMap<u32, String>,
    /// Per process: its loop threads are tokio workers.
    workers: HashMap<u32, bool>,
}

/// Most thread names remembered: a process that churns threads for days
/// must not grow lagtrace.
const MAX_NAMES: usize = 65_536;

/// What lagtrace knows a traced thread to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Runs an event loop (epoll model: Python, Node.js, C loops).
    Loop,
    /// A runtime worker that parks on futexes (tokio).
    Worker,
}

impl ThreadRole {
    fn word(self) -> &'static str {
        match self {
            ThreadRole::Loop => "loop",
            ThreadRole::Worker => "worker",
        }
    }
}

/// The name shown for a thread that has none (an empty comm): its tid and
/// role in brackets, `[27120 loop]`, which never passes for a name. Live
/// lines and the summary show it as is (see [`thread_label`]); JSON
/// `thread` and the folded root frame carry it too.
pub fn unnamed(tid: u32, role: ThreadRole) -> String {
    format!("[{tid} {}]", role.word())
}

/// How a thread is shown where its ids are wanted: `name[tid]` (with the
/// pid, `name[pid/tid]`), or for a thread without a name `[tid loop]`
/// (`[pid/tid loop]`), not its tid twice.
pub fn thread_label(thread: &str, pid: Option<u32>, tid: u32) -> String {
    let ids = match pid {
        Some(pid) => format!("{pid}/{tid}"),
        None => tid.to_string(),
    };
    let role = [ThreadRole::Loop, ThreadRole::Worker]
        .into_iter()
        .find(|&r| thread == unnamed(tid, r));
    match role {
        Some(r) => format!("[{ids} {}]", r.word()),
        None => format!("{thread}[{ids}]"),
    }
}

impl ThreadNames {
    pub fn get(&mut self, pid: u32, tid: u32, kernel_comm: &[u8]) -> String {
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(&tid) {
            self.names.clear();
            self.workers.clear();
        }
        if let Some(name) = self.names.get(&tid) {
            return name.clone();
        }
        let name = read_comm(pid, Some(tid))
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                let end = kernel_comm
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(kernel_comm.len());
                String::from_utf8_lossy(&kernel_comm[..end]).into_owned()
            });
        let name = if name.trim().is_empty() {
            let worker = *self
                .workers
                .entry(pid)
                .or_insert_with(|| looks_like_tokio(pid));
            unnamed(
                tid,
                if worker {
                    ThreadRole::Worker
                } else {
                    ThreadRole::Loop
                },
            )
        } else {
            name
        };
        self.names.insert(tid, name.clone());
        name
    }
}

/// How a process runs its loops, judged from outside: tokio binaries run
/// worker threads that park on futexes; everything else (CPython, Node.js,
/// C loops) is an epoll loop. Thread names like `tokio-rt-worker` (older
/// tokio: `tokio-runtime-worker`, cut to 15 bytes by the kernel) are
/// the first hint; the binary's own symbols the second.
pub fn looks_like_tokio(pid: u32) -> bool {
    let named = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse().ok()))
                .any(|tid: u32| read_comm(pid, Some(tid)).is_some_and(|c| c.starts_with("tokio-r")))
        })
        .unwrap_or(false);
    named || exe_mentions(pid, b"tokio::runtime")
}

/// True if the target's executable contains `needle` (e.g. in its symbols).
fn exe_mentions(pid: u32, needle: &[u8]) -> bool {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/exe")) else {
        return false;
    };
    bytes.windows(needle.len()).any(|w| w == needle)
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
