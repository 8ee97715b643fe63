//! Running lagtrace under the bench: start it, wait until it says it is
//! tracing, measure its own CPU and memory from /proc while it runs, stop it
//! with SIGINT, and read its `--summary-json` file (iterations, spans,
//! lost events), never its human output.
use std::{
    path::Path,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    proc::{Proc, Stream},
    procfs,
};

/// How long lagtrace may take to load and attach its probes.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to finish (write its files) after SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A point in lagtrace's life: its CPU time so far, and when.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    at: Instant,
    /// utime + stime from /proc/<pid>/stat, in clock ticks.
    ticks: u64,
    /// Sum of /proc/<pid>/task/*/schedstat run times, in ns.
    sched_ns: u64,
}

/// lagtrace's own cost over a window, and what it printed.
#[derive(Debug)]
pub struct LagtraceRun {
    /// CPU share of one core over the window, from /proc/<pid>/stat ticks.
    pub cpu_share: f64,
    /// The same from schedstat (ns resolution; live threads only).
    pub cpu_share_sched: f64,
    /// CPU spent from exec until it printed "tracing" (loading probes).
    pub startup_cpu_s: f64,
    /// VmHWM just before it was stopped, in KiB.
    pub peak_rss_kib: u64,
    pub window_s: f64,
    pub status: ExitStatus,
    pub stderr: Vec<String>,
    /// Its `--summary-json` object (Null if it wrote none).
    pub summary_json: Value,
}

pub struct Lagtrace {
    proc: Proc,
    ready: CpuMark,
    summary_path: std::path::PathBuf,
}

impl Lagtrace {
    /// Starts `bin --pid target args...` and waits for its
    /// `lagtrace: tracing` line.
    pub fn start(bin: &Path, target: u32, args: &[String]) -> Result<Self> {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let summary_path = std::env::temp_dir().join(format!(
            "lagtrace-bench-summary-{}-{n}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&summary_path);
        let mut cmd = Command::new(bin);
        cmd.args(["--pid", &target.to_string()])
            .args(args)
            .arg("--summary-json")
            .arg(&summary_path);
        let mut proc = Proc::spawn("lagtrace", &mut cmd, libc::SIGINT, STOP_GRACE, false)?;
        proc.wait_line("`lagtrace: tracing`", START_TIMEOUT, |s, l| {
            s == Stream::Stderr && l.starts_with("lagtrace: tracing")
        })?;
        let ready = cpu_mark(proc.pid())?;
        Ok(Self {
            proc,
            ready,
            summary_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its CPU time now, to start a measurement window.
    pub fn mark(&self) -> Result<CpuMark> {
        cpu_mark(self.pid())
    }

    /// Measures from `from` (or from when it was ready) to now, then stops
    /// it with SIGINT and collects its output.
    pub fn stop(mut self, from: Option<CpuMark>) -> Result<LagtraceRun> {
        let pid = self.pid();
        if !self.proc.running() {
            let status = self.proc.stop()?;
            bail!(
                "lagtrace exited early ({status}); its last output:\n{}",
                self.proc.tail()
            );
        }
        let from = from.unwrap_or(self.ready);
        let now = cpu_mark(pid)?;
        let peak_rss_kib = procfs::vm_hwm_kib(pid)?;
        let status = self.proc.stop()?;
        let wall = now.at.duration_since(from.at).as_secs_f64().max(1e-9);
        let tck = procfs::clock_ticks_per_sec();
        let summary_json = read_summary(&self.summary_path)?;
        Ok(LagtraceRun {
            cpu_share: now.ticks.saturating_sub(from.ticks) as f64 / tck / wall,
            cpu_share_sched: now.sched_ns.saturating_sub(from.sched_ns) as f64 / 1e9 / wall,
            startup_cpu_s: self.ready.ticks as f64 / tck,
            peak_rss_kib,
            window_s: wall,
            status,
            stderr: self.proc.stderr(),
            summary_json,
        })
    }
}

/// The `--summary-json` file of a run (Null when lagtrace wrote none, e.g.
/// it failed), removed once read.
fn read_summary(path: &Path) -> Result<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Value::Null);
    };
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl LagtraceRun {
    pub fn summary(&self) -> Vec<SummaryRow> {
        summary_rows(&self.summary_json)
    }

    /// Loop iterations in the summary, all threads.
    pub fn iterations(&self) -> u64 {
        self.summary().iter().map(|r| r.iterations).sum()
    }

    /// Its `warning:` lines.
    pub fn warnings(&self) -> Vec<String> {
        self.stderr
            .iter()
            .filter(|l| l.contains("warning"))
            .cloned()
            .collect()
    }

    /// Kernel events it lost to a full ring buffer (its summary's health).
    pub fn lost(&self) -> u64 {
        self.summary_json["health"]["lost_events"]
            .as_u64()
            .unwrap_or(0)
    }

    /// One-line description of how it ended, for the report.
    pub fn ended(&self) -> String {
        if self.status.success() {
            "exit 0".into()
        } else {
            format!("{}", self.status)
        }
    }
}

/// One row of lagtrace's exit summary.
#[derive(Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub pid: u32,
    pub thread: String,
    pub tid: u32,
    pub iterations: u64,
    pub spans: u64,
}

/// The thread rows of a `--summary-json` object.
pub fn summary_rows(summary: &Value) -> Vec<SummaryRow> {
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    summary["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["threads"].as_array().into_iter().flatten())
        .map(|t| SummaryRow {
            pid: num(&t["pid"]) as u32,
            thread: t["thread"].as_str().unwrap_or("").to_owned(),
            tid: num(&t["tid"]) as u32,
            iterations: num(&t["iterations"]),
            spans: num(&t["spans"]),
        })
        .collect()
}

fn cpu_mark(pid: u32) -> Result<CpuMark> {
    let at = Instant::now();
    Ok(CpuMark {
        at,
        ticks: procfs::cpu_ticks(pid)?,
        sched_ns: procfs::sched_cpu_ns(pid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn reads_the_summary_json() {
        let v: Value = serde_json::from_str(
            r#"{"wall_ns":4000000000,"processes":[{"pid":7272,"threads":[
                {"pid":7272,"tid":7272,"thread":"python3","iterations":19617,"spans":3},
                {"pid":7272,"tid":7280,"thread":"my thread[x]","iterations":12,"spans":0}]}],
              "health":{"lost_events":42}}"#,
        )
        .unwrap();
        assert_eq!(
            summary_rows(&v),
            [
                SummaryRow {
                    pid: 7272,
                    thread: "python3".into(),
                    tid: 7272,
                    iterations: 19617,
                    spans: 3
                },
                SummaryRow {
                    pid: 7272,
                    thread: "my thread[x]".into(),
                    tid: 7280,
                    iterations: 12,
                    spans: 0
                },
            ]
        );
    }

    #[test]
    fn counts_lost_events() {
        let run = |stderr: &str, lost: u64| LagtraceRun {
            cpu_share: 0.0,
            cpu_share_sched: 0.0,
            startup_cpu_s: 0.0,
            peak_rss_kib: 0,
            window_s: 1.0,
            status: std::process::Command::new("true").status().unwrap(),
            stderr: lines(stderr),
            summary_json: serde_json::json!({ "health": { "lost_events": lost } }),
        };
        assert_eq!(run("lagtrace: tracing pid 1", 0).lost(), 0);
        let r = run(
            "lagtrace: warning: 42 kernel events lost to a full ring buffer",
            42,
        );
        assert_eq!(r.lost(), 42);
        assert_eq!(r.warnings().len(), 1);
    }
}
