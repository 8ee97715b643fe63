//! Sections 1 and 2: what tracing costs the target. One harness runs
//! interleaved rounds (every mode once per round, in order, on long-lived
//! server processes) of the same wrk load, and reports each mode's
//! throughput, p99 and target CPU per request as ratios to its baseline mode
//! in the same round: median with min and max over rounds. Section 1 compares lagtrace (default
//! and -F 4999) with no tracing on the asyncio and Node.js servers; section 2
//! puts the alternatives (py-spy, asyncio debug mode, an in-process lag
//! monitor) through the same harness on the asyncio server.
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Ctx, Section,
    lagtrace::Lagtrace,
    proc::{self, Proc},
    procfs,
    report::Table,
    stats::{Spread, ms, ratio_cell, ratios, thousands},
    targets::{self, Target},
    wrk::{self, Load},
};

/// The goal for lagtrace at default settings: throughput ratio at least this.
pub const GOAL_RATIO: f64 = 0.99;
const WARMUP_SECS: u64 = 1;
/// The longest a round waits for someone else's lagtrace to exit.
const SETTLE_MAX: Duration = Duration::from_secs(20);

/// What runs alongside the target during a round.
pub enum Tool {
    Untraced,
    Lagtrace(Vec<String>),
    PySpy {
        bin: PathBuf,
        nonblocking: bool,
    },
    /// No lagtrace: one piece of its kernel set-up made by `perf` on the
    /// target alone (`floors.rs`).
    PerfFloor(super::floors::Floor),
}

pub struct Mode<'a> {
    pub label: String,
    pub target: &'a Target,
    pub tool: Tool,
}

/// One mode's result in one round.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub load: Load,
    /// Loop iterations lagtrace's summary counted (lagtrace modes only).
    pub iterations: Option<u64>,
    /// Anything unusual: a lost-events warning, a non-zero exit.
    pub notes: Vec<String>,
    /// The target's CPU time per request served, in µs (schedstat of its
    /// threads around the wrk run): it moves less than throughput when other
    /// work on a shared machine competes for the CPU.
    pub cpu_us_per_req: f64,
    /// Another lagtrace (not the bench's) was running at its start or end.
    pub foreign_tracer: bool,
}

/// wrk against `target`, with the target's CPU time over the run.
fn loaded(target: &Target, secs: u64) -> Result<(Load, f64)> {
    let c0 = procfs::sched_cpu_ns(target.pid);
    let load = wrk::run(target.port, secs)?;
    let c1 = procfs::sched_cpu_ns(target.pid);
    let per_req = if load.requests > 0 {
        c1.saturating_sub(c0) as f64 / 1e3 / load.requests as f64
    } else {
        f64::NAN
    };
    Ok((load, per_req))
}

/// Waits (within the bench's waiting budget, at most [`SETTLE_MAX`] at a
/// time) for lagtrace processes that are not the bench's to exit; true if
/// there are none now.
pub fn settle(ctx: &Ctx) -> Result<bool> {
    let start = Instant::now();
    let budget = ctx.wait_budget.get();
    let mut told = false;
    let clean = loop {
        let others = procfs::other_lagtraces(None);
        if others.is_empty() {
            break true;
        }
        let waited = start.elapsed();
        if waited >= SETTLE_MAX || waited >= budget {
            eprintln!("   another lagtrace is still running ({others:?}); going ahead");
            break false;
        }
        if !told {
            eprintln!("   another lagtrace is running ({others:?}); waiting for it to exit");
            told = true;
        }
        proc::sleep(Duration::from_millis(250))?;
    };
    ctx.wait_budget.set(budget.saturating_sub(start.elapsed()));
    Ok(clean)
}

/// Runs `rounds` rounds of every mode, each round in its own shuffled
/// order; returns `[mode][round]`.
///
/// A fixed order puts each mode at the same distance from the untraced
/// run it is divided by, round after round, so a host that drifts during
/// a round (a neighbour's load, a thermal or frequency change) biases the
/// later modes the same way every time. Shuffled, the drift spreads over
/// every mode as noise instead of as a verdict.
pub fn interleave(ctx: &Ctx, modes: &[Mode], rounds: usize) -> Result<Vec<Vec<Round>>> {
    let secs = ctx.plan.load_secs;
    let mut warmed: Vec<u32> = Vec::new();
    for m in modes {
        if !warmed.contains(&m.target.pid) {
            eprintln!("-- warm-up: {}", m.target.proc.name);
            wrk::run(m.target.port, WARMUP_SECS)?;
            warmed.push(m.target.pid);
        }
    }
    let mut out: Vec<Vec<Round>> = modes.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for i in shuffled(modes.len(), r as u64) {
            let m = &modes[i];
            eprintln!("-- round {}/{rounds}: {}", r + 1, m.label);
            let clean = settle(ctx)?;
            let mut round = one_round(ctx, m, secs)?;
            round.foreign_tracer = !clean || !procfs::other_lagtraces(None).is_empty();
            out[i].push(round);
        }
    }
    Ok(out)
}

