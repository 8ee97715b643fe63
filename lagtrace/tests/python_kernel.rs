//! Issue 12: Python frames read by the kernel at the instant of each sample,
//! on real CPythons 3.8–3.13: deep stacks cut and marked, threads told
//! apart on every version, two interpreters of different versions in one
//! run, and the frames of a coroutine that sleeps read at the switch.
mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use serde_json::Value;

const ALL: [&str; 6] = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"];

fn python_or_skip(test: &str, version: &str) -> Option<PathBuf> {
    let p = pyenv_python(version);
    if p.is_none() {
        eprintln!("SKIP {test} on {version}: no pyenv CPython {version} installed");
    }
    p
}

fn frames(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect()
}

fn stacks<'a>(span: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> {
    span["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |s| s["kind"] == kind)
}

#[test]
fn deep_recursion_is_cut_with_its_innermost_64_frames_right() {
    if !walker_or_skip("deep_recursion_is_cut_with_its_innermost_64_frames_right") {
        return;
    }
    let test = "deep_recursion_is_cut_with_its_innermost_64_frames_right";
    if !root_or_skip(test) {
        return;
    }
    let script = targets_dir().join("python_frames.py");
    for v in ALL {
        let Some(py) = python_or_skip(test, v) else {
            continue;
        };
        let mut target = Target::start(
            &py,
            &[
                script.to_str().unwrap(),
                "--scenario",
                "deep",
                "--depth",
                "200",
            ],
        );
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert_stalls_witnessed(&fin, &stalls, 50);
        for t in &stalls {
            let span = matching_span(&fin.spans, t)[0];
            let (mut right, mut total) = (0, 0);
            for st in stacks(span, "on-cpu") {
                let n = st["samples"].as_u64().unwrap();
                total += n;
                let f = frames(st);
                let Some(cut) = f
                    .iter()
                    .position(|x| x.starts_with("[python frames truncated: deeper than"))
                else {
                    continue;
                };
                let py: Vec<&str> = f[cut + 1..]
                    .iter()
                    .copied()
                    .filter(|x| x.contains(".py:"))
                    .collect();
                let recursion = py.len() == 64
                    && py[..62].iter().all(|x| x.starts_with("recurse ("))
                    && py[62].starts_with("deep_leaf (")
                    && py[63].starts_with("burn_cpu (");
                if recursion {
                    right += n;
                }
            }
            let share = right as f64 / total.max(1) as f64;
            eprintln!(
                "DEEP python {v} {}: {right}/{total} on-CPU samples cut, with 62 recurse + deep_leaf + burn_cpu innermost",
                t.label
            );
            assert!(
                share >= 0.9,
                "python {v} {}: {right}/{total}: {}",
                t.label,
                span["stacks"]
            );
        }
        assert!(target.alive(), "python {v}: the target survived");
    }
}

#[test]
fn each_loop_thread_gets_its_own_frames_on_every_version() {
    if !walker_or_skip("each_loop_thread_gets_its_own_frames_on_every_version") {
        return;
    }
    let test = "each_loop_thread_gets_its_own_frames_on_every_version";
    if !root_or_skip(test) {
        return;
    }
    let script = targets_dir().join("python_frames.py");
    for v in ALL {
        let Some(py) = python_or_skip(test, v) else {
            continue;
        };
        let mut target = Target::start(&py, &[script.to_str().unwrap(), "--scenario", "threads"]);
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert_eq!(stalls.len(), 4, "two stalls per loop");
        // The two loops share one GIL: a loop whose stall ends may wait up
        // to the switch interval (5 ms) for the GIL before it reaches its
        // wait, which is lag but not in the target's truth window. So the
        // durations are not compared here (tests/loops.rs does that); each
        // stall must be exactly one span.
        for t in &stalls {
            let found = matching_span(&fin.spans, t);
            assert_eq!(found.len(), 1, "stall {t:?}: {found:?}");
        }
        for t in &stalls {
            let (own, other) = if t.label.starts_with("loop-a") {
                ("burn_in_loop_a (", "burn_in_loop_b (")
            } else {
                ("burn_in_loop_b (", "burn_in_loop_a (")
            };
            let span = matching_span(&fin.spans, t)[0];
            assert_eq!(span["tid"].as_u64(), Some(u64::from(t.tid)));
            let (mut mine, mut total) = (0, 0);
            for st in span["stacks"].as_array().unwrap() {
                let f = frames(st);
                assert!(
                    !f.iter()
                        .any(|x| x.starts_with(other) || x.starts_with("bystander_spin (")),
                    "python {v} {}: another thread's frames: {f:?}",
                    t.label
                );
                if st["kind"] == "on-cpu" {
                    let n = st["samples"].as_u64().unwrap();
                    total += n;
                    if f.iter().any(|x| x.starts_with(own)) {
                        mine += n;
                    }
                }
            }
            eprintln!(
                "THREADS python {v} {}: {mine}/{total} on-CPU samples under {own}..)",
                t.label
            );
            assert!(
                total > 0 && mine as f64 >= 0.9 * total as f64,
                "python {v} {}: {mine}/{total}: {}",
                t.label,
                span["stacks"]
            );
        }
    }
}

