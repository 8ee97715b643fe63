//! Issues 4 and 12 with real CPythons: Python frames (function, file:line)
//! in the stacks of blocking spans, read by the kernel at each sample,
//! merged with native frames, and nothing read from a healthy loop.
mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use serde_json::Value;

const VERSIONS: [&str; 3] = ["3.11", "3.12", "3.13"];
/// Before 3.11 the interpreter records no OS thread id; the kernel tells
/// threads apart by their pthread (fs base) on every version.
const OLDER: [&str; 3] = ["3.8", "3.9", "3.10"];

fn python_or_skip(test: &str, version: &str) -> Option<PathBuf> {
    let p = pyenv_python(version);
    if p.is_none() {
        eprintln!("SKIP {test} on {version}: no pyenv CPython {version} installed");
    }
    p
}

/// Lines from the first line containing `from` to the first after it
/// containing `to`.
fn lines_between(script: &std::path::Path, from: &str, to: &str) -> std::ops::RangeInclusive<u64> {
    let text = std::fs::read_to_string(script).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let a = lines.iter().position(|l| l.contains(from)).expect("from") + 1;
    let b = a + lines[a..].iter().position(|l| l.contains(to)).expect("to") + 1;
    a as u64..=b as u64
}

/// On-CPU samples of a span, and those whose stack has a frame `name (file:line)`
/// with the line inside `lines`.
fn share_under(
    span: &Value,
    name: &str,
    file: &str,
    lines: &std::ops::RangeInclusive<u64>,
) -> (u64, u64) {
    let (mut hit, mut total) = (0, 0);
    for st in span["stacks"].as_array().unwrap() {
        if st["kind"] != "on-cpu" {
            continue;
        }
        let n = st["samples"].as_u64().unwrap();
        total += n;
        let under = st["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .any(|f| {
                f.strip_prefix(&format!("{name} ("))
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|loc| loc.rsplit_once(':'))
                    .is_some_and(|(path, line)| {
                        path.ends_with(file) && line.parse().is_ok_and(|l: u64| lines.contains(&l))
                    })
            });
        if under {
            hit += n;
        }
    }
    (hit, total)
}

#[test]
fn cpu_bound_python_function_is_named_with_file_and_line() {
    if !walker_or_skip("cpu_bound_python_function_is_named_with_file_and_line") {
        return;
    }
    if !root_or_skip("cpu_bound_python_function_is_named_with_file_and_line") {
        return;
    }
    let script = targets_dir().join("asyncio_stalls.py");
    // The spinning loop itself, not just the function.
    let lines = lines_between(
        &script,
        "while time.perf_counter() < deadline",
        "x = (x * 31",
    );
    for v in OLDER.iter().chain(VERSIONS.iter()) {
        let Some(py) = python_or_skip("cpu_bound_python_function_is_named_with_file_and_line", v)
        else {
            continue;
        };
        let mut target = Target::start(
            &py,
            &[
                script.to_str().unwrap(),
                "--mode",
                "cpu",
                "--stalls-ms",
                "200,300,400",
            ],
        );
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert_stalls_witnessed(&fin, &stalls, 50);
        for t in &stalls {
            let span = matching_span(&fin.spans, t)[0];
            let (hit, total) = share_under(span, "burn_cpu", "asyncio_stalls.py", &lines);
            let share = hit as f64 / total.max(1) as f64;
            eprintln!(
                "ATTRIBUTION python {v} {}: {hit}/{total} on-CPU samples under burn_cpu ({:.1}%)",
                t.label,
                share * 100.0
            );
            // The span also holds the loop's own work around the stall
            // (asyncio's, the truth file's write), rightly sampled outside
            // `burn_cpu`: 5.6 ms of a 205.6 ms span in one CI run, 2 of 50
            // samples. The bar is a share of the stall's share of the span:
            // 0.97, or 0.90 on an emulated CPU, where that code runs tens of
            // times slower.
            let span_ns = span["duration_ns"].as_u64().unwrap_or(u64::MAX) as f64;
            let stall_share = (t.duration_ns() as f64 / span_ns).min(1.0);
            let bar = if common::emulated() { 0.90 } else { 0.97 } * stall_share;
            assert!(
                share >= bar,
                "python {v} {}: {hit}/{total} under burn_cpu, bar {bar:.3} ({:?}): {}",
                t.label,
                fin.stderr.iter().find(|l| l.contains("python:")),
                span["stacks"]
            );
            assert!(
                span["task"]
                    .as_str()
                    .is_some_and(|t| t.contains("asyncio_stalls.py")),
                "task: {}",
                span["task"]
            );
        }
        assert!(
            fin.stdout.iter().any(|l| l.contains("burn_cpu (")),
            "live line names it: {:?}",
            fin.stdout
        );
        assert!(target.alive());
    }
}

