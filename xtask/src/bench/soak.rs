//! Section 6: the soak — lagtrace attached for minutes to a target with 20
//! stalls per second, with every output on (`--spans`, `--folded`,
//! `--flamegraph`), its resident memory (VmRSS) read from /proc every few
//! seconds. Aggregation state must not grow with the number of spans, so
//! the second half of the run should be flat. `cargo xtask bench --soak`
//! runs this section alone (`--soak-seconds` or `--soak-minutes` sets its
//! length). Issue #16's long attach: `--spans` rotates (`--spans-max-size`),
//! `--metrics` is on and scraped every few seconds, a SIGUSR1 snapshot is
//! taken every 5 minutes, and lagtrace's RSS and CPU are recorded per minute.
use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Ctx, Section, lagtrace::Lagtrace, proc, procfs, report::Table, stats::mib, targets};

/// The storm target blocks 15 ms then yields 35 ms: 20 stalls/s over 10 ms.
const BLOCK_MS: &str = "15";
const YIELD_MS: &str = "35";
/// How often RSS is read (and the metrics scraped).
const EVERY: Duration = Duration::from_secs(5);
/// How often a SIGUSR1 snapshot is taken.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(300);

/// lagtrace's CPU seconds (user + system) from /proc/PID/stat.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a constant of the system.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((num(11) + num(12)) as f64 / tick)
}

/// GET /metrics from lagtrace: the sum of `lagtrace_blocking_spans_total`.
fn scrape(port: u16) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("lagtrace_blocking_spans_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(procfs::first_number)
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Least-squares slope of (seconds, KiB) points, in KiB per minute.
fn slope_kib_per_min(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx * 60.0 }
}

pub fn section_soak(ctx: &Ctx) -> Result<Section> {
    let secs = ctx.plan.soak_secs;
    let dir = ctx.out.join("soak");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (spans, folded, svg) = (
        dir.join("spans.jsonl"),
        dir.join("stacks.folded"),
        dir.join("flame.svg"),
    );
    let storm = targets::stall_storm_with(&ctx.python, &[BLOCK_MS, YIELD_MS])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let args: Vec<String> = [
        "--threshold",
        "10ms",
        "--spans",
        &spans.display().to_string(),
        "--folded",
        &folded.display().to_string(),
        "--flamegraph",
        &svg.display().to_string(),
        "--spans-max-size",
        "20MB",
        "--spans-keep",
        "3",
        "--metrics",
        &metrics_addr,
        "--snapshot-dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eprintln!("-- soak: {secs} s at 20 stalls/s, all outputs");
    let lt = Lagtrace::start(&ctx.lagtrace, storm.pid, &args)?;
    let t0 = Instant::now();
    let mut points: Vec<(f64, u64)> = vec![(0.0, vm_rss_kib(lt.pid())?)];
    // (minute, RSS KiB, CPU seconds so far, load average).
    let mut minutes: Vec<(u64, u64, f64, String)> =
        vec![(0, points[0].1, cpu_secs(lt.pid())?, loadavg())];
    let (mut scraped, mut scrapes, mut snapshots) = (0.0, 0u64, 0u64);
    let mut next_snapshot = SNAPSHOT_EVERY;
    while t0.elapsed() < Duration::from_secs(secs) {
        proc::sleep(EVERY.min(Duration::from_secs(secs).saturating_sub(t0.elapsed())))?;
        let rss = vm_rss_kib(lt.pid())?;
        points.push((t0.elapsed().as_secs_f64(), rss));
        if let Some(v) = scrape(port) {
            scraped = v;
            scrapes += 1;
        }
        if t0.elapsed() >= next_snapshot {
            proc::signal(lt.pid(), libc::SIGUSR1)?;
            snapshots += 1;
            next_snapshot += SNAPSHOT_EVERY;
        }
        let minute = t0.elapsed().as_secs() / 60;
        if minute > minutes.last().map_or(0, |m| m.0) {
            minutes.push((minute, rss, cpu_secs(lt.pid())?, loadavg()));
            eprintln!(
                "-- soak: minute {minute}: RSS {}, CPU {:.1} s",
                mib(rss),
                minutes.last().map_or(0.0, |m| m.2)
            );
        }
    }
    let run = lt.stop(None)?;
    drop(storm);
    // The spans file rotates (older files are deleted): the count comes
    // from lagtrace's own counter, read at the last scrape.
    let span_count = scraped as u64;
    let start = points[0];
    let middle = points[points.len() / 2];
    let end = *points.last().expect("at least one point");
    let half = &points[points.len() / 2..];
    let slope = slope_kib_per_min(half);
    let mut t = Table::new(&["", "at", "VmRSS"]);
    for (name, p) in [("start", start), ("middle", middle), ("end", end)] {
        t.row(vec![name.into(), format!("{:.0} s", p.0), mib(p.1)]);
    }
    t.row(vec![
        "peak (VmHWM)".into(),
        "".into(),
        mib(run.peak_rss_kib),
    ]);
    let per_s = span_count as f64 / run.window_s;
    let headline = format!(
        "soak {secs} s at {per_s:.0} spans/s, all outputs: lagtrace RSS {} → {} → {} (start, middle, end), {:+.2} MiB/min over the second half",
        mib(start.1),
        mib(middle.1),
        mib(end.1),
        slope / 1024.0
    );
    let mut body = format!(
        "lagtrace `--threshold 10ms --spans --folded --flamegraph` on \
         `bench/targets/stall_storm.py {BLOCK_MS} {YIELD_MS}` (15 ms on the CPU, then 35 ms \
         idle: 20 stalls/s) for {secs} s; VmRSS from `/proc/<lagtrace>/status` every {} s. \
         {span_count} spans ({per_s:.1}/s). Slope of RSS over the second half (least \
         squares): {:+.1} KiB/min.\n\n",
        EVERY.as_secs(),
        slope
    );
    body.push_str(&t.render());
    body.push_str("\nAll readings (s: MiB): ");
    let all: Vec<String> = points
        .iter()
        .map(|(s, k)| format!("{s:.0}: {:.1}", *k as f64 / 1024.0))
        .collect();
    body.push_str(&all.join(", "));
    body.push('\n');
    body.push_str(&format!(
        "\nWith `--spans-max-size 20MB --spans-keep 3 --metrics {metrics_addr} --snapshot-dir`: \
         {scrapes} scrapes of /metrics (last: {scraped:.0} spans counted), {snapshots} SIGUSR1 \
         snapshots. Per minute (CPU %: lagtrace's CPU time over that minute):\n\n"
    ));
    let mut m = Table::new(&["minute", "VmRSS", "CPU s (total)", "CPU %", "load average"]);
    for (i, (min, rss, cpu, load)) in minutes.iter().enumerate() {
        let pct = match i.checked_sub(1).map(|j| &minutes[j]) {
            Some(prev) if min > &prev.0 => (cpu - prev.2) / ((min - prev.0) as f64 * 60.0) * 100.0,
            _ => 0.0,
        };
        m.row(vec![
            min.to_string(),
            mib(*rss),
            format!("{cpu:.1}"),
            format!("{pct:.1}"),
            load.clone(),
        ]);
    }
    body.push_str(&m.render());
    Ok(Section {
        title: "6. Soak: memory over a long attach".into(),
        body,
        headline: vec![headline],
    })
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::slope_kib_per_min;

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 6.0, 1000 + i * 10)).collect();
        assert!((slope_kib_per_min(&pts) - 100.0).abs() < 1e-6);
        assert_eq!(slope_kib_per_min(&[(0.0, 5)]), 0.0);
    }
}
