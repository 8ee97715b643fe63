//! The command line: what users and scripts type, and its parsing.
//!
//! Values are validated here, so that a bad flag fails before anything is
//! loaded into the kernel.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

/// The loop model: see `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    Auto,
    Epoll,
    Worker,
}

/// How loop iterations are hooked: see `--attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attach {
    Auto,
    Fentry,
    Tracepoints,
    ExitTp,
    RawTp,
    TpBtf,
}

/// Default threshold: half of asyncio's `slow_callback_duration` (100 ms),
/// since a 50 ms stall already dominates a typical p99 budget.
pub const DEFAULT_THRESHOLD: &str = "50ms";
/// The sampling clock's frequency where the kernel's tick cannot serve (and
/// the usual `-F`): a 50 ms span gets about 25 samples. A prime rate avoids
/// lockstep with timers that fire every 1, 5 or 10 ms.
pub const DEFAULT_FREQUENCY: u64 = 499;
/// The highest sampling frequency accepted.
pub const MAX_FREQUENCY: u64 = 4999;
/// Default limit on processes traced by `--name`/`--cgroup`.
pub const DEFAULT_MAX_TARGETS: u32 = 64;
/// Highest `--max-targets`: the kernel tracks 256 loop threads with sample
/// slots, so more processes would only share them.
pub const MAX_SELECTED: u32 = lagtrace_common::MAX_SAMPLE_THREADS;
/// The shortest threshold accepted. Below it nearly every loop iteration is
/// a "span" (an `epoll_wait` returning with work costs tens of µs), which
/// only floods the outputs: a stall is a pause someone would notice.
pub const MIN_THRESHOLD: Duration = Duration::from_micros(100);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "lagtrace",
    version,
    about = "Find event-loop stalls (blocking spans) in a running process, from outside, with eBPF.",
    after_help = "Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_PTRACE to read other users' processes).",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// `report`: render a recorded `--spans` file instead of tracing.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Process to trace, by pid (repeat for several processes).
    #[arg(short = 'p', long = "pid", value_parser = parse_pid, required_unless_present_any = ["names", "cgroups"])]
    pub pids: Vec<u32>,

    /// Trace every process whose command name or command line matches this
    /// regex, now and started later (repeatable).
    #[arg(long = "name", value_name = "REGEX", value_parser = parse_regex)]
    pub names: Vec<regex::Regex>,

    /// Trace every process in this cgroup v2 (or below it), now and later:
    /// a directory under the cgroup v2 mount, or a path relative to it as
    /// /proc/PID/cgroup shows it, e.g. system.slice/api.service (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Most processes traced at once by --name and --cgroup; more matches
    /// are not traced, with a warning.
    #[arg(long, default_value_t = DEFAULT_MAX_TARGETS, value_parser = clap::value_parser!(u32).range(1..=MAX_SELECTED as i64))]
    pub max_targets: u32,

    /// An event-loop iteration at least this long is a blocking span (e.g. 50ms, 0.2s, 500us).
    #[arg(short = 't', long, default_value = DEFAULT_THRESHOLD, value_parser = parse_threshold)]
    pub threshold: Duration,

    /// Stop after this long (e.g. 30s, 5m). Without it: until Ctrl-C, SIGTERM or the target exits.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Write one JSON object per blocking span to this file (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub spans: Option<PathBuf>,

    /// Rotate --spans at this size (e.g. 100MB): the file is written in
    /// place, becomes FILE.1 when full, and SIGHUP reopens it (logrotate).
    #[arg(long, value_name = "SIZE", requires = "spans", value_parser = crate::output::rotate::parse_size)]
    pub spans_max_size: Option<u64>,

    /// Rotated --spans files kept (FILE.1 … FILE.N); older ones are deleted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        requires = "spans_max_size"
    )]
    pub spans_keep: u32,

    #[command(flatten)]
    pub files: OutputFiles,

    /// On-CPU stack samples per second while a loop iteration is open, by a
    /// CPU clock on each target thread (0: no sampling). Without it the
    /// kernel's scheduler tick takes the samples where it can serve (at its
    /// HZ, 250 on most distributions), else a 499 Hz clock.
    #[arg(short = 'F', long, value_parser = parse_frequency)]
    pub frequency: Option<u64>,

    /// Take the on-CPU samples on the kernel's scheduler tick, and fail
    /// where it cannot serve (high-resolution timers off, a nohz_full CPU,
    /// no tick function in /proc/kallsyms) instead of falling back to the
    /// clock.
    #[arg(long, conflicts_with = "frequency")]
    pub tick: bool,

    /// Do not attach the scheduler tracepoints (no on/off-CPU split, no off-CPU stacks).
    #[arg(long)]
    pub no_sched: bool,

    /// Also trace processes the targets fork after attach (pre-fork servers).
    #[arg(long)]
    pub children: bool,

    /// Code under PATH is the application's own: lines name the innermost
    /// frame whose file or module starts with PATH (repeatable). Default:
    /// everything but the standard library, site-/dist-packages,
    /// node:internal, V8, libc and the Rust runtime crates.
    #[arg(long = "app-prefix", value_name = "PATH")]
    pub app_prefix: Vec<String>,

    /// Where a loop iteration ends: `epoll` (asyncio, Node.js, uvloop: at epoll
    /// waits), `worker` (tokio-style workers: at epoll and futex waits) or
    /// `auto` (worker for tokio binaries, epoll otherwise).
    #[arg(long, value_enum, default_value_t = Model::Auto)]
    pub model: Model,

    /// How to hook loop iterations: `fentry` (trampolines on do_epoll_wait
    /// and do_futex: only the target pays), `exit-tp` (only the
    /// syscalls:sys_exit_epoll_* tracepoints; sched_switch sees a loop fall
    /// asleep in its wait; x86-64, 5.17+), `tracepoints` (the
    /// syscalls:sys_{enter,exit}_epoll_* tracepoints), `raw-tp` or `tp-btf`
    /// (the generic sys_enter/sys_exit hooks, x86-64), or `auto` (fentry
    /// where the kernel has it, else the cheapest other). The spans are the
    /// same in all.
    #[arg(long, value_enum, default_value_t = Attach::Auto)]
    pub attach: Attach,
    /// On SIGUSR1, write a flamegraph and a summary of the spans of this
    /// last stretch (e.g. 10m), without stopping the trace.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub window: Duration,

    /// Where SIGUSR1 snapshots go (default: the folder of the first output
    /// file, else the current folder).
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics,
    /// e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// More output: -v shows kernel-side diagnostics, -vv debugging.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The files a live run and `lagtrace report` both write from spans, the
