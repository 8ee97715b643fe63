//! Section 4: lagtrace's own cost — its CPU share (utime + stime from
//! /proc/<pid>/stat over the measured window, divided by wall time; also the
//! finer schedstat figure) and peak RSS (VmHWM read just before stopping it)
//! on an idle target, under wrk load, and during a storm of ~50 stalls per
//! second, all with stack sampling on.
use std::{fs, time::Duration};

use anyhow::Result;

use super::{
    Ctx, Section,
    lagtrace::{Lagtrace, LagtraceRun},
    overhead, proc,
    report::Table,
    stats::{mib, pct},
    targets::{self, Target},
    wrk,
};

enum Work {
    Idle,
    Wrk,
}

fn measure(ctx: &Ctx, target: &Target, args: &[String], work: Work) -> Result<LagtraceRun> {
    overhead::settle(ctx)?;
    let lt = Lagtrace::start(&ctx.lagtrace, target.pid, args)?;
    let mark = lt.mark()?;
    let worked = match work {
        Work::Idle => proc::sleep(Duration::from_secs(ctx.plan.window_secs)),
        Work::Wrk => wrk::run(target.port, ctx.plan.load_secs).map(|_| ()),
    };
    let run = lt.stop(Some(mark))?;
    worked?;
    Ok(run)
}

pub fn section_self_cost(ctx: &Ctx) -> Result<Section> {
    let mut t = Table::new(&[
        "scenario",
        "window",
        "CPU, stat (% of one core)",
        "CPU, schedstat",
        "startup CPU",
        "peak RSS (VmHWM)",
        "spans",
    ]);
    let mut headline = Vec::new();
    let none: Vec<String> = Vec::new();
    {
        let asyncio = targets::asyncio_http(&ctx.python, "asyncio_http", &[])?;
        eprintln!("-- self cost: idle asyncio");
        let idle = measure(ctx, &asyncio, &none, Work::Idle)?;
        row(&mut t, "idle asyncio server, default", &idle, "0".into());
        eprintln!("-- self cost: asyncio + wrk");
        let busy = measure(ctx, &asyncio, &none, Work::Wrk)?;
        row(
            &mut t,
            "asyncio server + wrk, default",
            &busy,
            spans_of(&busy),
        );
        headline.push(format!(
            "lagtrace CPU (stat / schedstat): idle target {} / {}, asyncio+wrk {} / {}; peak RSS {}",
            pct(idle.cpu_share),
            pct(idle.cpu_share_sched),
            pct(busy.cpu_share),
            pct(busy.cpu_share_sched),
            mib(busy.peak_rss_kib)
        ));
    }
    {
        let node = targets::node_http()?;
        eprintln!("-- self cost: node + wrk");
        let busy = measure(ctx, &node, &none, Work::Wrk)?;
        row(
            &mut t,
            "Node.js server + wrk, default",
            &busy,
            spans_of(&busy),
        );
    }
    let storm = targets::stall_storm(&ctx.python)?;
    let spans_file = ctx.out.join("storm-spans.jsonl");
    let args: Vec<String> = vec![
        "--threshold".into(),
        "10ms".into(),
        "--spans".into(),
        spans_file.display().to_string(),
    ];
    eprintln!("-- self cost: stall storm");
    let run = measure(ctx, &storm, &args, Work::Idle)?;
    drop(storm);
    // Span lines: the header and summary records carry a `record` field.
    let spans = fs::read_to_string(&spans_file)
        .map(|s| s.lines().filter(|l| !l.starts_with("{\"record\"")).count())
        .unwrap_or(0);
    let per_s = spans as f64 / run.window_s;
    row(
        &mut t,
        "stall storm, --threshold 10ms --spans",
        &run,
        format!("{spans} ({per_s:.0}/s)"),
    );
    headline.push(format!(
        "lagtrace during a {per_s:.0} stalls/s storm: CPU {} / {}, peak RSS {}",
        pct(run.cpu_share),
        pct(run.cpu_share_sched),
        mib(run.peak_rss_kib)
    ));
    let mut body = format!(
        "lagtrace at default sampling (499 Hz, so every span comes with stacks). *CPU, stat* is \
         (utime + stime) from `/proc/<lagtrace>/stat` over the window ÷ wall time — clock-tick \
         resolution, so ±{:.1} % over these windows; *CPU, schedstat* sums the run time of its \
         live threads from `/proc/<pid>/task/*/schedstat` (ns resolution). The window starts \
         once lagtrace prints `lagtrace: tracing`; *startup CPU* is what it used before that \
         (loading and attaching the probes). Peak RSS is VmHWM, read just before SIGINT. \
         The storm target (`bench/targets/stall_storm.py`, `-X perf` where supported) blocks \
         its loop on the CPU for 15 ms then yields for 5 ms: ~50 stalls/s over a 10 ms \
         threshold (a loop cannot block 25 ms every 20 ms; the stalls would overlap).\n\n",
        1.0 / ctx.plan.window_secs.min(ctx.plan.load_secs) as f64
    );
    body.push_str(&t.render());
    Ok(Section {
        title: "4. lagtrace's own cost".into(),
        body,
        headline,
    })
}

fn row(t: &mut Table, name: &str, run: &LagtraceRun, spans: String) {
    t.row(vec![
        name.to_owned(),
        format!("{:.1} s", run.window_s),
        pct(run.cpu_share),
        pct(run.cpu_share_sched),
        format!("{:.2} s", run.startup_cpu_s),
        mib(run.peak_rss_kib),
        spans,
    ]);
}

fn spans_of(run: &LagtraceRun) -> String {
    run.summary()
        .iter()
        .map(|r| r.spans)
        .sum::<u64>()
        .to_string()
}
