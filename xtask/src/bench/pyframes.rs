//! Section 6: Python frames read in the kernel at each sample (issue 12).
//! What the frame walk costs in the kernel per sample with a 30- and a
//! 60-frame Python stack, and what lagtrace itself costs during a storm of
//! ~50 stalls/s, with the on-CPU samples that lack Python frames counted.
//! Runs alone with `cargo xtask bench --only python`.
use std::{fs, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    Ctx, Section,
    bpfstats::{self, StatsSwitch},
    lagtrace::Lagtrace,
    overhead,
    proc::{self, Stream},
    report::Table,
    stats::{mib, pct},
    targets,
};
use crate::util;

/// Python frames below the recursion in `python_frames.py --scenario deep`
/// (`<module>`, `main`, asyncio's run loop, the task, the lambda, the leaf
/// and `burn_cpu`).
const BASE_FRAMES: u32 = 10;
/// The one stall each depth is measured over.
const STALL_MS: u32 = 3000;

fn spans(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// On-CPU samples of all spans, and those without a Python frame.
fn on_cpu_python(spans: &[Value]) -> (u64, u64) {
    let (mut total, mut without) = (0, 0);
    for s in spans {
        for st in s["stacks"].as_array().into_iter().flatten() {
            if st["kind"] != "on-cpu" {
                continue;
            }
            let n = st["samples"].as_u64().unwrap_or(0);
            total += n;
            if python_frames(st) == 0 {
                without += n;
            }
        }
    }
    (total, without)
}

/// Named Python frames of one JSON stack, by its `kinds` array (files
/// older than it: by the `.py:` in the label).
fn python_frames(st: &Value) -> usize {
    let labels = st["frames"].as_array().into_iter().flatten();
    match st["kinds"].as_array() {
        Some(kinds) => kinds
            .iter()
            .zip(labels)
            .filter(|(k, f)| *k == "python" && *f != "[unknown python]")
            .count(),
        None => labels
            .filter(|f| f.as_str().is_some_and(|f| f.contains(".py:")))
            .count(),
    }
}

/// The deepest Python stack of the spans' on-CPU samples.
fn python_depth(spans: &[Value]) -> usize {
    spans
        .iter()
        .flat_map(|s| s["stacks"].as_array().into_iter().flatten())
        .filter(|st| st["kind"] == "on-cpu")
        .map(python_frames)
        .max()
        .unwrap_or(0)
}

struct Depth {
    frames: usize,
    samples: u64,
    sample_ns: u64,
    sample_events: u64,
    switch_ns: u64,
    switch_events: u64,
    /// `on_cpu_sample`'s mean run time while the target idled: what a run
    /// that only filters costs (other tasks, the other CPU).
    filter_ns: f64,
}

impl Depth {
    /// Run time per target sample with the filter-only runs taken out:
    /// the runs beyond the span's on-CPU samples are charged `filter_ns` each.
    fn net_us(&self) -> f64 {
        let others = self.sample_events.saturating_sub(self.samples) as f64;
        let net = (self.sample_ns as f64 - others * self.filter_ns).max(0.0);
        net / 1e3 / self.samples.max(1) as f64
    }
}

/// One long stall at a recursion depth, with the BPF counters around it.
fn measure_depth(ctx: &Ctx, depth: u32) -> Result<Depth> {
    let script = util::in_repo("lagtrace/tests/targets/python_frames.py");
    let truth = ctx.out.join(format!("pyframes-truth-{depth}.jsonl"));
    let spans_file = ctx.out.join(format!("pyframes-spans-{depth}.jsonl"));
    let _ = fs::remove_file(&spans_file);
    let mut cmd = Command::new(&ctx.python.path);
    cmd.arg(&script)
        .args(["--scenario", "deep", "--depth", &depth.to_string()])
        .args(["--stalls-ms", &STALL_MS.to_string()])
        .arg("--truth")
        .arg(&truth);
    let targets::Target {
        proc: mut target,
        pid,
        ..
    } = targets::start("python_frames", &mut cmd, false)?;
    overhead::settle(ctx)?;
    // The CPU clock: its program (`on_cpu_sample`) runs only on the target's
    // threads, so its run time is the walks' (the tick's sees every hrtimer).
    let args = vec![
        "-F".to_owned(),
        "499".to_owned(),
        "--spans".to_owned(),
        spans_file.display().to_string(),
    ];
    let lt = Lagtrace::start(&ctx.lagtrace, pid, &args)?;
    let ids = bpfstats::prog_ids_of(lt.pid());
    // The target idles in its loop here: every run only filters.
    let idle = bpfstats::snapshot(&ids)?;
    proc::sleep(Duration::from_secs(1))?;
    let a = bpfstats::snapshot(&ids)?;
    let filter_ns = bpfstats::delta(&idle, &a)
        .iter()
        .find(|c| c.name == "on_cpu_sample")
        .and_then(|c| c.ns_per_event())
        .unwrap_or(0.0);
    proc::signal(pid, libc::SIGUSR1)?;
    target.wait_line("`DONE`", Duration::from_secs(60), |s, l| {
        s == Stream::Stdout && l == "DONE"
    })?;
    proc::sleep(Duration::from_millis(200))?;
    let b = bpfstats::snapshot(&ids)?;
    lt.stop(None)?;
    drop(target);
    let costs = bpfstats::delta(&a, &b);
    let cost = |name: &str| {
        costs
            .iter()
            .find(|c| c.name == name)
            .map_or((0, 0), |c| (c.run_time_ns, c.events))
    };
    let spans = spans(&spans_file);
    // On-CPU samples only: a span's `samples` also counts the runqueue and
    // off-CPU stacks taken at its context switches, which a loaded host
    // multiplies and which `on_cpu_sample` did not take.
    let (samples, _) = on_cpu_python(&spans);
    let (sample_ns, sample_events) = cost("on_cpu_sample");
    let (switch_ns, switch_events) = cost("sched_switch");
    Ok(Depth {
        frames: python_depth(&spans),
        samples,
        sample_ns,
        sample_events,
        switch_ns,
        switch_events,
        filter_ns,
    })
}

pub fn section_pyframes(ctx: &Ctx) -> Result<Section> {
    let mut headline = Vec::new();
    let mut body = format!(
        "CPython {} (`{}`). **Kernel cost per sample**: `python_frames.py --scenario deep` \
         recurses to the given depth and burns the CPU for {STALL_MS} ms inside one loop \
         iteration; lagtrace samples it at 499 Hz, and every sample walks the Python frames. \
         With `kernel.bpf_stats_enabled=1` (restored afterwards), *µs per target sample* is \
         the `on_cpu_sample` program's whole run time over the stall ÷ the span's on-CPU samples: \
         an upper bound, since it also carries the program's runs on the other CPU, which \
         only filter. *Net* charges those extra runs at the program's mean run time over \
         the second before the stall, while the target idled (every run only filtered), \
         and takes them out. *ns/event* is the plain per-run average.\n\n",
        ctx.python.version,
        ctx.python.path.display()
    );
    let mut t = Table::new(&[
        "Python frames in the stack",
        "target on-CPU samples",
        "`on_cpu_sample` runs",
        "µs per target sample (upper bound)",
        "µs per target sample (net)",
        "filter-only run ns",
        "`on_cpu_sample` ns/event",
        "`sched_switch` ns/event",
    ]);
    {
        let _stats = StatsSwitch::enable().context("could not enable BPF stats")?;
        for total in [BASE_FRAMES, 30, 60] {
            let depth = total.saturating_sub(BASE_FRAMES).max(1);
            eprintln!("-- python frames: kernel cost with {total} frames");
            let d = measure_depth(ctx, depth)?;
            let per_sample = d.sample_ns as f64 / 1e3 / d.samples.max(1) as f64;
            t.row(vec![
                d.frames.to_string(),
                d.samples.to_string(),
                d.sample_events.to_string(),
                format!("{per_sample:.1}"),
                format!("{:.1}", d.net_us()),
                format!("{:.0}", d.filter_ns),
                format!("{:.0}", d.sample_ns as f64 / d.sample_events.max(1) as f64),
                format!("{:.0}", d.switch_ns as f64 / d.switch_events.max(1) as f64),
            ]);
            if total == 60 {
                headline.push(format!(
                    "kernel Python walk: ≤ {per_sample:.1} µs per sample ({:.1} µs net of filter-only runs) with a {}-frame Python stack",
                    d.net_us(),
                    d.frames
                ));
            }
        }
    }
    body.push_str(&t.render());

    let storm = targets::stall_storm(&ctx.python)?;
    let spans_file = ctx.out.join("pyframes-storm-spans.jsonl");
    let _ = fs::remove_file(&spans_file);
    let args: Vec<String> = vec![
        "--threshold".into(),
        "10ms".into(),
        "--spans".into(),
        spans_file.display().to_string(),
    ];
    eprintln!("-- python frames: stall storm");
    overhead::settle(ctx)?;
    let lt = Lagtrace::start(&ctx.lagtrace, storm.pid, &args)?;
    let mark = lt.mark()?;
    proc::sleep(Duration::from_secs(ctx.plan.window_secs))?;
    let run = lt.stop(Some(mark))?;
    drop(storm);
    let spans = spans(&spans_file);
    let per_s = spans.len() as f64 / run.window_s;
    let (total, without) = on_cpu_python(&spans);
    let health = &run.summary_json["health"];
    let reads = format!(
        "{} code objects read from the targets, {} found stale",
        health["code_objects_read"].as_u64().unwrap_or(0),
        health["code_objects_stale"].as_u64().unwrap_or(0)
    );
    let mut t = Table::new(&[
        "scenario",
        "window",
        "CPU, stat",
        "CPU, schedstat",
        "peak RSS",
        "spans",
        "on-CPU samples",
        "without Python frames",
    ]);
    t.row(vec![
        "stall storm, --threshold 10ms --spans".into(),
        format!("{:.1} s", run.window_s),
        pct(run.cpu_share),
        pct(run.cpu_share_sched),
        mib(run.peak_rss_kib),
        format!("{} ({per_s:.0}/s)", spans.len()),
        total.to_string(),
        without.to_string(),
    ]);
    headline.push(format!(
        "lagtrace during a {per_s:.0} stalls/s storm, Python frames from the kernel: CPU {} / {}; {without} of {total} on-CPU samples without Python frames",
        pct(run.cpu_share),
        pct(run.cpu_share_sched),
    ));
    body.push_str(&format!(
        "\n**lagtrace's own cost during the storm** (as in section 4, same target and flags), \
         and the on-CPU samples whose stack has no Python frame (a torn or missing walk). \
         No memory of the target is read per sample; its summary's health: {}\n\n",
        reads
    ));
    body.push_str(&t.render());
    Ok(Section {
        title: "6. Python frames in the kernel".into(),
        body,
        headline,
    })
}
