//! On-CPU sampling. With `-F N` a clock runs per thread of each target
//! (inherited by what the target creates), not per CPU. These tests check
//! the coverage that design must keep: a loop thread, or a forked child
//! process, that appears only after lagtrace attached still gets its
//! on-CPU samples, at the configured frequency, naming the function that
//! burns the CPU. By default the kernel's tick drives the sampler instead
//! where it can serve; the same checks hold for it, and its samples must
//! not show the timer interrupt they were taken in.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const THRESHOLD_MS: u64 = 50;

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
    let errors = assert_stalls_witnessed(&fin, &stalls, THRESHOLD_MS);
    let (hz, _) = sampling_of(&fin);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (hot, total) = on_cpu_samples(span, "late_burn");
        let on_cpu_s = span["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
        let expected = on_cpu_s * hz;
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
    late_loop_is_sampled(
        "a_loop_thread_started_after_attach_is_sampled",
        &[],
        &["-F", "499"],
    );
}

/// The tick covers every thread without any per-thread setup.
#[test]
fn a_loop_thread_started_after_attach_is_sampled_on_the_tick() {
    late_loop_is_sampled(
        "a_loop_thread_started_after_attach_is_sampled_on_the_tick",
        &[],
        &["--tick"],
    );
}

#[test]
fn a_child_forked_after_attach_is_sampled_with_children() {
    late_loop_is_sampled(
        "a_child_forked_after_attach_is_sampled_with_children",
        // A child's Python frames come once lagtrace has adopted it and
        // found its interpreter, which takes a moment under load: its
        // stalls start 1.5 s after the fork.
        &["--fork", "--first-delay-ms", "1500"],
        &["--children", "-F", "499"],
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
        &["-F", "499"],
    );
}