/// `0..n` in an order of its own for each `seed` (Fisher–Yates on
/// xorshift64): reproducible from run to run, different from round to
/// round.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn one_round(ctx: &Ctx, m: &Mode, secs: u64) -> Result<Round> {
    let target = m.target;
    match &m.tool {
        Tool::Untraced => {
            let (load, cpu_us_per_req) = loaded(target, secs)?;
            Ok(Round {
                load,
                cpu_us_per_req,
                ..Round::default()
            })
        }
        Tool::Lagtrace(args) => {
            let lt = Lagtrace::start(&ctx.lagtrace, target.pid, args)?;
            let load = loaded(target, secs);
            let run = lt.stop(None)?;
            let (load, cpu_us_per_req) = load?;
            let mut notes = run.warnings();
            if !run.status.success() {
                notes.push(format!("lagtrace ended with {}", run.ended()));
            }
            Ok(Round {
                load,
                iterations: Some(run.iterations()),
                notes,
                cpu_us_per_req,
                foreign_tracer: false,
            })
        }
        Tool::PerfFloor(floor) => {
            let perf = super::floors::PerfFloor::start(target.pid, *floor, &ctx.out)
                .map_err(anyhow::Error::msg)?;
            let load = loaded(target, secs);
            perf.stop();
            let (load, cpu_us_per_req) = load?;
            Ok(Round {
                load,
                cpu_us_per_req,
                ..Round::default()
            })
        }
        Tool::PySpy { bin, nonblocking } => {
            let out = ctx.out.join("py-spy.raw");
            let mut cmd = Command::new(bin);
            cmd.args([
                "record",
                "--pid",
                &target.pid.to_string(),
                "--format",
                "raw",
            ])
            .arg("-o")
            .arg(&out);
            if *nonblocking {
                cmd.arg("--nonblocking");
            }
            let mut spy = Proc::spawn(
                "py-spy",
                &mut cmd,
                libc::SIGINT,
                Duration::from_secs(20),
                false,
            )?;
            // py-spy prints its progress on stdout.
            spy.wait_line("`py-spy> Sampling`", Duration::from_secs(30), |_, l| {
                l.starts_with("py-spy> Sampling")
            })?;
            let load = loaded(target, secs);
            let status = spy.stop()?;
            let (load, cpu_us_per_req) = load?;
            let mut notes = Vec::new();
            if !status.success() {
                notes.push(format!("py-spy ended with {status}"));
            }
            Ok(Round {
                load,
                iterations: None,
                notes,
                cpu_us_per_req,
                foreign_tracer: false,
            })
        }
    }
}

/// Throughput and p99 of mode `i` relative to mode `base`, per round.
pub struct Compared {
    pub rps: Option<Spread>,
    pub p99: Option<Spread>,
    /// Target CPU per request, mode / base.
    pub cpu: Option<Spread>,
}

pub fn compare(results: &[Vec<Round>], i: usize, base: usize) -> Compared {
    let rps = |m: usize| results[m].iter().map(|r| r.load.rps).collect::<Vec<_>>();
    let p99 = |m: usize| results[m].iter().map(|r| r.load.p99_ms).collect::<Vec<_>>();
    let cpu = |m: usize| {
        results[m]
            .iter()
            .map(|r| r.cpu_us_per_req)
            .collect::<Vec<_>>()
    };
    Compared {
        rps: Spread::of(&ratios(&rps(i), &rps(base))),
        p99: Spread::of(&ratios(&p99(i), &p99(base))),
        cpu: Spread::of(&ratios(&cpu(i), &cpu(base))),
    }
}

