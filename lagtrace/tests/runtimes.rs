//! Issue 7's bar: loops in non-main threads, several loops and processes,
//! runtimes whose workers park on futexes (tokio), uvloop, pre-fork
//! servers followed with --children, and a target in its own PID namespace.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    pyenv_python_or_skip(module_path!(), "3.12")
}

fn testapp(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the apps sit next to it.
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

fn build_testapps() -> bool {
    // In a vmtest guest the apps were built before boot, and a cargo build
    // there would only redo it slowly on an emulated CPU.
    if std::env::var_os("LAGTRACE_TEST_PREBUILT").is_some() {
        return testapp("tokio_stalls").exists();
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "lagtrace-testapps"])
        .status()
        .expect("cargo build");
    status.success()
}

fn spans_of_tid(spans: &[Value], tid: u32) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| s["tid"].as_u64() == Some(u64::from(tid)))
        .collect()
}

#[test]
fn loop_in_a_non_main_thread_and_two_loops_in_one_process() {
    if !root_or_skip("loop_in_a_non_main_thread_and_two_loops_in_one_process") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    for (extra, names) in [
        (vec!["--thread"], vec!["loop-thread"]),
        (vec!["--loops", "2"], vec!["loop-a", "loop-b"]),
    ] {
        let mut args = vec![
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "80,160",
        ];
        args.extend(extra.iter());
        let mut target = Target::start(&py, &args);
        let fin = trace_scenario(&mut target, &[]);
        let stalls = target.stalls();
        assert_eq!(stalls.len(), 2 * names.len());
        let errors = assert_stalls_witnessed(&fin, &stalls, 50);
        for t in &stalls {
            assert_ne!(t.tid, target.pid, "the loop runs off the main thread");
            let span = matching_span(&fin.spans, t)[0];
            let thread = span["thread"].as_str().unwrap();
            assert!(
                names.contains(&thread),
                "span of tid {} named {thread}",
                t.tid
            );
        }
        let summary = fin.stdout.join("\n");
        for n in &names {
            assert!(
                summary.contains(&format!("{n}[")),
                "summary lacks {n}: {summary}"
            );
        }
        report(&format!("asyncio {extra:?}"), &errors);
    }
}

#[test]
fn repeated_pid_traces_two_processes_with_a_summary_each() {
    if !root_or_skip("repeated_pid_traces_two_processes_with_a_summary_each") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    let mut a = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "90",
        ],
    );
    let mut b = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "120",
        ],
    );
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let lt = Lagtrace::attach(&["--pid", &pa, "--pid", &pb, "--threshold", "50ms"]);
    a.run_scenario(Duration::from_secs(30));
    b.run_scenario(Duration::from_secs(30));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    assert_stalls_witnessed(&fin, &a.stalls(), 50);
    assert_stalls_witnessed(&fin, &b.stalls(), 50);
    let out = fin.stdout.join("\n");
    assert!(
        out.contains(&format!("== lag summary: pid {pa} "))
            && out.contains(&format!("== lag summary: pid {pb} ")),
        "{out}"
    );
    // With two processes, live lines name the process too.
    assert!(
        fin.stdout.iter().any(|l| l.contains(&format!("[{pa}/"))),
        "{out}"
    );
}

#[test]
fn target_in_its_own_pid_namespace_is_traced_by_host_pid() {
    if !root_or_skip("target_in_its_own_pid_namespace_is_traced_by_host_pid") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    let Some(mut target) = Target::start_in_pidns(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "cpu",
            "--stalls-ms",
            "120,200",
        ],
    ) else {
        return;
    };
    let host = target.pid;
    assert_ne!(host, 1);
    let pid = host.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    target.run_scenario(Duration::from_secs(30));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    // Inside the namespace the loop thread is tid 1: compare by host tid.
    let stalls: Vec<Truth> = target
        .stalls()
        .into_iter()
        .map(|t| Truth { tid: host, ..t })
        .collect();
    let errors = assert_stalls_witnessed(&fin, &stalls, 50);
    for s in &fin.spans {
        assert_eq!(
            s["pid"].as_u64(),
            Some(u64::from(host)),
            "outputs use the host pid"
        );
        assert_eq!(
            s["ns_pid"].as_u64(),
            Some(1),
            "and the in-namespace pid: {s}"
        );
    }
    // Files are found through /proc/PID/root: Python and native frames are named.
    let named = fin.spans.iter().all(|s| {
        s["stacks"].as_array().unwrap().iter().any(|st| {
            st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().starts_with("burn_cpu ("))
        })
    });
    assert!(
        named,
        "burn_cpu not named in the container: {:?}",
        fin.spans
    );
    report("asyncio in a PID namespace", &errors);
    // Kill the namespace's init through the unshare process.
    signal(host, libc::SIGKILL);
}

