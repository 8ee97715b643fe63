//! Section 8 (`--only attach`): what each attach mode (`lagtrace --attach
//! …`) costs, in the same run, so the cheapest can be chosen per kernel
//! (issue #15): the tight `epoll_wait(…, 0)` loop's rate, a syscall in a
//! process lagtrace does not trace (`getppid`, ns per call: the host-wide
//! cost), and target CPU per request of the asyncio and Node.js servers.
//! A mode the kernel refuses is reported as such, not measured.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{
    Ctx, Section,
    floors::{Floor, PerfFloor},
    kernel::spin_once,
    lagtrace::Lagtrace,
    overhead::{self, Mode, Tool, compare, interleave, render},
    report::Table,
    stats::{self, Spread, ratio_cell, thousands},
    targets,
};
use crate::util;

/// `--attach` values, most host-friendly first.
const MODES: [&str; 6] = [
    "fentry",
    "exit-tp",
    "tp-btf",
    "raw-tp",
    "tracepoints",
    "auto",
];
/// The floors each server's table ends with.
const SERVER_FLOORS: [Floor; 3] = [Floor::Both, Floor::Exits, Floor::Clock];
/// getppid calls per measurement, and measurements per mode.
const GETPPID_CALLS: &str = "2000000";
const GETPPID_REPEATS: usize = 5;
/// Spin-loop rounds per mode (see [`spin_rounds`]).
const SPIN_ROUNDS: usize = 3;

/// Median ns per getppid call over a few runs of the loop.
fn getppid_ns(bin: &Path) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..GETPPID_REPEATS {
        let out = util::capture(Command::new(bin).arg(GETPPID_CALLS))?;
        let ns: f64 = out
            .trim()
            .strip_prefix("NS_PER_CALL ")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("getppid loop printed `{out}`"))?;
        v.push(ns);
    }
    Ok(Spread::of(&v).map_or(f64::NAN, |s| s.median))
}

/// One mode on the spin loop: (iterations/s, getppid ns/call), or why the
/// kernel refused it.
fn spin_and_syscall(
    ctx: &Ctx,
    spin: &mut targets::Target,
    getppid: &Path,
    mode: Option<&str>,
) -> Result<std::result::Result<(f64, f64), String>> {
    let secs = ctx.plan.spin_secs;
    let lt = match mode {
        None => None,
        Some(m) => {
            overhead::settle(ctx)?;
            match Lagtrace::start(&ctx.lagtrace, spin.pid, &["--attach".into(), m.into()]) {
                Ok(lt) => Some(lt),
                Err(e) => return Ok(Err(format!("{e:#}").lines().last().unwrap_or("").into())),
            }
        }
    };
    let (n, s) = spin_once(spin, secs)?;
    let ns = getppid_ns(getppid)?;
    if let Some(lt) = lt {
        lt.stop(None)?;
    }
    Ok(Ok((n as f64 / s, ns)))
}

/// What one spin-loop entry gave: (iterations/s, getppid ns/call) per
/// round, or why the kernel refused the mode.
type Spun = std::result::Result<Vec<(f64, f64)>, String>;

/// The untraced spin loop and each of [`MODES`] on it, over
/// [`SPIN_ROUNDS`] rounds (one with `--quick`), each round in an order of
/// its own like the servers' rounds: one 5 s spin per mode swung by ±3 %
/// between runs of the same configuration (run 11: `auto` 0.48×, `exit-tp`
/// 0.51×). Entry 0 is the untraced loop, then [`MODES`] in order.
fn spin_rounds(ctx: &Ctx, spin: &mut targets::Target, getppid: &Path) -> Result<Vec<Spun>> {
    let entries: Vec<Option<&str>> = std::iter::once(None)
        .chain(MODES.iter().map(|m| Some(*m)))
        .collect();
    let mut got: Vec<Spun> = entries.iter().map(|_| Ok(Vec::new())).collect();
    let rounds = if ctx.plan.quick { 1 } else { SPIN_ROUNDS };
    for r in 0..rounds {
        for i in overhead::shuffled(entries.len(), r as u64) {
            if got[i].is_err() {
                continue;
            }
            let label = entries[i].map_or("untraced".into(), |m| format!("--attach {m}"));
            eprintln!(
                "-- attach: spin + getppid, round {}/{rounds}: {label}",
                r + 1
            );
            match spin_and_syscall(ctx, spin, getppid, entries[i])? {
                Ok(x) => {
                    if let Ok(v) = &mut got[i] {
                        v.push(x);
                    }
                }
                Err(why) => got[i] = Err(why),
            }
        }
    }
    Ok(got)
}

