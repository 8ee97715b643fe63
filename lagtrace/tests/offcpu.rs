//! Issue 5's bar: spans where the loop thread sleeps, blocks in a syscall or
//! waits for a CPU, with the stack that blocked and the time each part cost.
mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::*;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    pyenv_python_or_skip(module_path!(), "3.12")
}

/// The loop thread's own CPU time during a stall, from the truth file
/// (`blocking_io.py` writes `cpu_ns` on Python 3.7 and later).
fn truth_cpu_ns(target: &Target, t: &Truth) -> f64 {
    read_jsonl(&target.truth)
        .iter()
        .find(|v| v["kind"] == "stall" && v["start_ns"].as_u64() == Some(t.start_ns))
        .and_then(|v| v["cpu_ns"].as_u64())
        .expect("cpu_ns in the truth (Python 3.7 or later)") as f64
}

fn f(span: &Value, key: &str) -> f64 {
    span[key].as_u64().unwrap() as f64
}

/// on + off + runqueue = duration, within 0.1% (each part is kernel ns
/// between scheduler events, so they should add up to the nanosecond).
fn assert_accounting(spans: &[Value]) -> f64 {
    let mut worst: f64 = 0.0;
    for s in spans {
        let sum = f(s, "on_cpu_ns") + f(s, "off_cpu_ns") + f(s, "runqueue_ns");
        let err = (sum - f(s, "duration_ns")).abs() / f(s, "duration_ns");
        assert!(
            err <= 0.001,
            "on+off+runqueue = {sum} ns for a {} ns span",
            f(s, "duration_ns")
        );
        worst = worst.max(err);
    }
    worst
}

