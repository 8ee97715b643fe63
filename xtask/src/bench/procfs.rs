//! Reading processes' costs from /proc: CPU time (clock-tick utime + stime
//! from `stat`, ns run time from each thread's `schedstat`), peak RSS
//! (`VmHWM`), and spotting other lagtrace processes that would skew a round.
use std::fs;

use anyhow::{Context as _, Result};

pub fn first_number(s: &str) -> Option<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (clock ticks) from the text of /proc/<pid>/stat.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip past
    // its last ')'. Then state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of a process (all its threads, dead ones included), in ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    stat_ticks(&stat).with_context(|| format!("unexpected {path}: {stat}"))
}

/// Run time of a process's live threads, in ns (schedstat's first field).
pub fn sched_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| first_number(&s))
        .sum()
}

/// VmHWM (peak resident set) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_hwm(&status).with_context(|| format!("no VmHWM in {path}"))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(first_number)
}

/// Pids of lagtrace processes other than `ours`: someone else tracing on
/// this machine attaches the same system-wide tracepoints, so a round run
/// meanwhile is not really "untraced".
pub fn other_lagtraces(ours: Option<u32>) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| Some(pid) != ours)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "lagtrace")
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "123 (we ird) proc) S 1 2 3 4 5 6 7 8 9 10 17 26 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat), Some(43));
        assert_eq!(stat_ticks("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345));
        assert_eq!(first_number("abc 42 7"), Some(42));
    }

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 20 {}
        assert!(sched_cpu_ns(pid) > 0);
        assert!(cpu_ticks(pid).is_ok());
        assert!(vm_hwm_kib(pid).unwrap() > 0);
        assert!(!other_lagtraces(None).contains(&pid));
    }
}
