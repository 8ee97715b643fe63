//! Which runtime a process is, judged from outside: CPython, Node.js, a
//! tokio binary, or any other epoll loop. That decides its loop model, and
//! for Node whether JS functions can be named (a perf map).
use std::fs;

use lagtrace_common::{MODEL_EPOLL, MODEL_WORKER, WORKER_COMM_PREFIX};

use super::{exe_name, read_comm, tids_of};
use crate::cli::Model;

/// The runtime of a traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Python,
    /// `perf_map`: it writes `/tmp/perf-PID.map` (`--perf-basic-prof`).
    Node {
        perf_map: bool,
    },
    Tokio,
    /// A C loop, uvloop under another name, anything else with epoll.
    Other,
}

impl Runtime {
    pub fn detect(pid: u32) -> Self {
        if is_python(pid) {
            Self::Python
        } else if is_node(pid) {
            Self::Node {
                perf_map: has_perf_map(pid),
            }
        } else if looks_like_tokio(pid) {
            Self::Tokio
        } else {
            Self::Other
        }
    }
}

/// True if the process runs CPython: its executable is named python*, or
/// it has a libpython loaded (mapped executable; a program that only reads
/// the file through a mapping, as lagtrace's own tests do, is no Python).
pub fn is_python(pid: u32) -> bool {
    if exe_name(pid).is_some_and(|n| n.starts_with("python")) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
        m.lines().any(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.contains('x') && l.contains("/libpython3")
        })
    })
}

pub fn is_node(pid: u32) -> bool {
    exe_name(pid).is_some_and(|n| n.starts_with("node"))
}

/// True if the process has written a perf map (`/tmp/perf-NSPID.map` in
/// its own root), as node does with `--perf-basic-prof`. A map older than
/// the process is another process's, left behind under a reused pid.
pub fn has_perf_map(pid: u32) -> bool {
    let ns_pid = super::innermost_id(&format!("/proc/{pid}/status")).unwrap_or(pid);
    let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map")) else {
        return false;
    };
    let started = crate::symbolize::perf_map_owner::started_at(pid);
    match (meta.modified().ok(), started) {
        (Some(w), Some(s)) => w >= s,
        _ => true,
    }
}

/// The kernel model for a process: `--model`, or judged from the process.
pub fn model_for(pid: u32, flag: Model) -> u32 {
    match flag {
        Model::Epoll => MODEL_EPOLL,
        Model::Worker => MODEL_WORKER,
        Model::Auto => match Runtime::detect(pid) {
            Runtime::Tokio => MODEL_WORKER,
            Runtime::Python | Runtime::Node { .. } | Runtime::Other => MODEL_EPOLL,
        },
    }
}

/// How a process runs its loops, judged from outside: tokio binaries run
/// worker threads that park on futexes; everything else (CPython, Node.js,
/// C loops) is an epoll loop. Thread names like `tokio-rt-worker` (older
/// tokio: `tokio-runtime-worker`, cut to 15 bytes by the kernel) are
/// the first hint; the binary's own symbols the second.
pub fn looks_like_tokio(pid: u32) -> bool {
    let named = tids_of(pid).into_iter().any(|tid| {
        read_comm(pid, Some(tid)).is_some_and(|c| c.as_bytes().starts_with(WORKER_COMM_PREFIX))
    });
    named || exe_mentions(pid, b"tokio::runtime")
}

/// True if the target's executable contains `needle` (e.g. in its symbols).
fn exe_mentions(pid: u32, needle: &[u8]) -> bool {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/exe")) else {
        return false;
    };
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_node_python_or_tokio() {
        // The test binary is a Rust program without tokio's runtime.
        assert!(!is_node(std::process::id()));
        assert!(!is_python(std::process::id()));
    }

    #[test]
    fn this_process_started_before_now_and_has_no_perf_map() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let started = crate::symbolize::perf_map_owner::started_at(std::process::id())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            started <= now + 1 && now - started < 3600,
            "{started} vs {now}"
        );
        assert!(!has_perf_map(std::process::id()));
    }
}