fn off_cpu_stacks(span: &Value) -> Vec<Vec<String>> {
    span["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| st["kind"] == "off-cpu")
        .map(|st| {
            st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// A target whose loop sleeps 100, 200 and 300 ms in `time.sleep`, traced
/// by lagtrace started through `wrapper`.
fn trace_sleeps(py: &std::path::Path, wrapper: &[&str]) -> (Finished, Vec<Truth>) {
    let script = targets_dir().join("asyncio_stalls.py");
    let mut target = Target::start(
        py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "100,200,300",
        ],
    );
    let fin = trace_scenario_wrapped(&mut target, wrapper, &[]);
    let stalls = target.stalls();
    (fin, stalls)
}

/// Each sleep is a span, off-CPU for at least the time slept, with the
/// sleep's stack under its caller and a cause that names both.
fn assert_sleep_spans(fin: &Finished, stalls: &[Truth]) {
    assert_stalls_witnessed(fin, stalls, 50);
    for t in stalls {
        let span = matching_span(&fin.spans, t)[0];
        // The truth is the sleep the target asked for (its label, e.g.
        // "sleep-0-100ms"): `time.sleep` lasts at least that long, all of it
        // off-CPU. Comparing it with the span's duration instead would count
        // the loop's code around the sleep, which an emulated CPU (TCG, a
        // vCPU descheduled by a busy host) stretches without any defect.
        let slept_ns = sleep_ms_of(&t.label) * 1e6;
        let off_ns = f(span, "off_cpu_ns");
        eprintln!(
            "OFFCPU sleep {}: {:.1} ms off-CPU of {:.1} ms slept ({:.1}% of the {:.1} ms span; on-CPU {:.1} ms, runqueue {:.1} ms), cause {}",
            t.label,
            off_ns / 1e6,
            slept_ns / 1e6,
            100.0 * off_ns / f(span, "duration_ns"),
            f(span, "duration_ns") / 1e6,
            f(span, "on_cpu_ns") / 1e6,
            f(span, "runqueue_ns") / 1e6,
            span["cause"]
        );
        // 95 %: the timer wakes the sleeper no earlier than asked, and the
        // off-CPU interval starts microseconds after the syscall is entered.
        assert!(
            off_ns >= 0.95 * slept_ns && off_ns <= f(span, "duration_ns"),
            "{}: {:.1} ms off-CPU for a {:.1} ms sleep: {span}",
            t.label,
            off_ns / 1e6,
            slept_ns / 1e6
        );
        let stacks = off_cpu_stacks(span);
        assert!(
            stacks
                .iter()
                .any(|fr| fr.iter().any(|x| x.starts_with("legacy_sync_call ("))
                    && fr.iter().any(|x| x.contains("nanosleep"))),
            "{}: no off-CPU stack with legacy_sync_call and a sleep: {span}",
            t.label
        );
        let cause = span["cause"].as_str().unwrap();
        assert!(
            cause.starts_with("blocked in clock_nanosleep ← legacy_sync_call ("),
            "{cause}"
        );
    }
    eprintln!(
        "ACCOUNTING sleep: worst |on+off+rq - duration| = {:.6}%",
        assert_accounting(&fin.spans) * 100.0
    );
}

/// The kernel's count of scheduler events it skipped and lagtrace healed.
fn sched_events_missed(fin: &Finished) -> u64 {
    let summary = read_record(&fin.dir.path("spans.jsonl"), "summary").expect("a summary record");
    summary["health"]["sched_events_missed"]
        .as_u64()
        .expect("health.sched_events_missed")
}

#[test]
fn sleep_in_a_coroutine_is_off_cpu_with_its_caller() {
    if !walker_or_skip("sleep_in_a_coroutine_is_off_cpu_with_its_caller") {
        return;
    }
    if !root_or_skip("sleep_in_a_coroutine_is_off_cpu_with_its_caller") {
        return;
    }
    let Some(py) = python() else { return };
    let (fin, stalls) = trace_sleeps(&py, &[]);
    assert_sleep_spans(&fin, &stalls);
    assert!(
        fin.stdout
            .iter()
            .any(|l| l.contains("top causes by total lag")),
        "{:?}",
        fin.stdout
    );
    assert!(
        fin.stdout
            .iter()
            .any(|l| l.contains("blocked in clock_nanosleep")),
        "{:?}",
        fin.stdout
    );
}

/// The kernel now and then runs no program for a scheduler event (seen on
/// this 6.18 VM about once per trace of a few seconds): a loop thread's
/// switch back onto a CPU goes unseen, and its next switch-out used to
/// overwrite the stack it had waited in, so a sleep stall came out with its
/// time but without its stack. With every switch-in ignored (fault
/// injection), each wait is healed at the thread's next own event, and the
/// spans are what the test above asks for.
#[test]
fn a_wait_whose_switch_in_went_unseen_keeps_its_stack() {
    let test = "a_wait_whose_switch_in_went_unseen_keeps_its_stack";
    if !walker_or_skip(test) || !root_or_skip(test) {
        return;
    }
    let Some(py) = python() else { return };
    let (fin, stalls) = trace_sleeps(&py, &["env", "LAGTRACE_FAULT_SKIP_SWITCH_IN=1"]);
    assert!(
        fin.stderr
            .iter()
            .any(|l| l.contains("fault injection on: LAGTRACE_FAULT_SKIP_SWITCH_IN")),
        "{:?}",
        fin.stderr
    );
    // Every sleep's switch-in was ignored, and healed.
    let missed = sched_events_missed(&fin);
    eprintln!("OFFCPU healed: {missed} switch-ins ignored and healed");
    assert!(
        missed >= stalls.len() as u64,
        "{missed} healed for {} sleeps",
        stalls.len()
    );
    assert_sleep_spans(&fin, &stalls);
}

/// The milliseconds in an asyncio_stalls.py label ("sleep-2-300ms" → 300).
fn sleep_ms_of(label: &str) -> f64 {
    label
        .rsplit('-')
        .next()
        .and_then(|ms| ms.strip_suffix("ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no duration in the label {label:?}"))
}

#[test]
fn blocking_recv_from_a_slow_server_shows_the_read() {
    if !root_or_skip("blocking_recv_from_a_slow_server_shows_the_read") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("blocking_io.py");
    let mut target = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "recv",
            "--delay-ms",
            "150",
            "--count",
            "3",
        ],
    );
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 3);
    assert_stalls_witnessed(&fin, &stalls, 50);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let off = f(span, "off_cpu_ns") / f(span, "duration_ns");
        let stacks = off_cpu_stacks(span);
        let read = stacks.iter().any(|fr| {
            fr.iter().any(|x| x.starts_with("fetch_blocking ("))
                && fr.iter().any(|x| {
                    x.contains("sys_recvfrom")
                        || x.contains("sys_read")
                        || x.contains("sys_recvmsg")
                })
        });
        eprintln!(
            "OFFCPU recv {}: {:.1}% off-CPU, cause {}",
            t.label,
            off * 100.0,
            span["cause"]
        );
        assert!(off >= 0.9, "{}: {:.1}% off-CPU", t.label, off * 100.0);
        assert!(
            read,
            "{}: no off-CPU stack with fetch_blocking and the read: {stacks:?}",
            t.label
        );
        assert!(
            span["cause"]
                .as_str()
                .unwrap()
                .contains("← fetch_blocking ("),
            "{}",
            span["cause"]
        );
    }
    assert_accounting(&fin.spans);
}