/// The loop's CPU time so far, in ns (`/proc/PID/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Stack walks the kernel made (every walk counts how it ended).
fn stack_walks(summary: &Value) -> u64 {
    summary["health"]["user_stack_ends"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// A loop polling with `epoll_wait(…, 0)` is on the CPU all the time, so
/// its sampling clock ticks hundreds of times a second, but its iterations last
/// microseconds: no tick finds one old enough to become a span
/// (`SAMPLE_MIN_AGE_SHIFT`), and the kernel walks no stack for them. Its two
/// stalls still get theirs. Without the age check, every tick of the
/// healthy second between the stalls would walk a stack.
#[test]
fn a_busy_healthy_loop_costs_no_stack_walks() {
    let test = "a_busy_healthy_loop_costs_no_stack_walks";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("gate");
    let Some(bin) = build_c_target(test, "c_epoll_loop.c", &dir) else {
        return;
    };
    let mut target = Target::start(
        &bin,
        &["--poll", "1", "--stalls-ms", "80,80", "--gap-ms", "2000"],
    );
    let summary = dir.path("summary.json");
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&[
        "--pid",
        &pid,
        "--threshold",
        "50ms",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    let cpu0 = cpu_ns(target.pid);
    target.run_scenario(patience(Duration::from_secs(60)));
    let busy_s = cpu_ns(target.pid).saturating_sub(cpu0) as f64 / 1e9;
    // DONE is printed inside the last stall's iteration.
    std::thread::sleep(Duration::from_millis(300));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 2, "the target's truth: {stalls:?}");
    let errors = assert_stalls_witnessed(&fin, &stalls, THRESHOLD_MS);
    let in_spans: u64 = stalls
        .iter()
        .map(|t| on_cpu_samples(matching_span(&fin.spans, t)[0], "hot_spin_ms").1)
        .sum();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written"))
            .expect("summary is JSON");
    let walks = stack_walks(&summary);
    let healthy_s = busy_s - 0.16;
    let (hz, sampler) = sampling_of(&fin);
    let ungated = healthy_s * hz;
    eprintln!(
        "GATE {test}: {walks} stack walks, {in_spans} on-CPU samples in the spans, \
         {healthy_s:.2} s busy outside them (about {ungated:.0} walks without the age check, \
         {hz} Hz by the {sampler})"
    );
    // The precondition that lets this fail: the loop was busy long enough
    // outside its stalls for the clock to tick hundreds of times there.
    assert!(
        ungated >= 300.0,
        "the loop was on the CPU only {busy_s:.2} s: too little to show the age check"
    );
    // The spans' own samples, plus a few for healthy iterations that a
    // preemption stretched past the age check (0.78 ms), at most 5 % of the
    // ungated walks.
    assert!(
        (walks as f64) <= in_spans as f64 + 0.05 * ungated,
        "{walks} stack walks for {in_spans} span samples: the healthy iterations were walked"
    );
    // 160 ms of stalls: 75 % of their samples at least.
    assert!(
        in_spans as f64 >= 0.75 * 0.16 * hz,
        "the stalls lost their samples: {in_spans} at {hz} Hz"
    );
    report(test, &errors);
}

/// Whether this kernel's tick can drive the sampler (lagtrace's own rule,
/// `probes/tick.rs`): high-resolution timers on every CPU, none nohz_full.
fn tick_can_sample() -> Result<(), String> {
    let list = std::fs::read_to_string("/proc/timer_list").map_err(|e| e.to_string())?;
    let hres: Vec<&str> = list
        .lines()
        .filter(|l| l.trim().starts_with(".hres_active"))
        .collect();
    if hres.is_empty() || hres.iter().any(|l| !l.trim_end().ends_with('1')) {
        return Err("high-resolution timers are off on some CPU".into());
    }
    let full = std::fs::read_to_string("/sys/devices/system/cpu/nohz_full").unwrap_or_default();
    if !matches!(full.trim(), "" | "(null)") {
        return Err(format!("CPUs {} are nohz_full", full.trim()));
    }
    Ok(())
}

/// Whether a tick sample's stack (outermost first) still holds frames of
/// the timer interrupt that took it: its handler, or an interrupt entry
/// with nothing of an interrupted interrupt after it. An interrupt can
/// itself be interrupted on its way out, where it runs softirqs with
/// interrupts on; the tick that samples there rightly keeps the first
/// interrupt's entry and exit work as the code it interrupted. (A 5.10
/// guest, whose emulated ticks come in bunches, once kept a timer entry
/// without any handler frame after it, which only that case leaves.)
fn holds_the_ticks_frames(frames: &[&str]) -> bool {
    const HANDLER: [&str; 3] = ["hrtimer_interrupt", "tick_nohz_handler", "tick_sched_timer"];
    const ENTRY: [&str; 2] = ["apic_timer_interrupt", "asm_common_interrupt"];
    if frames.iter().any(|f| HANDLER.iter().any(|h| f.contains(h))) {
        return true;
    }
    let Some(entry) = frames
        .iter()
        .rposition(|f| ENTRY.iter().any(|e| f.contains(e)))
    else {
        return false;
    };
    !frames[entry..]
        .iter()
        .any(|f| f.contains("irq_exit") || f.contains("softirq"))
}

/// By default the scheduler tick takes the samples where it can serve: at
/// the kernel's HZ, in the function that burns the CPU, and with none of
/// the timer interrupt's own kernel frames (hrtimer_interrupt and the
/// rest) in any stack.
#[test]
fn the_kernel_tick_takes_the_samples_by_default() {
    let test = "the_kernel_tick_takes_the_samples_by_default";
    if !root_or_skip(test) {
        return;
    }
    if let Err(why) = tick_can_sample() {
        eprintln!("SKIP {test}: the tick cannot drive the sampler here: {why}");
        return;
    }
    let dir = tempdir::Dir::new("tick");
    let Some(bin) = build_c_target(test, "c_epoll_loop.c", &dir) else {
        return;
    };
    let mut target = Target::start(&bin, &["--stalls-ms", "120,250", "--gap-ms", "150"]);
    let fin = trace_scenario(&mut target, &[]);
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let (hz, sampler) = sampling_of(&fin);
    assert_eq!(
        sampler, "tick",
        "the default sampler on a kernel whose tick can serve"
    );
    assert!(
        [100.0, 250.0, 300.0, 1000.0].contains(&hz),
        "{hz} Hz is no kernel HZ"
    );
    let stalls = target.stalls();
    let errors = assert_stalls_witnessed(&fin, &stalls, THRESHOLD_MS);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (hot, total) = on_cpu_samples(span, "hot_spin_ms");
        let expected = span["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9 * hz;
        eprintln!(
            "TICK {}: {hot}/{total} samples under hot_spin_ms, about {expected:.0} expected at {hz} Hz",
            t.label
        );
        // One sample per tick while the thread runs: 25 % slack for where
        // the first and last ticks fall and for the age check. An emulated
        // CPU that falls behind takes its late ticks as one (the tick
        // timer skips the periods it missed): there, at least 30 %.
        let floor = if emulated() { 0.3 } else { 0.75 };
        assert!(
            (floor * expected..=1.25 * expected + 1.0).contains(&(total as f64)),
            "{}: {total} samples, expected about {expected:.0}",
            t.label
        );
        assert!(
            hot as f64 >= 0.9 * total as f64,
            "{}: only {hot} of {total} under hot_spin_ms",
            t.label
        );
        // On-CPU stacks only: a thread preempted on a timer interrupt's way
        // out waits on the runqueue in that interrupt's frames, rightly.
        let with_tick: Vec<&Value> = span["stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|st| st["kind"] == "on-cpu")
            .filter(|st| holds_the_ticks_frames(&frames_of(st)))
            .collect();
        assert!(
            with_tick.is_empty(),
            "{}: on-CPU stacks with the tick interrupt's own frames: {with_tick:?}",
            t.label
        );
        // The stall's own code. On an emulated CPU reading the clock is
        // slow enough for the spin's clock reads (now_ns) to be the blame.
        let blame = span["blame"]["function"].as_str().unwrap_or("");
        let own: &[&str] = if emulated() {
            &["inner_work", "hot_spin_ms", "now_ns"]
        } else {
            &["inner_work"]
        };
        assert!(own.contains(&blame), "{}", span["blame"]);
    }
    report(test, &errors);
}
