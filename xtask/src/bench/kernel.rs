//! Section 3: what lagtrace's BPF programs cost in the kernel. With
//! `kernel.bpf_stats_enabled=1` (restored afterwards) it reads each program's
//! run count and run time before and after a loaded round, for the asyncio
//! and Node.js servers and for a synthetic epoll loop spinning at hundreds
//! of thousands of iterations per second (the worst case for the
//! per-iteration probes), where it also checks lagtrace keeps up: iterations
//! it counted vs the loop's own count, and events lost.
use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Section,
    bpfstats::{self, ProgCost, StatsSwitch},
    lagtrace::{Lagtrace, LagtraceRun},
    overhead, procfs,
    report::Table,
    stats::{pct, thousands},
    targets::{self, Target},
    wrk,
};

fn traced_programs(lt: &Lagtrace) -> Result<Vec<u64>> {
    let ids = bpfstats::prog_ids_of(lt.pid());
    if ids.is_empty() {
        bail!(
            "found no BPF program ids in /proc/{}/fdinfo of lagtrace",
            lt.pid()
        );
    }
    Ok(ids)
}

fn cost_rows(t: &mut Table, scenario: &str, costs: &[ProgCost]) {
    for c in costs {
        t.row(vec![
            scenario.to_owned(),
            format!("`{}`", c.name),
            thousands(c.events as f64),
            thousands(c.events_per_s()),
            c.ns_per_event().map_or("–".into(), |ns| format!("{ns:.0}")),
            pct(c.cpu_share()),
        ]);
    }
    let total_ns: u64 = costs.iter().map(|c| c.run_time_ns).sum();
    if let Some(wall) = costs.first().map(|c| c.wall_s) {
        t.row(vec![
            scenario.to_owned(),
            "**all programs**".into(),
            thousands(costs.iter().map(|c| c.events as f64).sum()),
            String::new(),
            String::new(),
            pct(total_ns as f64 / 1e9 / wall),
        ]);
    }
}

/// One wrk round on `target` traced with `args`, with BPF counters around it.
fn loaded_round(ctx: &Ctx, target: &Target, args: &[&str]) -> Result<(Vec<ProgCost>, LagtraceRun)> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    overhead::settle(ctx)?;
    let lt = Lagtrace::start(&ctx.lagtrace, target.pid, &args)?;
    let ids = traced_programs(&lt)?;
    let a = bpfstats::snapshot(&ids)?;
    let mark = lt.mark()?;
    let load = wrk::run(target.port, ctx.plan.load_secs);
    let b = bpfstats::snapshot(&ids);
    let run = lt.stop(Some(mark))?;
    load?;
    Ok((bpfstats::delta(&a, &b?), run))
}

/// The spin loop's own count for one `go`: (iterations, seconds).
pub(super) fn spin_once(spin: &mut Target, secs: u64) -> Result<(u64, f64)> {
    spin.proc.send("go\n")?;
    let line = spin.proc.wait_line(
        "`DONE <iterations> <ns>`",
        Duration::from_secs(secs + 30),
        |_, l| l.starts_with("DONE "),
    )?;
    let mut it = line.split_whitespace().skip(1);
    let parsed = (|| -> Option<(u64, f64)> {
        let n = it.next()?.parse().ok()?;
        let ns: f64 = it.next()?.parse().ok()?;
        Some((n, ns / 1e9))
    })();
    parsed.with_context(|| format!("spin loop printed `{line}`"))
}

