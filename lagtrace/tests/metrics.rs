//! Issue 16's `--metrics`: a real Prometheus server (Debian's package,
//! installed by `cargo xtask setup`) scrapes lagtrace every second while a
//! target stalls; its HTTP API must show the span counter and the
//! iteration histogram agreeing with the target's own truth. Issue 13's
//! live top-N blame labels, from scrapes of lagtrace's own endpoint.
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Histogram bound the test reads: 2^26 ns, one of lagtrace's bounds.
const LE_67MS: &str = "0.067108864";
const LE_67MS_NS: u64 = 1 << 26;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A plain HTTP GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scalar value of an instant PromQL query, if it has a result.
fn query(port: u16, promql: &str) -> Option<f64> {
    let (status, body) = http_get(port, &format!("/api/v1/query?query={}", urlencode(promql)))?;
    assert_eq!(status, 200, "Prometheus refused {promql}: {body}");
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Poll until `f` gives a value, or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_spans_and_histograms() {
    if !root_or_skip("prometheus_scrapes_spans_and_histograms") {
        return;
    }
    let Some(py) = python3_or_skip("prometheus_scrapes_spans_and_histograms") else {
        return;
    };
    let Some(prom) = tool_or_skip("prometheus_scrapes_spans_and_histograms", &["prometheus"])
    else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let mut target = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "cpu",
            "--stalls-ms",
            "20,100,150,300",
        ],
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms", "--metrics", &addr]);

    let dir = tempdir::Dir::new("prometheus");
    let config = dir.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: lagtrace\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _server = Prometheus(
        Command::new(prom)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );
    poll(patience(Duration::from_secs(60)), || {
        http_get(prom_port, "/-/ready").filter(|(s, _)| *s == 200)
    })
    .expect("Prometheus never became ready");
    // It has scraped lagtrace once the histogram is there.
    let count_q = format!("sum(lagtrace_loop_iteration_duration_seconds_count{{pid=\"{pid}\"}})");
    poll(patience(Duration::from_secs(30)), || {
        query(prom_port, &count_q)
    })
    .expect("Prometheus never saw lagtrace's histogram");

    target.run_scenario(patience(Duration::from_secs(60)));
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 4, "{stalls:?}");
    let spans_truth = stalls
        .iter()
        .filter(|s| s.duration_ns() >= 55_000_000)
        .count() as f64;
    let long_truth = stalls
        .iter()
        .filter(|s| s.duration_ns() > LE_67MS_NS)
        .count() as f64;
    // Wait until a scrape has every span, then until the value stays.
    let spans_q = format!("sum(lagtrace_blocking_spans_total{{pid=\"{pid}\"}})");
    let seen = poll(patience(Duration::from_secs(30)), || {
        query(prom_port, &spans_q).filter(|&v| v >= spans_truth)
    });
    let long_q = format!(
        "{count_q} - sum(lagtrace_loop_iteration_duration_seconds_bucket{{pid=\"{pid}\",le=\"{LE_67MS}\"}})"
    );
    let long = poll(patience(Duration::from_secs(30)), || {
        query(prom_port, &long_q).filter(|&v| v >= long_truth)
    });
    let total = query(prom_port, &count_q).unwrap_or(0.0);
    let health = query(prom_port, "lagtrace_targets_attached");
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    eprintln!(
        "METRICS spans {seen:?} (truth {spans_truth}), iterations over 67 ms {long:?} (truth {long_truth}), iterations {total}, JSONL spans {}",
        fin.spans.len()
    );
    // Tolerance: the 20 ms stall becomes no span even on a loaded host;
    // one healthy iteration may be preempted past 67 ms there.
    assert_eq!(seen, Some(spans_truth), "span counter vs truth");
    let long = long.expect("the histogram never showed the long iterations");
    assert!(
        (long_truth..=long_truth + 1.0).contains(&long),
        "iterations over 67 ms: {long}, truth {long_truth}"
    );
    assert!(
        total > long,
        "the histogram counts every iteration: {total}"
    );
    assert_eq!(fin.spans.len() as f64, spans_truth, "JSONL vs truth");
    assert_eq!(health, Some(1.0), "targets attached");
}

