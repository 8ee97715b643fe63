//! Thread names as lagtrace shows them: a thread's own name, or for one
//! without a name its tid and role, looked up once and remembered.
use std::collections::HashMap;

use super::{read_comm, runtime::looks_like_tokio};

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