/// The spin loop's rate with the epoll tracepoints enabled by `perf stat`
/// (counting, no program): what the tracepoint path costs before any of
/// lagtrace's work. Why not, if perf is missing.
fn tracepoints_alone(
    spin: &mut targets::Target,
    out: &Path,
    secs: u64,
    floor: Floor,
) -> Result<std::result::Result<f64, String>> {
    let perf = match PerfFloor::start(spin.pid, floor, out) {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let spun = spin_once(spin, secs);
    perf.stop();
    let (n, s) = spun?;
    Ok(Ok(n as f64 / s))
}

pub fn section_attach(ctx: &Ctx) -> Result<Section> {
    let mut body = String::from(
        "Each attach mode of lagtrace (`--attach`, default settings otherwise) on the same \
         targets in one run. *Spin loop*: `bench/targets/spin_loop.c`, `epoll_wait(…, 0)` in a \
         tight loop, iterations per second traced by that mode (median over rounds that each \
         run the modes in a shuffled order; the ratio is taken per round). *getppid*: \
         `bench/targets/getppid_loop.c` in a separate, untraced process (median of 5 runs of \
         2,000,000 calls) while lagtrace traces the idle spin loop: what every other process \
         on the host pays per syscall. *CPU/request*: the servers' CPU time per request, \
         interleaved rounds as in section 1. The modes sample on the kernel's tick (the \
         default where it can serve); after them come lagtrace sampling by a 499 Hz CPU \
         clock per thread instead (`-F 499`), without sampling (`-F 0`), and the floors: the \
         epoll syscall tracepoints enabled by `perf stat` (counting only, no BPF program, no lagtrace), and a \
         `perf record` cpu-clock at lagtrace's default 499 Hz on the target's threads (what \
         the sampling ticks cost before any program runs).\n\n",
    );
    let mut headline = Vec::new();
    let spin_bin = targets::build_spin_loop(&ctx.out)?;
    let getppid = targets::build_getppid_loop(&ctx.out)?;
    let mut spin = targets::spin_loop(&spin_bin, ctx.plan.spin_secs)?;
    let spun = spin_rounds(ctx, &mut spin, &getppid)?;
    let [base, modes @ ..] = &spun[..] else {
        unreachable!("spin_rounds measures the untraced loop and every mode")
    };
    let Ok(base) = base else {
        anyhow::bail!("the untraced spin loop could not be measured");
    };
    let base_rates: Vec<f64> = base.iter().map(|r| r.0).collect();
    let base_rate = Spread::of(&base_rates).map_or(f64::NAN, |s| s.median);
    let base_ns =
        Spread::of(&base.iter().map(|r| r.1).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median);
    let mut t = Table::new(&[
        "mode",
        "spin loop iterations/s (median)",
        "spin ratio, median (min–max)",
        "getppid ns/call (other process)",
        "getppid added",
    ]);
    t.row(vec![
        "untraced".into(),
        thousands(base_rate),
        "1".into(),
        format!("{base_ns:.1}"),
        "—".into(),
    ]);
    let mut usable = Vec::new();
    for (m, got) in MODES.iter().zip(modes) {
        let runs = match got {
            Ok(runs) => runs,
            Err(why) => {
                t.row(vec![
                    format!("`--attach {m}`"),
                    format!("refused here: {why}"),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
        };
        let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let ratio = Spread::of(&stats::ratios(&rates, &base_rates));
        let ns = Spread::of(&runs.iter().map(|r| r.1).collect::<Vec<_>>())
            .map_or(f64::NAN, |s| s.median);
        let median = Spread::of(&rates).map_or(f64::NAN, |s| s.median);
        let cell = ratio.map_or_else(
            || "n/a".into(),
            |r| format!("{:.2}× ({:.2}–{:.2})", r.median, r.min, r.max),
        );
        t.row(vec![
            format!("`--attach {m}`"),
            thousands(median),
            cell.clone(),
            format!("{ns:.1}"),
            format!("{:+.1} ns", ns - base_ns),
        ]);
        headline.push(format!(
            "--attach {m}: spin {cell}, getppid elsewhere {:+.1} ns/call",
            ns - base_ns
        ));
        usable.push(*m);
    }
    for floor in [Floor::Both, Floor::Exits] {
        match tracepoints_alone(&mut spin, &ctx.out, ctx.plan.spin_secs, floor)? {
            Ok(rate) => {
                t.row(vec![
                    floor.label().into(),
                    thousands(rate),
                    format!("{:.2}×", rate / base_rate),
                    String::new(),
                    String::new(),
                ]);
                headline.push(format!(
                    "spin loop with {} (perf stat counting, no BPF): {:.2}×",
                    floor.label(),
                    rate / base_rate
                ));
            }
            Err(why) => t.row(vec![
                floor.label().into(),
                format!("not measured: {why}"),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
    }
    spin.proc.close_stdin();
    spin.proc.stop()?;
    let _ = writeln!(body, "{}", t.render());
    body.push_str(
        "The last two rows are the floors of the tracepoint modes: the same syscall tracepoints \
         (entry and exit for `tracepoints`, exit only for `exit-tp`) enabled for the spin loop \
         by `perf stat` (counting only, no BPF program), so the loop pays the syscall slow path \
         and the tracepoint dispatch and nothing of lagtrace's.\n\n",
    );

    let asyncio = targets::asyncio_http(&ctx.python, "asyncio_http", &[])?;
    let node = targets::node_http()?;
    for (name, target) in [
        (format!("asyncio (Python {})", ctx.python.version), &asyncio),
        (format!("Node.js {}", ctx.node), &node),
    ] {
        let mut modes = vec![Mode {
            label: "untraced".into(),
            target,
            tool: Tool::Untraced,
        }];
        for m in &usable {
            modes.push(Mode {
                label: format!("lagtrace --attach {m}"),
                target,
                tool: Tool::Lagtrace(vec!["--attach".into(), (*m).into()]),
            });
        }
        // What the default costs with a CPU clock instead of the tick, and
        // without sampling, then the floors on this server: what a request
        // pays for the syscall tracepoints being on, before any program
        // runs, and for a CPU clock's ticks alone.
        modes.push(Mode {
            label: "lagtrace --attach auto -F 499 (CPU clock)".into(),
            target,
            tool: Tool::Lagtrace(vec![
                "--attach".into(),
                "auto".into(),
                "-F".into(),
                "499".into(),
            ]),
        });
        modes.push(Mode {
            label: "lagtrace --attach auto -F 0 (no sampling)".into(),
            target,
            tool: Tool::Lagtrace(vec![
                "--attach".into(),
                "auto".into(),
                "-F".into(),
                "0".into(),
            ]),
        });
        for floor in SERVER_FLOORS {
            modes.push(Mode {
                label: floor.label().replace('`', ""),
                target,
                tool: Tool::PerfFloor(floor),
            });
        }
        let results = interleave(ctx, &modes, ctx.plan.rounds)
            .with_context(|| format!("attach rounds on {name}"))?;
        let _ = write!(
            body,
            "\n### {name} HTTP server\n\n{}\n",
            render(&modes, &results)
        );
        let per: Vec<String> = usable
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{m} {}", ratio_cell(compare(&results, i + 1, 0).cpu)))
            .collect();
        // The rows after the modes (`-F 499`, `-F 0`, the floors), by their labels.
        let rest: Vec<String> = (usable.len() + 1..modes.len())
            .map(|i| {
                let cpu = ratio_cell(compare(&results, i, 0).cpu);
                format!("{} {cpu}", modes[i].label)
            })
            .collect();
        headline.push(format!(
            "{name} CPU/request ratio: {}; {}",
            per.join("; "),
            rest.join("; ")
        ));
    }
    Ok(Section {
        title: "8. Attach modes".into(),
        body,
        headline,
    })
}