/// `name{labels} value` lines of one metric in a scrape, by series.
fn series(text: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let (key, v) = l.rsplit_once(' ')?;
            Some((key.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The `blame` label of a series key.
fn blame_of(key: &str) -> &str {
    key.split("blame=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
}

/// The blame labels are a live top 20 by blocked time: after 30 distinct
/// blames of 80 ms each, one of 400 ms gets its own label; scraped every
/// 100 ms from lagtrace's own endpoint, no counter ever goes down, and the
/// series add up to the spans' total (nothing moves between them).
#[test]
fn a_late_dominant_blame_gets_its_own_label() {
    let test = "a_late_dominant_blame_gets_its_own_label";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(py) = python3_or_skip(test) else {
        return;
    };
    let script = targets_dir().join("metrics_blames.py");
    let mut target = Target::start(&py, &[script.to_str().unwrap()]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms", "--metrics", &addr]);
    poll(patience(Duration::from_secs(30)), || {
        http_get(port, "/metrics").filter(|(s, _)| *s == 200)
    })
    .expect("lagtrace's metrics endpoint never answered");
    // Scrape every 100 ms while the scenario runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((200, body)) = http_get(port, "/metrics") {
                    scrapes.push(series(&body, "lagtrace_blocked_seconds_total"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            scrapes
        })
    };
    target.run_scenario(patience(Duration::from_secs(60)));
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 31, "{stalls:?}");
    // A span is the whole iteration, never shorter than the target's own
    // window (up to 1 ms per stall shorter only by the clocks' rounding).
    let slack = 0.001 * stalls.len() as f64;
    let truth_total: f64 = stalls.iter().map(|s| s.duration_ns() as f64 / 1e9).sum();
    let big = stalls
        .iter()
        .find(|s| s.label == "late_dominant")
        .expect("late_dominant");
    // Until a scrape has every span's time: at least the truth's total, and
    // the same in two scrapes 200 ms apart (the loop's own work around the
    // stalls can make up for a missing span's time).
    let mut prev_sum = f64::NAN;
    let last = poll(patience(Duration::from_secs(30)), || {
        let (_, body) = http_get(port, "/metrics")?;
        let s = series(&body, "lagtrace_blocked_seconds_total");
        let sum = s.values().sum::<f64>();
        let settled = sum >= truth_total - slack && sum == prev_sum;
        prev_sum = sum;
        settled.then_some(s)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper");
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let last = last.expect("the scrapes never had every span's time");
    // Each span against the truth and the kernel's own epoll records; the
    // counters are then held to the spans, exactly.
    assert_eq!(assert_stalls_witnessed(&fin, &stalls, 50).len(), 31);
    let span_s = |s: &serde_json::Value| s["duration_ns"].as_u64().unwrap() as f64 / 1e9;
    let spans_total: f64 = fin.spans.iter().map(span_s).sum();
    let big_span = span_s(matching_span(&fin.spans, big)[0]);
    let sum: f64 = last.values().sum();
    let blames: std::collections::BTreeSet<&str> = last.keys().map(|k| blame_of(k)).collect();
    let dominant: f64 = last
        .iter()
        .filter(|(k, _)| blame_of(k).starts_with("late_dominant "))
        .map(|(_, v)| v)
        .sum();
    eprintln!(
        "METRICS {} scrapes; {} blame values ({blames:?}); late_dominant {dominant:.4} s (span \
         {big_span:.4}, truth {:.4}); sum {sum:.4} s (spans {spans_total:.4}, truth \
         {truth_total:.4})",
        scrapes.len(),
        blames.len(),
        big.duration_ns() as f64 / 1e9
    );
    // Counters are f64 seconds: 1 µs per span covers their rounding.
    assert!(
        (dominant - big_span).abs() <= 1e-6,
        "late_dominant has its own series with its span's time: {dominant} vs {big_span} \
         ({blames:?})"
    );
    assert!(
        (sum - spans_total).abs() <= 1e-6 * fin.spans.len() as f64,
        "every span counted once: {sum} vs {spans_total} in {} spans",
        fin.spans.len()
    );
    // 31 blames, at most 20 labelled at a time: the rest went to "other"
    // (the demoted ones stay shown, frozen, for 2 minutes).
    let other = last
        .iter()
        .filter(|(k, _)| blame_of(k) == "other")
        .map(|(_, v)| v)
        .sum::<f64>();
    assert!(
        other >= 0.079,
        "blames past the top 20 count as other: {blames:?}"
    );
    assert!(blames.len() < 31, "{blames:?}");
    let mut prev: std::collections::BTreeMap<String, f64> = Default::default();
    for s in &scrapes {
        for (k, v) in s {
            if let Some(p) = prev.get(k) {
                assert!(v >= p, "counter {k} went down: {p} -> {v}");
            }
            prev.insert(k.clone(), *v);
        }
    }
}
