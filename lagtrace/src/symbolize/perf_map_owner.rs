//! Whose perf map `/tmp/perf-PID.map` is. The file is named by pid only,
//! so one left behind by an earlier process whose pid was reused (or by
//! the program this process ran before an `exec`) would name the new
//! process's JIT code with another program's symbols.
//!
//! A map counts only if it was written after the process started (its
//! `starttime` in `/proc/PID/stat` plus the boot time) and after the last
//! exec lagtrace saw. The exec time is not in `/proc` (an exec keeps the
//! start time), so it is the moment the new executable was noticed: a map
//! the new program wrote before that counts again from its next write
//! (JITs append as they compile). This module only reads `/proc`; it never
//! opens the map itself.
use std::time::{Duration, SystemTime};

use crate::target::exe_id;

/// The process a perf map must have been written by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// (dev, inode) of `/proc/PID/exe` when last checked.
    exe: Option<(u64, u64)>,
    /// Maps last modified before this are another program's.
    not_before: SystemTime,
}

impl Owner {
    /// The process now at `pid`; `None` if it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            exe: exe_id(pid),
            not_before: started_at(pid)?,
        })
    }

    /// Check again for an exec: true if the process now runs another
    /// executable, and from now on only maps written after this call count.
    pub fn exec_seen(&mut self, pid: u32) -> bool {
        let now = exe_id(pid);
        if now.is_none() || now == self.exe {
            return false;
        }
        self.exe = now;
        self.not_before = self.not_before.max(SystemTime::now());
        true
    }

    /// Whether a map last modified at `mtime` may be this process's.
    pub fn wrote(&self, mtime: SystemTime) -> bool {
        mtime >= self.not_before
    }

    #[cfg(test)]
    pub fn at(not_before: SystemTime) -> Self {
        Self {
            exe: None,
            not_before,
        }
    }
}

/// When a process started: the boot time (`btime` of `/proc/stat`, whole
/// seconds, so up to a second early) plus its `starttime` (field 22 of
/// `/proc/PID/stat`, in clock ticks since boot; see proc_pid_stat(5)).
pub fn started_at(pid: u32) -> Option<SystemTime> {
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'; starttime is the 20th after it.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)?;
    let since_boot =
        Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_starts_after_its_parent_and_before_now() {
        let me = started_at(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let started = started_at(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let started = started.unwrap();
        // btime is whole seconds: allow one second of slack on each side.
        assert!(
            started + Duration::from_secs(1) >= me,
            "{started:?} vs {me:?}"
        );
        assert!(started <= SystemTime::now() + Duration::from_secs(1));
        assert!(started_at(u32::MAX).is_none());
    }

    #[test]
    fn after_an_exec_only_newer_maps_count() {
        use std::{io::Write, process::Stdio, time::Instant};
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut owner = Owner::of(pid).unwrap();
        let before = SystemTime::now();
        assert!(!owner.exec_seen(pid), "no exec yet");
        assert!(owner.wrote(before), "written after the start");
        let sh = exe_id(pid);
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while exe_id(pid) == sh && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let execd = exe_id(pid) != sh;
        let seen = owner.exec_seen(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(execd, "sh did not exec sleep within 10 s");
        assert!(seen);
        assert!(
            !owner.wrote(before),
            "written by the program before the exec"
        );
        assert!(owner.wrote(SystemTime::now() + Duration::from_millis(1)));
    }
}
