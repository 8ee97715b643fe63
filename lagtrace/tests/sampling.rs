//! The on-CPU sampling clock runs per thread of each target (inherited by
//! what the target creates), not per CPU. These tests check the coverage
//! that design must keep: a loop thread, or a forked child process, that
//! appears only after lagtrace attached still gets its on-CPU samples, at
//! the configured frequency, naming the function that burns the CPU.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const THRESHOLD_MS: u64 = 50;
const FREQ_HZ: f64 = 499.0;

/// On-CPU samples of `span`, and how many of them are under `function`.
fn on_cpu_samples(span: &Value, function: &str) -> (u64, u64) {
    let mut total = 0;
    let mut hot = 0;
    for st in span["stacks"].as_array().into_iter().flatten() {
        if st["kind"] != "on-cpu" {
            continue;
        }
        let n = st["samples"].as_u64().unwrap_or(0);
        total += n;
        let named = st["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f.as_str().is_some_and(|f| f.starts_with(function)));
        if named {
            hot += n;
        }
    }
    (hot, total)
}

/// Start `late_loop.py` (no loop until SIGUSR1), attach, trigger the late
/// loop, and check each stall's span: found, and sampled under `late_burn`
/// at the sampling frequency.
fn late_loop_is_sampled(test: &str, extra_target: &[&str], extra_lagtrace: &[&str]) {
    late_loop_is_sampled_via(test, &[], extra_target, extra_lagtrace);
}

/// As [`late_loop_is_sampled`], lagtrace started through `wrapper`.
fn late_loop_is_sampled_via(
    test: &str,
    wrapper: &[&str],
    extra_target: &[&str],
    extra_lagtrace: &[&str],
) {
    if !root_or_skip(test) {
        return;
    }
    let Some(py) = pyenv_python_or_skip(test, "3.12") else {
        return;
    };
    let script = targets_dir().join("late_loop.py");
    let mut args = vec![script.to_str().unwrap()];
    args.extend_from_slice(extra_target);
    let mut target = Target::start(&py, &args);
    let pid = target.pid.to_string();
    let mut lt_args = vec!["--pid", pid.as_str(), "--threshold", "50ms"];
    lt_args.extend_from_slice(extra_lagtrace);
    let lt = Lagtrace::attach_wrapped(wrapper, &lt_args, true);
    target.run_scenario(patience(Duration::from_secs(60)));
    // DONE is printed inside the last stall's iteration.
    std::thread::sleep(Duration::from_millis(300));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 3, "the target's truth: {stalls:?}");
    let errors = assert_stalls_reported(&fin.spans, &stalls, THRESHOLD_MS);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (hot, total) = on_cpu_samples(span, "late_burn");
        let on_cpu_s = span["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
        let expected = on_cpu_s * FREQ_HZ;
        eprintln!(
            "LATE SAMPLING {test} {}: {hot}/{total} samples under late_burn, expected about {expected:.0}",
            t.label
        );
        // The clock ticks on the thread's own CPU time: about on_cpu × the
        // frequency samples (25 % slack for timer jitter), nearly all of
        // them in the function that burns it.
        assert!(
            total as f64 >= 0.75 * expected,
            "{}: {total} on-CPU samples, expected about {expected:.0}: the late thread is not sampled",
            t.label
        );
        assert!(
            hot as f64 >= 0.9 * total as f64,
            "{}: only {hot} of {total} samples under late_burn",
            t.label
        );
    }
    report(test, &errors);
}

#[test]
fn a_loop_thread_started_after_attach_is_sampled() {
    // The loop thread is created by a thread that itself was created after
    // attach: the clock is inherited twice.
    late_loop_is_sampled("a_loop_thread_started_after_attach_is_sampled", &[], &[]);
}

#[test]
fn a_child_forked_after_attach_is_sampled_with_children() {
    late_loop_is_sampled(
        "a_child_forked_after_attach_is_sampled_with_children",
        // A child's Python frames come once lagtrace has adopted it and
        // found its interpreter, which takes a moment under load: its
        // stalls start 1.5 s after the fork.
        &["--fork", "--first-delay-ms", "1500"],
        &["--children"],
    );
}

#[test]
fn too_few_fds_for_per_thread_clocks_falls_back_to_per_cpu() {
    let test = "too_few_fds_for_per_thread_clocks_falls_back_to_per_cpu";
    let Some(prlimit) = tool_or_skip(test, &["prlimit"]) else {
        return;
    };
    // 400 threads at attach need 400 clocks; lagtrace may open 300 fds
    // in all, so the per-thread clocks cannot all open and the per-CPU
    // clock must take over: the late loop is still sampled.
    let prlimit = prlimit.to_str().unwrap().to_string();
    late_loop_is_sampled_via(
        test,
        &[&prlimit, "--nofile=300:300", "--"],
        &["--idle-threads", "400"],
        &[],
    );
}