#[test]
fn seed_story_json_decode_shows_python_and_native_frames() {
    if !walker_or_skip("seed_story_json_decode_shows_python_and_native_frames") {
        return;
    }
    if !root_or_skip("seed_story_json_decode_shows_python_and_native_frames") {
        return;
    }
    let script = targets_dir().join("seed_story.py");
    for v in OLDER.iter().chain(VERSIONS.iter()) {
        let Some(py) = python_or_skip("seed_story_json_decode_shows_python_and_native_frames", v)
        else {
            continue;
        };
        let mut target = Target::start(&py, &[script.to_str().unwrap(), "--count", "3"]);
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert!(!stalls.is_empty());
        let mut with_native_leaf = 0;
        for t in &stalls {
            let found = matching_span(&fin.spans, t);
            assert_eq!(
                found.len(),
                1,
                "python {v}: decode {} not one span",
                t.label
            );
            let stacks = found[0]["stacks"].as_array().unwrap();
            let chain = [
                "decode_response (",
                "loads (json/__init__.py:",
                "decode (json/decoder.py:",
            ];
            let python_ok = stacks.iter().any(|st| {
                let frames: Vec<&str> = st["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|f| f.as_str())
                    .collect();
                let mut at = 0;
                chain.iter().all(
                    |want| match frames[at..].iter().position(|f| f.contains(want)) {
                        Some(i) => {
                            at += i + 1;
                            true
                        }
                        None => false,
                    },
                )
            });
            assert!(
                python_ok,
                "python {v}: no decode_response → loads → decode chain in {stacks:?}"
            );
            // Native frames under the innermost Python frame (raw_decode calls
            // the C scanner, which allocates through the interpreter).
            with_native_leaf += stacks
                .iter()
                .filter(|st| {
                    let frames: Vec<&str> = st["frames"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|f| f.as_str())
                        .collect();
                    frames
                        .iter()
                        .position(|f| f.contains("raw_decode (json/decoder.py:"))
                        .is_some_and(|i| {
                            frames[i + 1..]
                                .iter()
                                .any(|f| !f.contains(".py:") && !f.ends_with("_[k]"))
                        })
                })
                .count();
        }
        eprintln!(
            "SEED python {v}: {} spans, {with_native_leaf} stacks with native frames under raw_decode",
            stalls.len()
        );
        assert!(
            with_native_leaf > 0,
            "python {v}: no native frame under raw_decode"
        );
    }
}

#[test]
fn healthy_python_loop_gets_no_python_reads() {
    if !root_or_skip("healthy_python_loop_gets_no_python_reads") {
        return;
    }
    let Some(py) = python_or_skip("healthy_python_loop_gets_no_python_reads", "3.12") else {
        return;
    };
    let script = targets_dir().join("asyncio_healthy.py");
    let mut target = Target::start(&py, &[script.to_str().unwrap(), "--seconds", "3"]);
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    target.run_scenario(Duration::from_secs(30));
    let fin = lt.stop();
    assert!(
        fin.stderr
            .iter()
            .any(|l| l.contains("Python 3.12") && l.contains("Python frames on")),
        "{:?}",
        fin.stderr
    );
    assert!(
        fin.stderr
            .iter()
            .any(|l| l.contains("python:") && l.contains(" 0 code objects read")),
        "a healthy loop must cost no reads of the target: {:?}",
        fin.stderr
    );
    assert!(fin.spans.is_empty());
}