/// The results table (ratios against mode 0) and a per-round details block.
pub fn render(modes: &[Mode], results: &[Vec<Round>]) -> String {
    let mut t = Table::new(&[
        "mode",
        "req/s (median)",
        "throughput ratio, median (min–max)",
        "p99 (median)",
        "p99 ratio, median (min–max)",
        "target CPU/request (median)",
        "CPU/request ratio, median (min–max)",
        "notes",
    ]);
    for (i, m) in modes.iter().enumerate() {
        let rounds = &results[i];
        let rps = Spread::of(&rounds.iter().map(|r| r.load.rps).collect::<Vec<_>>());
        let p99 = Spread::of(&rounds.iter().map(|r| r.load.p99_ms).collect::<Vec<_>>());
        let cpu = Spread::of(&rounds.iter().map(|r| r.cpu_us_per_req).collect::<Vec<_>>());
        let c = compare(results, i, 0);
        let mut notes: Vec<String> = Vec::new();
        let its: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.iterations.map(|n| n as f64))
            .collect();
        if let Some(s) = Spread::of(&its) {
            notes.push(format!(
                "lagtrace counted {} loop iterations/round (median)",
                thousands(s.median)
            ));
        }
        let foreign = rounds.iter().filter(|r| r.foreign_tracer).count();
        if foreign > 0 {
            notes.push(format!(
                "another lagtrace (not the bench's) was running in {foreign} of {} rounds",
                rounds.len()
            ));
        }
        let errors: u64 = rounds.iter().map(|r| r.load.errors).sum();
        if errors > 0 {
            notes.push(format!("{errors} wrk errors"));
        }
        for r in rounds {
            for n in &r.notes {
                if !notes.contains(n) {
                    notes.push(n.clone());
                }
            }
        }
        t.row(vec![
            m.label.clone(),
            rps.map_or("n/a".into(), |s| thousands(s.median)),
            if i == 0 {
                "1 (baseline)".into()
            } else {
                ratio_cell(c.rps)
            },
            p99.map_or("n/a".into(), |s| ms(s.median)),
            if i == 0 {
                "1 (baseline)".into()
            } else {
                ratio_cell(c.p99)
            },
            cpu.map_or("n/a".into(), |s| format!("{:.1} µs", s.median)),
            if i == 0 {
                "1 (baseline)".into()
            } else {
                ratio_cell(c.cpu)
            },
            notes.join("; "),
        ]);
    }
    let mut out = t.render();
    out.push_str(
        "\n<details><summary>Per round: req/s, p99, target CPU/request \
         († another lagtrace was running)</summary>\n\n",
    );
    let mut header = vec!["round".to_owned()];
    header.extend(modes.iter().map(|m| m.label.clone()));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut d = Table::new(&header_refs);
    let n = results.first().map_or(0, Vec::len);
    for r in 0..n {
        let mut row = vec![(r + 1).to_string()];
        for mode in results {
            row.push(mode.get(r).map_or("n/a".into(), |x| {
                format!(
                    "{}, {}, {:.1} µs{}",
                    thousands(x.load.rps),
                    ms(x.load.p99_ms),
                    x.cpu_us_per_req,
                    if x.foreign_tracer { " †" } else { "" }
                )
            }));
        }
        d.row(row);
    }
    out.push_str(&d.render());
    out.push_str("\n</details>\n");
    out
}

/// Section 1: lagtrace's overhead on the asyncio and Node.js servers.
pub fn section_overhead(ctx: &Ctx) -> Result<Section> {
    let mut body = format!(
        "Load: `{}`, {} interleaved rounds (untraced, then lagtrace at default settings, then \
         lagtrace `-F 4999`) on the same server process, after a {WARMUP_SECS} s warm-up. \
         lagtrace is started before each traced round (the round begins once it prints \
         `lagtrace: tracing`) and stopped with SIGINT after it. Ratios are traced/untraced \
         within a round: for throughput higher is better, for p99 lower is better. Nothing is pinned. \
         *Target CPU/request* is the server's CPU time (schedstat of its threads) over the wrk run \
         ÷ requests served: on a machine shared with other work, throughput and p99 move with \
         whatever else runs, while CPU per request mostly moves with what tracing adds to the \
         target (kernel time in its syscalls and context switches included). Before each round \
         the bench waits (up to 20 s) for any lagtrace that is not its own to exit, and flags \
         rounds where one was running.\n\n",
        wrk::args(ctx.plan.load_secs),
        ctx.plan.rounds
    );
    let mut headline = Vec::new();
    let asyncio = targets::asyncio_http(&ctx.python, "asyncio_http", &[])?;
    let node = targets::node_http()?;
    for (name, target) in [
        (format!("asyncio (Python {})", ctx.python.version), &asyncio),
        (format!("Node.js {}", ctx.node), &node),
    ] {
        let modes = [
            Mode {
                label: "untraced".into(),
                target,
                tool: Tool::Untraced,
            },
            Mode {
                label: "lagtrace (default: 50 ms, 499 Hz)".into(),
                target,
                tool: Tool::Lagtrace(vec![]),
            },
            Mode {
                label: "lagtrace -F 4999".into(),
                target,
                tool: Tool::Lagtrace(vec!["-F".into(), "4999".into()]),
            },
        ];
        let results = interleave(ctx, &modes, ctx.plan.rounds)
            .with_context(|| format!("overhead rounds on {name}"))?;
        let _ = write!(
            body,
            "### {name} HTTP server\n\n{}\n",
            render(&modes, &results)
        );
        let default = compare(&results, 1, 0);
        let max_f = compare(&results, 2, 0);
        let verdict = match default.rps {
            Some(s) if s.median >= GOAL_RATIO => "**met**",
            Some(_) => "**not met**",
            None => "not measured",
        };
        let line = format!(
            "{name}: throughput ratio at default settings {} — goal ≥ {GOAL_RATIO} {verdict}; \
             at -F 4999 {}; p99 ratio at default {}; target CPU per request at default {}, \
             at -F 4999 {}",
            ratio_cell(default.rps),
            ratio_cell(max_f.rps),
            ratio_cell(default.p99),
            ratio_cell(default.cpu),
            ratio_cell(max_f.cpu)
        );
        let _ = writeln!(body, "Goal line: {line}\n");
        headline.push(line);
    }
    Ok(Section {
        title: "1. Overhead on the target".into(),
        body,
        headline,
    })
}