pub fn section_kernel(ctx: &Ctx) -> Result<Section> {
    let _stats = StatsSwitch::enable().context("could not enable BPF stats")?;
    let mut body = format!(
        "With `sysctl -w kernel.bpf_stats_enabled=1` (restored afterwards), lagtrace's programs \
         (found by the `prog_id` of its own fds) are read with `bpftool prog show -j` just before \
         and after a `{}` round. *ns/event* is `run_time_ns / run_cnt` over that window, the \
         program's own run time (not the tracepoint dispatch around it); *CPU* is its run time \
         as a share of one core. Every program fires for every task on the machine and \
         filters by pid inside, so event counts are machine-wide: the epoll programs also run \
         for wrk's own `epoll_wait` calls, the sched programs for every context switch.\n\n",
        wrk::args(ctx.plan.load_secs)
    );
    let mut t = Table::new(&[
        "scenario",
        "program",
        "events",
        "events/s",
        "ns/event",
        "CPU (% of one core)",
    ]);
    let mut headline = Vec::new();
    {
        let asyncio = targets::asyncio_http(&ctx.python, "asyncio_http", &[])?;
        let node = targets::node_http()?;
        for (scenario, target, args) in [
            ("asyncio + wrk, default", &asyncio, &[][..]),
            ("asyncio + wrk, -F 4999", &asyncio, &["-F", "4999"][..]),
            ("Node.js + wrk, default", &node, &[][..]),
        ] {
            eprintln!("-- kernel cost: {scenario}");
            let (costs, _run) = loaded_round(ctx, target, args)?;
            if scenario == "asyncio + wrk, default" {
                let per: Vec<String> = costs
                    .iter()
                    .filter_map(|c| Some(format!("{} {:.0}", c.name, c.ns_per_event()?)))
                    .collect();
                headline.push(format!(
                    "kernel ns/event (asyncio + wrk): {}",
                    per.join(", ")
                ));
            }
            cost_rows(&mut t, scenario, &costs);
        }
    }

    // The synthetic loop: untraced first for its natural rate, then traced.
    let secs = ctx.plan.spin_secs;
    let bin = targets::build_spin_loop(&ctx.out)?;
    let mut spin = targets::spin_loop(&bin, secs)?;
    eprintln!("-- kernel cost: spin loop, untraced");
    let settled = overhead::settle(ctx)?;
    let (n0, s0) = spin_once(&mut spin, secs)?;
    let clean0 = settled && procfs::other_lagtraces(None).is_empty();
    eprintln!("-- kernel cost: spin loop, traced");
    let settled = overhead::settle(ctx)?;
    let lt = Lagtrace::start(&ctx.lagtrace, spin.pid, &[])?;
    let ids = traced_programs(&lt)?;
    let a = bpfstats::snapshot(&ids)?;
    let mark = lt.mark()?;
    let spun = spin_once(&mut spin, secs);
    let clean1 = settled && procfs::other_lagtraces(Some(lt.pid())).is_empty();
    let b = bpfstats::snapshot(&ids);
    let run = lt.stop(Some(mark))?;
    let (n1, s1) = spun?;
    let costs = bpfstats::delta(&a, &b?);
    spin.proc.close_stdin();
    spin.proc.stop()?;
    let scenario = "spin loop (epoll_wait timeout 0), default";
    cost_rows(&mut t, scenario, &costs);
    body.push_str(&t.render());

    let counted: u64 = run.iterations();
    let exits = costs
        .iter()
        .find(|c| c.name == "epoll_exit")
        .map_or(0, |c| c.events);
    let lost = run.lost();
    let warnings = run.warnings();
    let mut s = Table::new(&["spin loop", "untraced", "traced by lagtrace (default)"]);
    s.row(vec![
        "loop iterations/s (its own count)".into(),
        format!(
            "{}{}",
            thousands(n0 as f64 / s0),
            if clean0 { "" } else { " †" }
        ),
        format!(
            "{}{}",
            thousands(n1 as f64 / s1),
            if clean1 { "" } else { " †" }
        ),
    ]);
    s.row(vec![
        "iterations in the spin (its own count)".into(),
        thousands(n0 as f64),
        thousands(n1 as f64),
    ]);
    s.row(vec![
        "iterations lagtrace's summary counted (whole trace)".into(),
        "–".into(),
        thousands(counted as f64),
    ]);
    s.row(vec![
        "`epoll_exit` runs during the spin, any process (bpf stats)".into(),
        "–".into(),
        thousands(exits as f64),
    ]);
    s.row(vec![
        "events lost (lagtrace's warning)".into(),
        "–".into(),
        lost.to_string(),
    ]);
    s.row(vec![
        "lagtrace's own CPU during the spin".into(),
        "–".into(),
        format!(
            "{} (stat), {} (schedstat)",
            pct(run.cpu_share),
            pct(run.cpu_share_sched)
        ),
    ]);
    let _ = write!(
        body,
        "\n**Synthetic loop** (`bench/targets/spin_loop.c`, gcc -O2): `epoll_wait(…, 0)` in a tight \
         loop for {secs} s, once untraced and once traced by lagtrace at default settings.\n\n{}",
        s.render()
    );
    for (clean, which) in [(clean0, "untraced"), (clean1, "traced")] {
        if !clean {
            let _ = writeln!(
                body,
                "\n† Another lagtrace (not the bench's) was running during the {which} spin: \
                 its tracepoints slow every epoll_wait on the machine, so that rate is understated."
            );
        }
    }
    if !warnings.is_empty() {
        let _ = writeln!(body, "\nlagtrace's warnings: {}", warnings.join(" / "));
    }
    let slowdown = (n1 as f64 / s1) / (n0 as f64 / s0);
    headline.push(format!(
        "spin loop: {} iterations/s untraced, {} traced ({slowdown:.2}×); lagtrace counted {} \
         iterations (the loop's own count: {}), lost {lost}; lagtrace CPU {} (schedstat {})",
        thousands(n0 as f64 / s0),
        thousands(n1 as f64 / s1),
        thousands(counted as f64),
        thousands(n1 as f64),
        pct(run.cpu_share),
        pct(run.cpu_share_sched),
    ));
    Ok(Section {
        title: "3. Kernel-side cost".into(),
        body,
        headline,
    })
}
