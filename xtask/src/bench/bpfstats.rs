//! The kernel's own accounting of BPF programs: `kernel.bpf_stats_enabled`
//! (switched on for the kernel-cost section only, and always switched back)
//! and per-program `run_cnt` / `run_time_ns` from `bpftool prog show -j`,
//! for exactly the programs one lagtrace process has loaded.
use std::{collections::BTreeMap, fs, process::Command, time::Instant};

use anyhow::{Context as _, Result};

use crate::util::{capture, run};

const SYSCTL: &str = "kernel.bpf_stats_enabled";
const SYSCTL_FILE: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// lagtrace's programs, in the order the report lists them.
pub const PROGRAMS: &[&str] = &[
    "epoll_exit",
    "epoll_enter",
    "sched_switch",
    "sched_wakeup",
    "on_cpu_sample",
    "tick_sample",
    "thread_exit",
];

/// `kernel.bpf_stats_enabled` set for a while; dropping it restores the
/// previous value.
pub struct StatsSwitch {
    previous: String,
}

impl StatsSwitch {
    /// Stats on, for a section that reads each program's run time.
    pub fn enable() -> Result<Self> {
        Self::set(true)
    }

    /// Stats off for a whole run when someone left them on. With stats on,
    /// the kernel reads the clock twice around every run of every BPF
    /// program and adds to its counters: tens of ns per run, which every
    /// cost figure of the bench would carry (a run of the attach section
    /// with them left on put the spin loop at 0.41× against 0.50×).
    pub fn off_for_run() -> Result<Option<Self>> {
        if read_setting()? == "0" {
            return Ok(None);
        }
        crate::util::warn(&format!(
            "{SYSCTL} was 1: it adds two clock reads to every BPF program run, so it is 0 \
             for this run and restored at its end"
        ));
        Self::set(false).map(Some)
    }

    fn set(on: bool) -> Result<Self> {
        let previous = read_setting()?;
        // From here on the guard exists, so a half-done change is undone too.
        let guard = Self { previous };
        let value = u8::from(on);
        run(Command::new("sysctl").args(["-w", &format!("{SYSCTL}={value}")]))?;
        Ok(guard)
    }
}

fn read_setting() -> Result<String> {
    Ok(fs::read_to_string(SYSCTL_FILE)
        .with_context(|| format!("reading {SYSCTL_FILE}"))?
        .trim()
        .to_owned())
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        let restore = format!("{SYSCTL}={}", self.previous);
        if let Err(e) = run(Command::new("sysctl").args(["-w", &restore])) {
            crate::util::warn(&format!(
                "could not restore {restore}: {e:#}\nRestore it by hand: sysctl -w {restore}"
            ));
        }
    }
}

/// One program's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// The counters of lagtrace's programs (by name) at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub progs: BTreeMap<String, Counters>,
}

/// The ids of the BPF programs process `pid` holds open, from its fdinfo
/// (`prog_id:` lines of program and link fds).
pub fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:")
                && let Ok(id) = id.trim().parse()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids
}

/// Reads the counters of programs `ids` that are named in [`PROGRAMS`].
pub fn snapshot(ids: &[u64]) -> Result<Snapshot> {
    let json = capture(Command::new("bpftool").args(["prog", "show", "-j"]))?;
    let at = Instant::now();
    Ok(Snapshot {
        at,
        progs: parse(&json, ids)?,
    })
}

fn parse(json: &str, ids: &[u64]) -> Result<BTreeMap<String, Counters>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("bpftool printed invalid JSON")?;
    let mut out = BTreeMap::new();
    for p in v.as_array().context("bpftool did not print a JSON array")? {
        let id = p["id"].as_u64().unwrap_or(0);
        let name = p["name"].as_str().unwrap_or("");
        if !ids.contains(&id) || !PROGRAMS.contains(&name) {
            continue;
        }
        // bpftool leaves the fields out while they are zero.
        let c = out.entry(name.to_owned()).or_insert_with(Counters::default);
        c.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
        c.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(out)
}

/// What one program did between two snapshots.
#[derive(Clone, Debug)]
pub struct ProgCost {
    pub name: String,
    pub events: u64,
    pub run_time_ns: u64,
    pub wall_s: f64,
}

impl ProgCost {
    pub fn ns_per_event(&self) -> Option<f64> {
        (self.events > 0).then(|| self.run_time_ns as f64 / self.events as f64)
    }

    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall_s
    }

    /// Share of one CPU spent in this program.
    pub fn cpu_share(&self) -> f64 {
        self.run_time_ns as f64 / 1e9 / self.wall_s
    }
}

/// Per-program deltas between `a` and `b`, in [`PROGRAMS`] order; programs
/// that were not loaded (e.g. sampling off) are left out.
pub fn delta(a: &Snapshot, b: &Snapshot) -> Vec<ProgCost> {
    let wall_s = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    PROGRAMS
        .iter()
        .filter_map(|name| {
            let after = b.progs.get(*name)?;
            let before = a.progs.get(*name).copied().unwrap_or_default();
            Some(ProgCost {
                name: (*name).to_owned(),
                events: after.run_cnt.saturating_sub(before.run_cnt),
                run_time_ns: after.run_time_ns.saturating_sub(before.run_time_ns),
                wall_s,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_json() {
        let json = r#"[
          {"id": 5, "type": "tracepoint", "name": "epoll_exit", "run_time_ns": 1000, "run_cnt": 10},
          {"id": 6, "type": "tracepoint", "name": "epoll_enter"},
          {"id": 7, "type": "tracepoint", "name": "epoll_exit", "run_time_ns": 9, "run_cnt": 9},
          {"id": 8, "type": "kprobe", "name": "other", "run_time_ns": 9, "run_cnt": 9}
        ]"#;
        let m = parse(json, &[5, 6, 8]).unwrap();
        assert_eq!(
            m["epoll_exit"],
            Counters {
                run_cnt: 10,
                run_time_ns: 1000
            }
        );
        assert_eq!(m["epoll_enter"], Counters::default());
        assert_eq!(m.len(), 2);
        assert!(parse("[]", &[]).unwrap().is_empty());
        assert!(parse("nope", &[]).is_err());
    }

    #[test]
    fn deltas() {
        let at = Instant::now();
        let snap = |cnt, ns| Snapshot {
            at,
            progs: BTreeMap::from([(
                "epoll_exit".to_owned(),
                Counters {
                    run_cnt: cnt,
                    run_time_ns: ns,
                },
            )]),
        };
        let a = snap(10, 1000);
        let mut b = snap(110, 21000);
        b.at = at + std::time::Duration::from_secs(2);
        let d = delta(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].events, 100);
        assert_eq!(d[0].ns_per_event(), Some(200.0));
        assert_eq!(d[0].events_per_s(), 50.0);
    }
}