#[test]
fn cpu_contention_shows_as_runqueue_time() {
    if !root_or_skip("cpu_contention_shows_as_runqueue_time") {
        return;
    }
    let Some(py) = python() else { return };
    let Some(taskset) = tool_or_skip("cpu_contention_shows_as_runqueue_time", &["taskset"]) else {
        return;
    };
    let script = targets_dir().join("blocking_io.py");
    let mut cmd = Command::new(&taskset);
    cmd.args(["-c", "0"]).arg(&py);
    let mut target = Target::start_in(
        cmd,
        &[
            script.to_str().unwrap(),
            "--mode",
            "contention",
            "--stalls-ms",
            "200,300,400",
        ],
    );
    let pid = target.pid.to_string();
    // A CPU hog on the same CPU: with two runnable tasks the fair scheduler
    // gives each about half, so at least half of each stall is runqueue wait
    // (more when the host runs other work on that CPU).
    let mut hog = Command::new(&taskset)
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("hog");
    std::thread::sleep(Duration::from_millis(200));
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    target.run_scenario(Duration::from_secs(60));
    let fin = lt.stop();
    let _ = hog.kill();
    let _ = hog.wait();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let stalls = target.stalls();
    for t in &stalls {
        let found = matching_span(&fin.spans, t);
        assert_eq!(found.len(), 1, "{}: {found:?}", t.label);
        let span = found[0];
        let rq = f(span, "runqueue_ns") / f(span, "duration_ns");
        // The truth of on-CPU time is the thread's own CPU clock over the
        // stall. How much of the stall is runqueue depends on everything
        // else the host runs on that CPU (about half with the hog alone,
        // 75-97 % under a loaded host), so the share is not the bar: the
        // on-CPU time against the target's own clock is. The span also
        // holds the loop's code just outside the truth window.
        let cpu = truth_cpu_ns(&target, t);
        let outside = f(span, "duration_ns") - t.duration_ns() as f64;
        let err_ms = (f(span, "on_cpu_ns") - cpu) / 1e6;
        eprintln!(
            "RUNQUEUE {}: {:.1}% runqueue, on-CPU {:.2} ms vs the thread's own {:.2} ms (span {:.1} ms, truth {:.1} ms), cause {}",
            t.label,
            rq * 100.0,
            f(span, "on_cpu_ns") / 1e6,
            cpu / 1e6,
            f(span, "duration_ns") / 1e6,
            t.duration_ns() as f64 / 1e6,
            span["cause"]
        );
        assert!(
            (-1.0..=outside / 1e6 + 2.0).contains(&err_ms),
            "{}: on-CPU time off by {err_ms:.2} ms from the thread's own CPU clock",
            t.label
        );
        // A hog pinned to the same CPU takes about half of it at least.
        assert!(
            rq >= 0.25,
            "{}: runqueue share {:.1}%, but a hog shares the CPU",
            t.label,
            rq * 100.0
        );
        assert!(
            f(span, "off_cpu_ns") < 0.05 * f(span, "duration_ns"),
            "{}: a spin is not off-CPU: {}",
            t.label,
            span["off_cpu_ns"]
        );
        assert!(
            span["cause"].as_str().unwrap().contains("runqueue"),
            "{}",
            span["cause"]
        );
    }
    assert_accounting(&fin.spans);
}
