//! The load generator: one `wrk` run against a target on 127.0.0.1, and
//! parsing its text output into throughput, p99 latency and errors.
use std::process::Command;

use anyhow::{Context as _, Result};

use super::proc::{check_interrupt, die_with_parent};
use crate::util::capture;

/// wrk's threads and connections: one load thread leaves the other cores
/// to the target and the tracer.
const THREADS: u32 = 1;
const CONNECTIONS: u32 = 16;

/// One wrk run's result.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub rps: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors (connect + read + write + timeout) plus non-2xx/3xx.
    pub errors: u64,
}

/// The exact wrk arguments used, for the report.
pub fn args(secs: u64) -> String {
    format!("wrk -t{THREADS} -c{CONNECTIONS} -d{secs}s --latency http://127.0.0.1:PORT/")
}

/// Loads `127.0.0.1:port` for `secs` seconds.
pub fn run(port: u16, secs: u64) -> Result<Load> {
    check_interrupt()?;
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(format!("http://127.0.0.1:{port}/"));
    die_with_parent(&mut cmd);
    let out = capture(&mut cmd)?;
    check_interrupt()?;
    let load = parse(&out).with_context(|| format!("unexpected wrk output:\n{out}"))?;
    eprintln!(
        "   -> {:.0} req/s, p99 {:.3} ms{}",
        load.rps,
        load.p99_ms,
        if load.errors > 0 {
            format!(", {} errors", load.errors)
        } else {
            String::new()
        }
    );
    Ok(load)
}

/// Parses wrk's report (with `--latency`).
pub fn parse(out: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut rps = None;
    let mut p99 = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            load.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if line.contains(" requests in ") {
            load.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    load.rps = rps?;
    load.p99_ms = p99?;
    Some(load)
}

/// wrk's durations: `850.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 2s test @ http://127.0.0.1:44223/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   270.75us  327.77us   4.40ms   96.89%
    Req/Sec    65.54k    11.29k   80.54k    45.00%
  Latency Distribution
     50%  195.00us
     75%  247.00us
     90%  344.00us
     99%    2.17ms
  130422 requests in 2.00s, 13.43MB read
Requests/sec:  65134.27
Transfer/sec:      6.71MB
";

    #[test]
    fn parses_wrk() {
        let l = parse(OUT).unwrap();
        assert_eq!(l.rps, 65134.27);
        assert!((l.p99_ms - 2.17).abs() < 1e-9);
        assert_eq!(l.requests, 130422);
        assert_eq!(l.errors, 0);
    }

    #[test]
    fn counts_errors_and_units() {
        let out = OUT.replace("2.17ms", "850.50us").replace(
            "Requests/sec",
            "  Socket errors: connect 1, read 2, write 0, timeout 4\n  Non-2xx or 3xx responses: 5\nRequests/sec",
        );
        let l = parse(&out).unwrap();
        assert!((l.p99_ms - 0.8505).abs() < 1e-9);
        assert_eq!(l.errors, 12);
        assert_eq!(duration_ms("1.50s"), Some(1500.0));
        assert!(parse("wrk: connection refused").is_none());
    }
}
