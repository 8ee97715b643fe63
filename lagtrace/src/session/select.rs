//! `--name` and `--cgroup`: which processes are targets besides `--pid`.
//!
//! A process matches when a `--name` regex matches its command name or its
//! command line, or when it lives in a `--cgroup` (or below it). Processes
//! that match at start are found by walking /proc; later ones arrive as
//! execs from the kernel (`probes/exec.rs` in lagtrace-ebpf) and, for a
//! cgroup, by re-reading its `cgroup.procs` (a fork without exec stays in
//! its parent's cgroup). This module only decides; `targets.rs` enrolls.
//! It never follows symlinks out of /proc or the cgroup mount.
use std::{
    collections::{HashMap, HashSet},
    fs,
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, RingBuf};
use lagtrace_common::{EVENT_EXEC, EventHeader, ExecEvent};
use regex::Regex;

use super::targets::Targets;
use crate::{cli::Model, probes::Probes, symbolize::cpython::PyFrames, unwind::UnwindTables};

/// What went wrong with a `--cgroup` before anything was attached.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("`{}` is not a cgroup v2 directory (looked for it under {})", path.display(), root.display())]
    NotACgroup { path: PathBuf, root: PathBuf },
}

/// One `--cgroup`: its directory, and its path as /proc/PID/cgroup shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSel {
    pub dir: PathBuf,
    /// Relative to the v2 root, with a leading `/` (`/` for the root).
    pub rel: String,
    /// As the user wrote it: the `service` label.
    pub given: String,
}

impl CgroupSel {
    /// Whether a process whose v2 cgroup is `rel` is in this one or below.
    pub fn contains(&self, rel: &str) -> bool {
        self.rel == "/"
            || rel == self.rel
            || rel
                .strip_prefix(self.rel.as_str())
                .is_some_and(|r| r.starts_with('/'))
    }
}

/// The v2 hierarchy's mount point from a mountinfo text: `/sys/fs/cgroup`
/// on a pure v2 host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn v2_root_in(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect();
    // Several mounts (a container's, bind mounts): the shortest is the host's.
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

/// Resolve a `--cgroup` argument: a directory under the v2 mount, or a path
/// relative to it (with or without a leading `/`, as /proc/PID/cgroup
/// shows it).
pub fn resolve_cgroup(arg: &Path, root: &Path) -> Result<CgroupSel, SelectError> {
    let given = arg.display().to_string();
    let not = || SelectError::NotACgroup {
        path: arg.to_path_buf(),
        root: root.to_path_buf(),
    };
    let candidates = [arg.to_path_buf(), root.join(given.trim_start_matches('/'))];
    for c in candidates {
        let Ok(dir) = c.canonicalize() else { continue };
        let Ok(rest) = dir.strip_prefix(root) else {
            continue;
        };
        if !dir.join("cgroup.procs").is_file() {
            continue;
        }
        let rel = format!("/{}", rest.display());
        let rel = if rel == "/" {
            rel
        } else {
            rel.trim_end_matches('/').to_string()
        };
        return Ok(CgroupSel { dir, rel, given });
    }
    Err(not())
}

/// The target selection of a session.
#[derive(Debug, Default)]
pub struct Selection {
    names: Vec<Regex>,
    cgroups: Vec<CgroupSel>,
    /// What selected each traced process (`service` label).
    services: HashMap<u32, String>,
    /// Matching processes left out by `--max-targets` (warned about once).
    pub over_limit: HashSet<u32>,
}

/// A process's v2 cgroup, relative to the v2 root (the `0::` line).
fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|s| s.trim_end().to_string())
}

/// A process's command line, NULs as spaces.
fn cmdline_of(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let s = String::from_utf8_lossy(&raw).replace('\0', " ");
    s.trim_end().to_string()
}

impl Selection {
    pub fn new(names: &[Regex], cgroups: &[PathBuf]) -> Result<Self, SelectError> {
        let cgroups = if cgroups.is_empty() {
            Vec::new()
        } else {
            let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let root = v2_root_in(&info).ok_or(SelectError::NoCgroup2)?;
            cgroups
                .iter()
                .map(|c| resolve_cgroup(c, &root))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            names: names.to_vec(),
            cgroups,
            services: HashMap::new(),
            over_limit: HashSet::new(),
        })
    }

    /// Whether anything is selected besides `--pid`.
    pub fn active(&self) -> bool {
        !self.names.is_empty() || !self.cgroups.is_empty()
    }

    /// What selects `pid`, if anything: the regex or the cgroup as given.
    /// lagtrace itself (whose command line holds the regex) never matches.
    pub fn matches(&self, pid: u32) -> Option<String> {
        if pid == std::process::id() || !crate::target::is_process(pid) {
            return None;
        }
        if !self.names.is_empty() {
            let comm = crate::target::read_comm(pid, None).unwrap_or_default();
            let cmdline = cmdline_of(pid);
            if let Some(re) = self
                .names
                .iter()
                .find(|re| re.is_match(&comm) || re.is_match(&cmdline))
            {
                return Some(re.as_str().to_string());
            }
        }
        if !self.cgroups.is_empty() {
            let rel = cgroup_of(pid)?;
            if let Some(c) = self.cgroups.iter().find(|c| c.contains(&rel)) {
                return Some(c.given.clone());
            }
        }
        None
    }

    /// Every running process that matches, with what selected it.
    pub fn scan(&self) -> Vec<(u32, String)> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut out: Vec<(u32, String)> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, self.matches(pid)?)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Processes in the selected cgroups now (forks without exec land here).
    pub fn cgroup_members(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for c in &self.cgroups {
            let mut stack = vec![c.dir.clone()];
            while let Some(dir) = stack.pop() {
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    out.extend(
                        procs
                            .lines()
                            .filter_map(|l| l.trim().parse::<u32>().ok())
                            .filter(|&p| p != std::process::id())
                            .map(|p| (p, c.given.clone())),
                    );
                }
                if let Ok(rd) = fs::read_dir(&dir) {
                    stack.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
        out.sort_unstable();
        out.dedup_by_key(|(p, _)| *p);
        out
    }

    pub fn note_service(&mut self, pid: u32, service: String) {
        self.services.insert(pid, service);
    }

    /// The `--name`/`--cgroup` that selected a traced process.
    pub fn service(&self, pid: u32) -> Option<&str> {
        self.services.get(&pid).map(String::as_str)
    }

    /// Describe the selection for the start line.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .names
            .iter()
            .map(|r| format!("--name {}", r.as_str()))
            .collect();
        parts.extend(
            self.cgroups
                .iter()
                .map(|c| format!("--cgroup {}", c.dir.display())),
        );
        parts.join(", ")
    }
}