#[test]
fn two_interpreters_of_different_versions_in_one_run_both_get_frames() {
    if !walker_or_skip("two_interpreters_of_different_versions_in_one_run_both_get_frames") {
        return;
    }
    let test = "two_interpreters_of_different_versions_in_one_run_both_get_frames";
    if !root_or_skip(test) {
        return;
    }
    let (Some(old), Some(new)) = (python_or_skip(test, "3.9"), python_or_skip(test, "3.12")) else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let args = [
        script.to_str().unwrap(),
        "--mode",
        "cpu",
        "--stalls-ms",
        "150,200",
    ];
    let mut a = Target::start(&old, &args);
    let mut b = Target::start(&new, &args);
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let lt = Lagtrace::attach(&["--pid", &pa, "--pid", &pb, "--threshold", "50ms"]);
    a.run_scenario(Duration::from_secs(60));
    b.run_scenario(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    for (target, v) in [(&a, "3.9"), (&b, "3.12")] {
        assert!(
            fin.stderr
                .iter()
                .any(|l| l.contains(&format!("pid {} is Python {v}", target.pid))),
            "{:?}",
            fin.stderr
        );
        for t in target.stalls() {
            let span = matching_span(&fin.spans, &t)[0];
            let named = stacks(span, "on-cpu")
                .any(|st| frames(st).iter().any(|f| f.starts_with("burn_cpu (")));
            assert!(
                named,
                "python {v} {}: no Python frames: {}",
                t.label, span["stacks"]
            );
        }
    }
}

#[test]
fn sleep_in_a_coroutine_has_its_python_frames_read_at_the_switch() {
    if !walker_or_skip("sleep_in_a_coroutine_has_its_python_frames_read_at_the_switch") {
        return;
    }
    let test = "sleep_in_a_coroutine_has_its_python_frames_read_at_the_switch";
    if !root_or_skip(test) {
        return;
    }
    let script = targets_dir().join("asyncio_stalls.py");
    for v in ALL {
        let Some(py) = python_or_skip(test, v) else {
            continue;
        };
        let mut target = Target::start(
            &py,
            &[
                script.to_str().unwrap(),
                "--mode",
                "sleep",
                "--stalls-ms",
                "120,200",
            ],
        );
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert_stalls_witnessed(&fin, &stalls, 50);
        for t in &stalls {
            let span = matching_span(&fin.spans, t)[0];
            // The wait's stack, weighted by the time asleep: the coroutine
            // and the function it called, then the kernel's sleep.
            let (mut weight, mut total) = (0u64, 0u64);
            for st in stacks(span, "off-cpu") {
                let w = st["weight_ns"].as_u64().unwrap_or(0);
                total += w;
                let f = frames(st);
                let coro = f.iter().position(|x| {
                    x.starts_with("inject_stalls (") || x.starts_with("StallLoop.inject_stalls (")
                });
                let call = f.iter().position(|x| {
                    x.starts_with("legacy_sync_call (asyncio_stalls.py:")
                        || x.contains("legacy_sync_call (targets/asyncio_stalls.py:")
                });
                if coro.zip(call).is_some_and(|(c, l)| c < l)
                    // time.sleep is clock_nanosleep, or select() before 3.11.
                    && f.iter().any(|x| x.contains("nanosleep") || x.contains("select"))
                {
                    weight += w;
                }
            }
            eprintln!(
                "OFFCPU python {v} {}: {:.0}% of the off-CPU time under inject_stalls → legacy_sync_call → the sleep",
                t.label,
                weight as f64 * 100.0 / total.max(1) as f64
            );
            assert!(
                total > 0 && weight as f64 >= 0.9 * total as f64,
                "python {v} {}: {}",
                t.label,
                span
            );
        }
    }
}