/// same flags in both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputFiles {
    /// Write a flamegraph (SVG) of the blocking spans to this file.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,

    /// Write the stacks of the blocking spans in FlameGraph's folded format.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// Write the blocking spans as a gzipped pprof profile (go tool pprof, Pyroscope, Grafana).
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<PathBuf>,

    /// Write the blocking spans as a speedscope profile, one timeline per loop thread.
    #[arg(long, value_name = "FILE.json")]
    pub speedscope: Option<PathBuf>,

    /// Write the summary (per process and thread, top causes, lagtrace's health) as JSON.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Filter a recorded `--spans` file and render it as any output (no root needed).
    Report(crate::report::ReportArgs),
}

/// Parse a duration with a unit: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
/// Fractions are allowed (`1.5s`); a bare number is refused, since its unit
/// would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` needs a unit, e.g. {s}ms or {s}s"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; try e.g. 50ms or 2s"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`; use ns, us, ms, s, m or h"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be greater than zero"));
    }
    if secs > 365.0 * 86400.0 {
        return Err(format!("`{s}` is longer than a year"));
    }
    let d = Duration::from_secs_f64(secs);
    // A positive value below a nanosecond would otherwise round to 0.
    if d.is_zero() {
        return Err(format!("`{s}` is shorter than 1 ns, the finest unit"));
    }
    Ok(d)
}

/// `--threshold`: a duration of at least [`MIN_THRESHOLD`].
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_THRESHOLD {
        return Err(format!(
            "a threshold of `{s}` is below the minimum of {} µs: shorter iterations are the loop working, not stalls",
            MIN_THRESHOLD.as_micros()
        ));
    }
    Ok(d)
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("`{s}` is not a regex: {e}"))
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a process id (a positive integer)")),
        Ok(pid) => Ok(pid),
    }
}

fn parse_frequency(s: &str) -> Result<u64, String> {
    let hz: u64 = s
        .trim()
        .trim_end_matches("Hz")
        .parse()
        .map_err(|_| format!("`{s}` is not a frequency in Hz"))?;
    if hz > MAX_FREQUENCY {
        return Err(format!(
            "{hz} Hz is above the maximum of {MAX_FREQUENCY} Hz"
        ));
    }
    Ok(hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 10 s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn durations_refused() {
        for bad in [
            "50",
            "",
            "ms",
            "-5ms",
            "0ms",
            "5 parsecs",
            "1e999s",
            "abc",
            "0.0001ns",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn thresholds_have_a_minimum() {
        assert_eq!(parse_threshold("100us"), Ok(MIN_THRESHOLD));
        assert_eq!(parse_threshold("1ms"), Ok(Duration::from_millis(1)));
        for bad in ["1ns", "99us", "0.0001ns"] {
            let e = parse_threshold(bad).unwrap_err();
            assert!(e.contains("1 ns") || e.contains("100 µs"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags_parse_and_refuse() {
        let a = Args::try_parse_from(["lagtrace", "--pid", "42", "--threshold", "20ms"]).unwrap();
        assert_eq!(a.pids, vec![42]);
        assert_eq!(a.threshold, Duration::from_millis(20));
        assert_eq!(a.frequency, None);
        assert!(!a.tick);
        let t = Args::try_parse_from(["lagtrace", "--pid", "1", "--tick"]).unwrap();
        assert!(t.tick);
        // The tick sets its own rate.
        assert!(Args::try_parse_from(["lagtrace", "--pid", "1", "--tick", "-F", "99"]).is_err());
        assert!(Args::try_parse_from(["lagtrace"]).is_err());
        assert!(Args::try_parse_from(["lagtrace", "--pid", "x"]).is_err());
        assert!(Args::try_parse_from(["lagtrace", "--pid", "1", "--threshold", "50"]).is_err());
        assert!(Args::try_parse_from(["lagtrace", "--pid", "1", "-F", "100000"]).is_err());
        let two = Args::try_parse_from(["lagtrace", "-p", "1", "-p", "2"]).unwrap();
        assert_eq!(two.pids, vec![1, 2]);
        assert!(two.command.is_none());
        let r = Args::try_parse_from(["lagtrace", "report", "x.jsonl", "--min-duration", "1s"])
            .unwrap();
        assert!(matches!(r.command, Some(Command::Report(_))));
        let sel =
            Args::try_parse_from(["lagtrace", "--name", "uvicorn", "--cgroup", "a/b"]).unwrap();
        assert!(sel.pids.is_empty());
        assert_eq!(sel.names.len(), 1);
        assert!(Args::try_parse_from(["lagtrace", "--name", "("]).is_err());
        assert!(Args::try_parse_from(["lagtrace", "--name", "x", "--max-targets", "0"]).is_err());
    }
}