/// Section 2: the alternatives, through the same harness on asyncio.
pub fn section_alternatives(ctx: &Ctx) -> Result<Section> {
    let py_spy = super::deps::py_spy(&ctx.python)?;
    let normal = targets::asyncio_http(&ctx.python, "asyncio_http", &[])?;
    let debug = targets::asyncio_http(
        &ctx.python,
        "asyncio_http (debug)",
        &[("PYTHONASYNCIODEBUG", "1")],
    )?;
    let monitor = targets::asyncio_http(
        &ctx.python,
        "asyncio_http (monitor)",
        &[("LAG_MONITOR", "1")],
    )?;
    let version = capture_version(&py_spy);
    let modes = [
        Mode {
            label: "untraced".into(),
            target: &normal,
            tool: Tool::Untraced,
        },
        Mode {
            label: "lagtrace (default)".into(),
            target: &normal,
            tool: Tool::Lagtrace(vec![]),
        },
        Mode {
            label: "py-spy record (100 Hz, blocking)".into(),
            target: &normal,
            tool: Tool::PySpy {
                bin: py_spy.clone(),
                nonblocking: false,
            },
        },
        Mode {
            label: "py-spy record --nonblocking".into(),
            target: &normal,
            tool: Tool::PySpy {
                bin: py_spy,
                nonblocking: true,
            },
        },
        Mode {
            label: "asyncio debug mode (PYTHONASYNCIODEBUG=1)".into(),
            target: &debug,
            tool: Tool::Untraced,
        },
        Mode {
            label: "in-process lag monitor (LAG_MONITOR=1)".into(),
            target: &monitor,
            tool: Tool::Untraced,
        },
    ];
    let results = interleave(ctx, &modes, ctx.plan.rounds)?;
    let mut body = format!(
        "Same harness and load as section 1 (`{}`, {} interleaved rounds), asyncio server, \
         Python {}. py-spy ({version}) attaches to the untraced server for its rounds \
         (`py-spy record --format raw`, its default 100 Hz, stopped with SIGINT). \
         Debug mode and the lag monitor (a coroutine sleeping 1 s and logging its oversleep \
         as a JSON line) need the server started differently, so they run as two more server \
         processes, idle while the others are loaded; their ratios compare different \
         processes of the same script.\n\n",
        wrk::args(ctx.plan.load_secs),
        ctx.plan.rounds,
        ctx.python.version
    );
    body.push_str(&render(&modes, &results));
    let mut headline = Vec::new();
    for (i, m) in modes.iter().enumerate().skip(1) {
        let c = compare(&results, i, 0);
        headline.push(format!(
            "{}: throughput ratio {}, CPU/request ratio {}",
            m.label,
            ratio_cell(c.rps),
            ratio_cell(c.cpu)
        ));
    }
    Ok(Section {
        title: "2. Alternatives on the same asyncio server".into(),
        body,
        headline: vec![format!("alternatives (asyncio) — {}", headline.join("; "))],
    })
}

fn capture_version(bin: &std::path::Path) -> String {
    crate::util::capture(Command::new(bin).arg("--version"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "py-spy".into())
}

#[cfg(test)]
mod tests {
    use super::shuffled;

    #[test]
    fn each_round_runs_every_mode_once_in_its_own_order() {
        let orders: Vec<Vec<usize>> = (0..7).map(|r| shuffled(11, r)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..11).collect::<Vec<_>>());
        }
        // The untraced run (mode 0) is not first in every round.
        assert!(orders.iter().any(|o| o[0] != 0), "{orders:?}");
        assert!(orders.windows(2).all(|w| w[0] != w[1]), "{orders:?}");
        assert_eq!(shuffled(11, 3), shuffled(11, 3));
        assert_eq!(shuffled(1, 0), vec![0]);
        assert!(shuffled(0, 0).is_empty());
    }
}
