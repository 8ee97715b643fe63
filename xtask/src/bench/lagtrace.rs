//! Running lagtrace under the bench: start it, wait until it says it is
//! tracing, measure its own CPU and memory from /proc while it runs, stop it
//! with SIGINT, and read what it printed (the summary's iterations, spans,
//! lost-event warnings).
use std::{
    path::Path,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    proc::{Proc, Stream},
    procfs::{self, first_number},
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
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

pub struct Lagtrace {
    proc: Proc,
    ready: CpuMark,
}

impl Lagtrace {
    /// Starts `bin --pid target args...` and waits for its
    /// `lagtrace: tracing` line.
    pub fn start(bin: &Path, target: u32, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--pid", &target.to_string()]).args(args);
        let mut proc = Proc::spawn("lagtrace", &mut cmd, libc::SIGINT, STOP_GRACE, false)?;
        proc.wait_line("`lagtrace: tracing`", START_TIMEOUT, |s, l| {
            s == Stream::Stderr && l.starts_with("lagtrace: tracing")
        })?;
        let ready = cpu_mark(proc.pid())?;
        Ok(Self { proc, ready })
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
        Ok(LagtraceRun {
            cpu_share: now.ticks.saturating_sub(from.ticks) as f64 / tck / wall,
            cpu_share_sched: now.sched_ns.saturating_sub(from.sched_ns) as f64 / 1e9 / wall,
            startup_cpu_s: self.ready.ticks as f64 / tck,
            peak_rss_kib,
            window_s: wall,
            status,
            stdout: self.proc.stdout(),
            stderr: self.proc.stderr(),
        })
    }
}

impl LagtraceRun {
    pub fn summary(&self) -> Vec<SummaryRow> {
        parse_summary(&self.stdout)
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

    /// Kernel events it reported lost (its "... lost ..." warning), else 0.
    pub fn lost(&self) -> u64 {
        self.stderr
            .iter()
            .filter(|l| l.contains("lost"))
            .map(|l| first_number(l.split_once("warning:").map_or(l, |(_, r)| r)).unwrap_or(1))
            .sum()
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

/// Parses the `== lag summary: pid N (...) ==` blocks. A row is
/// `name[tid]  iterations  p50 p90 p99 max  spans  ...`, where the
/// durations carry units separated by a space (`90 µs`).
pub fn parse_summary(stdout: &[String]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    let mut pid = None;
    for line in stdout {
        if let Some(rest) = line.strip_prefix("== lag summary: pid ") {
            pid = first_number(rest).and_then(|p| u32::try_from(p).ok());
            continue;
        }
        let Some(pid) = pid else { continue };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(row) = parse_row(pid, line) {
            rows.push(row);
        }
    }
    rows
}

fn parse_row(pid: u32, line: &str) -> Option<SummaryRow> {
    // The first `[digits]` followed by whitespace ends the thread column.
    let (open, close) = line.match_indices('[').find_map(|(i, _)| {
        let close = i + line[i..].find(']')?;
        let digits = &line[i + 1..close];
        let after = line[close + 1..].chars().next();
        (!digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && after.is_some_and(char::is_whitespace))
        .then_some((i, close))
    })?;
    let tid = line[open + 1..close].parse().ok()?;
    let mut fields = line[close + 1..].split_whitespace();
    let iterations = fields.next()?.parse().ok()?;
    // p50..max are four durations of two tokens each; then the span count.
    let spans = fields.nth(8)?.parse().ok()?;
    Some(SummaryRow {
        pid,
        thread: line[..open].to_owned(),
        tid,
        iterations,
        spans,
    })
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
    fn parses_the_summary() {
        let out = lines(
            "17:14:09.471  python3[7538]  blocked 20 ms  foo\n\
             \n\
             == lag summary: pid 7272 (python3), traced 4.00 s ==\n\
             thread[tid]            iterations       p50       p90       p99       max  spans span total   longest   lag%\n\
             python3[7272]               19617     90 µs    147 µs    295 µs    4.3 ms      3     120 ms     50 ms   0.0%\n\
             my thread[x][7280]             12      1 ms      2 ms      3 ms    1.50 s      0       0 ns      0 ns   0.0%\n",
        );
        assert_eq!(
            parse_summary(&out),
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
        let run = |stderr: &str| LagtraceRun {
            cpu_share: 0.0,
            cpu_share_sched: 0.0,
            startup_cpu_s: 0.0,
            peak_rss_kib: 0,
            window_s: 1.0,
            status: std::process::Command::new("true").status().unwrap(),
            stdout: vec![],
            stderr: lines(stderr),
        };
        assert_eq!(run("lagtrace: tracing pid 1").lost(), 0);
        let r = run("lagtrace: warning: 42 kernel events lost to a full ring buffer");
        assert_eq!(r.lost(), 42);
        assert_eq!(r.warnings().len(), 1);
    }
}