/// Enroll the candidates that match and are not traced yet, while fewer
/// than `max` traced processes are alive. `candidates`: pids with what
/// selected them when already known (cgroup members), else `None` (execs:
/// checked here). Returns notes for the user.
#[expect(
    clippy::too_many_arguments,
    reason = "the session's parts, borrowed apart"
)]
pub(super) fn adopt(
    sel: &mut Selection,
    candidates: Vec<(u32, Option<String>)>,
    targets: &mut Targets,
    max: u32,
    flag: Model,
    probes: &mut Probes,
    python: &mut PyFrames,
    tables: &mut UnwindTables,
) -> Vec<String> {
    let mut notes = Vec::new();
    for (pid, known) in candidates {
        if targets.iter().any(|t| t.pid == pid) {
            continue;
        }
        let Some(service) = known.or_else(|| sel.matches(pid)) else {
            continue;
        };
        let live = targets.iter().filter(|t| t.alive()).count();
        if live >= max as usize {
            if sel.over_limit.insert(pid) {
                notes.push(format!(
                    "warning: pid {pid} matches {service} but {max} processes are traced already (--max-targets): not traced; raise --max-targets or narrow the selection"
                ));
            }
            continue;
        }
        match targets.adopt_selected(pid, flag, probes, python) {
            Ok(note) => {
                if let Err(e) = tables.add_process(pid, probes) {
                    log::debug!("no unwind table for pid {pid}: {e}");
                }
                sel.note_service(pid, service);
                notes.push(note);
            }
            // Gone already, or a kernel thread: nothing to trace.
            Err(e) => log::debug!("pid {pid} matched but cannot be traced: {e}"),
        }
    }
    notes
}

/// The pids of the execs the kernel sent since the last call, checked
/// against the record layout.
pub fn drain_execs(ring: &mut RingBuf<MapData>) -> Vec<u32> {
    let mut pids = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<ExecEvent>() {
            log::warn!("dropped a short exec record of {} bytes", item.len());
            continue;
        }
        // SAFETY: the length was checked above; ExecEvent is Pod (integers
        // and byte arrays only) and read_unaligned copes with any alignment.
        let ev: ExecEvent = unsafe { item.as_ptr().cast::<ExecEvent>().read_unaligned() };
        let EventHeader { kind, size, .. } = ev.header;
        if kind != EVENT_EXEC || size as usize != size_of::<ExecEvent>() {
            log::warn!("dropped an exec record of kind {kind}, size {size}");
            continue;
        }
        pids.push(ev.header.tgid);
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_in_hybrid_and_pure_hosts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_root_in("30 25 0:26 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn a_cgroup_contains_its_descendants_only() {
        let c = CgroupSel {
            dir: "/sys/fs/cgroup/a/b".into(),
            rel: "/a/b".into(),
            given: "a/b".into(),
        };
        assert!(c.contains("/a/b"));
        assert!(c.contains("/a/b/c"));
        assert!(!c.contains("/a/bc"));
        assert!(!c.contains("/a"));
    }

    #[test]
    fn resolves_relative_and_absolute_paths() {
        let root = std::env::temp_dir().join(format!("lagtrace-cg-{}", std::process::id()));
        let leaf = root.join("svc.slice/api.service");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(leaf.join("cgroup.procs"), "").unwrap();
        let root = root.canonicalize().unwrap();
        for arg in [
            "svc.slice/api.service",
            "/svc.slice/api.service",
            leaf.to_str().unwrap(),
        ] {
            let c = resolve_cgroup(Path::new(arg), &root).unwrap();
            assert_eq!(c.rel, "/svc.slice/api.service", "{arg}");
        }
        assert!(resolve_cgroup(Path::new("nope"), &root).is_err());
        // A directory outside the hierarchy is refused.
        assert!(resolve_cgroup(Path::new("/tmp"), &root).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