fn tokio_run(test: &str, args: &[&str]) -> Option<(Finished, Vec<Truth>, Vec<Value>)> {
    tokio_run_with(test, args, "50ms")
}

/// [`tokio_run`] with lagtrace's `--threshold`; the heartbeat and contender
/// lines of the truth file come back together.
fn tokio_run_with(
    test: &str,
    args: &[&str],
    threshold: &str,
) -> Option<(Finished, Vec<Truth>, Vec<Value>)> {
    if !build_testapps() {
        panic!("{test}: building lagtrace-testapps failed");
    }
    let app = testapp("tokio_stalls");
    let mut target = Target::start(&app, args);
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", threshold]);
    // No pause after attach: a worker parked since before it is watched
    // from its wake-up (`target::parked`), and no wait's return is hooked
    // before every wait's entry is (`probes::attach`).
    target.run_scenario(Duration::from_secs(60));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{test}: {:?}", fin.stderr);
    assert!(
        fin.stderr.iter().any(|l| l.contains("worker model")),
        "{test}: tokio must get the worker model: {:?}",
        fin.stderr
    );
    let heartbeats = read_jsonl(&target.truth)
        .into_iter()
        .filter(|v| v["kind"] == "heartbeat" || v["kind"] == "contender")
        .collect();
    assert!(target.alive());
    Some((fin, target.stalls(), heartbeats))
}

#[test]
fn tokio_current_thread_blocking_tasks_are_spans() {
    if !root_or_skip("tokio_current_thread_blocking_tasks_are_spans") {
        return;
    }
    for block in ["cpu", "sleep"] {
        let Some((fin, stalls, _)) = tokio_run(
            "tokio current",
            &[
                "--flavor",
                "current",
                "--block",
                block,
                "--stalls-ms",
                "80,150,300",
            ],
        ) else {
            return;
        };
        let errors = assert_stalls_witnessed(&fin, &stalls, 50);
        assert_eq!(errors.len(), 3);
        if block == "cpu" {
            let named = fin.spans.iter().all(|s| {
                s["stacks"].as_array().unwrap().iter().any(|st| {
                    st["frames"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|f| f.as_str().unwrap().contains("spin_cpu"))
                })
            });
            assert!(named, "spin_cpu not named: {:?}", fin.spans);
        } else {
            for s in &fin.spans {
                assert!(
                    s["cause"]
                        .as_str()
                        .unwrap()
                        .starts_with("blocked in clock_nanosleep"),
                    "{}",
                    s["cause"]
                );
            }
        }
        report(&format!("tokio current_thread {block}"), &errors);
    }
}

#[test]
fn tokio_multi_thread_span_is_on_the_worker_that_blocked() {
    if !root_or_skip("tokio_multi_thread_span_is_on_the_worker_that_blocked") {
        return;
    }
    for block in ["cpu", "sleep"] {
        let Some((fin, stalls, heartbeats)) = tokio_run(
            "tokio multi",
            &[
                "--flavor",
                "multi",
                "--block",
                block,
                "--stalls-ms",
                "80,150,300",
                "--heartbeat",
                "remote",
            ],
        ) else {
            return;
        };
        let errors = assert_stalls_witnessed(&fin, &stalls, 50);
        assert_eq!(errors.len(), 3);
        for t in &stalls {
            // The span is on the worker that ran the task. Another thread may
            // only show lag from waiting for a CPU (two cores, one of them
            // spinning), never a span of its own running or sleeping.
            let overlapping = matching_span(
                &fin.spans,
                &Truth {
                    tid: 0,
                    ..t.clone()
                },
            );
            assert_eq!(
                spans_of_tid(&fin.spans, t.tid)
                    .iter()
                    .filter(|s| overlapping.contains(s))
                    .count(),
                1
            );
            for s in overlapping
                .iter()
                .filter(|s| s["tid"].as_u64() != Some(u64::from(t.tid)))
            {
                let ran = s["on_cpu_ns"].as_u64().unwrap() + s["off_cpu_ns"].as_u64().unwrap();
                assert!(
                    ran < 50_000_000,
                    "{}: a span on another thread: {s}",
                    t.label
                );
            }
            assert!(fin.spans.iter().any(|s| {
                s["thread"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tokio-r"))
            }));
            // The other worker kept serving: the app's own heartbeat ran
            // during the stall on a thread other than the blocked one.
            let hb = heartbeats
                .iter()
                .find(|h| h["during"].as_str() == Some(t.label.as_str()))
                .expect("heartbeat line");
            let count = hb["count"].as_u64().unwrap();
            let tids: Vec<u64> = hb["tids"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert!(
                count > 0 && !tids.contains(&u64::from(t.tid)),
                "{}: heartbeat {hb}",
                t.label
            );
        }
        report(&format!("tokio multi_thread {block}"), &errors);
    }
}

#[test]
fn a_plain_thread_waiting_for_a_lock_is_no_worker() {
    if !root_or_skip("a_plain_thread_waiting_for_a_lock_is_no_worker") {
        return;
    }
    // In the worker model a futex wait ends an iteration. The app's
    // "contender" thread sleeps 7 ms, then waits on a futex for a lock a
    // worker holds about half the time: taken for a worker, its sleeps
    // between two waits would be spans (over 20 ms when two takes in a
    // row find the lock free).
    let Some((fin, stalls, lines)) = tokio_run_with(
        "tokio contender",
        &[
            "--flavor",
            "multi",
            "--block",
            "cpu",
            "--stalls-ms",
            "80,150",
            "--contender",
        ],
        "20ms",
    ) else {
        return;
    };
    let contender = lines
        .iter()
        .find(|v| v["kind"] == "contender")
        .expect("the app names its contender thread");
    let tid = contender["tid"].as_u64().unwrap();
    let contended = contender["contended"].as_u64().unwrap();
    eprintln!("CONTENDER tid {tid}: {contended} lock takes waited");
    assert!(
        contended >= 10,
        "the scenario needs the contender to wait for the lock: {contender}"
    );
    let errors = assert_stalls_witnessed(&fin, &stalls, 20);
    assert_eq!(errors.len(), 2);
    let on_contender: Vec<&Value> = fin
        .spans
        .iter()
        .filter(|s| s["tid"].as_u64() == Some(tid))
        .collect();
    assert!(
        on_contender.is_empty(),
        "spans on the contender thread, which is no worker: {on_contender:?}"
    );
    report("tokio with a lock contender", &errors);
}

#[test]
fn saturated_tokio_runtime_has_no_false_spans() {
    if !root_or_skip("saturated_tokio_runtime_has_no_false_spans") {
        return;
    }
    let Some((fin, _, _)) = tokio_run("tokio saturate", &["--flavor", "multi", "--saturate", "3"])
    else {
        return;
    };
    // A false span would be a worker *running* (or sleeping in a task) past
    // the threshold without parking. A worker that only waited for a CPU
    // (the host is busy: two saturated workers on two cores) is real lag
    // and reported as `runqueue`, so it is not counted here.
    let false_spans: Vec<&Value> = fin
        .spans
        .iter()
        .filter(|s| {
            s["on_cpu_ns"].as_u64().unwrap() + s["off_cpu_ns"].as_u64().unwrap() >= 50_000_000
        })
        .collect();
    assert!(
        false_spans.is_empty(),
        "well-behaved tasks are no blocking span: {false_spans:?}"
    );
    let summary = fin.stdout.join("\n");
    assert!(
        summary.contains("tokio-r"),
        "the workers were seen: {summary}"
    );
}

#[test]
fn uvloop_cpu_stall_is_a_span() {
    if !root_or_skip("uvloop_cpu_stall_is_a_span") {
        return;
    }
    let venv_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-uvloop/bin/python3");
    if !venv_py.exists() {
        eprintln!(
            "SKIP uvloop_cpu_stall_is_a_span: no {} (cargo xtask setup makes it)",
            venv_py.display()
        );
        return;
    }
    let script = targets_dir().join("uvloop_stalls.py");
    let mut target = Target::start(
        &venv_py,
        &[script.to_str().unwrap(), "--stalls-ms", "80,150,300"],
    );
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    let errors = assert_stalls_witnessed(&fin, &stalls, 50);
    assert_eq!(errors.len(), 3);
    report("uvloop", &errors);
}

#[test]
fn prefork_workers_are_followed_with_children() {
    if !root_or_skip("prefork_workers_are_followed_with_children") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("prefork_server.py");
    let mut target = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--workers",
            "2",
            "--stall-ms",
            "120",
        ],
    );
    let fin = trace_scenario(&mut target, &["--children"]);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 2, "two workers, one stall each");
    let errors = assert_stalls_witnessed(&fin, &stalls, 50);
    assert_eq!(errors.len(), 2);
    let out = fin.stdout.join("\n");
    for t in &stalls {
        assert_ne!(t.tid, target.pid, "the stall is in a forked worker");
        let span = matching_span(&fin.spans, t)[0];
        assert_eq!(
            span["pid"].as_u64(),
            Some(u64::from(t.tid)),
            "span grouped under the worker's pid"
        );
        assert!(
            fin.stderr
                .iter()
                .any(|l| l.contains(&format!("following child pid {}", t.tid))),
            "{:?}",
            fin.stderr
        );
        assert!(
            out.contains(&format!("== lag summary: pid {} ", t.tid)),
            "per-process summary: {out}"
        );
    }
    report("pre-fork workers (--children)", &errors);
}
