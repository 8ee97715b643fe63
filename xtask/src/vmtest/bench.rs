//! `cargo xtask vmtest --bench`: the per-attach-mode cost inside a guest
//! (issue #15, "Measure"), where fentry exists (this host has none). The
//! guest runs `xtask/vmtest/bench.sh`: per round, no lagtrace and then each
//! mode attached to the idle asyncio HTTP server, measuring a `getppid` loop
//! in another process (ns per call: what the rest of the host pays) and
//! wrk's throughput against the server. Every figure is a ratio or a
//! difference against no lagtrace *in the same guest run*, since emulated
//! (TCG) absolute figures mean little. It measures and reports only.
use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{VmtestArgs, boot_kernel, kernels::KernelSpec, qemu::Accel, work_dir};
use crate::util::{self, run};

/// The modes measured, most host-friendly first (`auto` is one of them);
/// `-F0` is the mode with no on-CPU sampling (`-F 0`), to tell the hooks'
/// cost from the sampling clock's.
const MODES: &str = "fentry fentry-F0 exit-tp tp-btf raw-tp tracepoints tracepoints-F0";
/// getppid calls per run (5 runs per state, median), and wrk seconds.
const CALLS: u32 = 300_000;
const WRK_SECS: u32 = 5;

/// One `vmtest: bench` line.
#[derive(Debug, PartialEq)]
enum Sample {
    Measured {
        round: u32,
        mode: String,
        getppid_ns: f64,
        rps: f64,
        /// lagtrace's own CPU over the measurement, % of one CPU.
        lagtrace_cpu: f64,
    },
    Refused {
        mode: String,
        why: String,
    },
}

fn parse(line: &str) -> Option<Sample> {
    let rest = line.strip_prefix("vmtest: bench ")?;
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let mode = field("mode=")?;
    if let Some((_, why)) = rest.split_once(" refused: ") {
        return Some(Sample::Refused {
            mode,
            why: why.trim().to_string(),
        });
    }
    Some(Sample::Measured {
        round: field("round=")?.parse().ok()?,
        mode,
        getppid_ns: field("getppid_ns=")?.parse().ok()?,
        rps: field("rps=")?.parse().ok()?,
        lagtrace_cpu: field("lagtrace_cpu_pct=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// round, getppid ns, req/s, lagtrace CPU %.
type Measured = (u32, f64, f64, f64);

/// A mode's lagtrace flags, as the table shows them.
fn flags(mode: &str) -> String {
    match mode.strip_suffix("-F0") {
        Some(m) => format!("--attach {m} -F 0"),
        None => format!("--attach {mode}"),
    }
}

/// The markdown table of one guest run.
fn table(samples: &[Sample]) -> String {
    let mut by_mode: BTreeMap<&str, Vec<Measured>> = BTreeMap::new();
    let mut refused = Vec::new();
    for s in samples {
        match s {
            Sample::Measured {
                round,
                mode,
                getppid_ns,
                rps,
                lagtrace_cpu,
            } => by_mode
                .entry(mode)
                .or_default()
                .push((*round, *getppid_ns, *rps, *lagtrace_cpu)),
            Sample::Refused { mode, why } => refused.push((mode.as_str(), why.as_str())),
        }
    }
    let base = by_mode.get("none").cloned().unwrap_or_default();
    let base_ns = median(base.iter().map(|b| b.1).collect());
    let base_rps = median(base.iter().map(|b| b.2).collect());
    let mut out = String::from(
        "| mode | getppid ns/call, other process | added (per round, median) | asyncio req/s | throughput ratio (per round, median) | lagtrace CPU | rounds |\n|---|---|---|---|---|---|---|\n",
    );
    let _ = writeln!(
        out,
        "| no lagtrace | {base_ns:.0} | — | {base_rps:.0} | 1 | — | {} |",
        base.len()
    );
    for mode in MODES.split_whitespace() {
        if let Some(v) = by_mode.get(mode) {
            let ns = median(v.iter().map(|x| x.1).collect());
            // Each round against the same round's baseline: an emulated
            // guest on a busy host drifts between rounds.
            let paired = |f: &dyn Fn(&Measured, &Measured) -> f64| {
                median(
                    v.iter()
                        .filter_map(|x| base.iter().find(|b| b.0 == x.0).map(|b| f(x, b)))
                        .collect(),
                )
            };
            let ratio = paired(&|x, b| x.2 / b.2);
            let added = paired(&|x, b| x.1 - b.1);
            let ns_ratio = paired(&|x, b| x.1 / b.1);
            let rps = median(v.iter().map(|x| x.2).collect());
            let cpu = median(v.iter().map(|x| x.3).collect());
            let _ = writeln!(
                out,
                "| `{}` | {ns:.0} | {:+.0} ns ({:.2}×) | {rps:.0} | {ratio:.3} | {cpu:.0} % | {} |",
                flags(mode),
                added,
                ns_ratio,
                v.len()
            );
        } else if let Some((_, why)) = refused.iter().find(|(m, _)| *m == mode) {
            let _ = writeln!(out, "| `{}` | refused: {why} | | | | | |", flags(mode));
        }
    }
    out
}

/// The pyenv CPython 3.12 the host tests use, else `python3`.
fn python() -> String {
    let versions = Path::new("/root/.pyenv/versions");
    let mut found: Vec<_> = fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.to_string_lossy().contains("/3.12") && p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .map_or_else(|| "/usr/bin/python3".into(), |p| p.display().to_string())
}

pub fn run_bench(specs: &[KernelSpec], args: &VmtestArgs) -> Result<()> {
    let work = work_dir();
    fs::create_dir_all(&work)?;
    let getppid = work.join("getppid_loop");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&getppid)
        .arg(util::in_repo("bench/targets/getppid_loop.c")))
    .context("could not compile bench/targets/getppid_loop.c")?;
    let params = work.join("bench-params.txt");
    fs::write(
        &params,
        format!(
            "lagtrace {}\ngetppid {}\npython {}\nserver {}\nmodes {MODES}\nrounds {}\ncalls {CALLS}\nsecs {WRK_SECS}\n",
            util::in_repo("target/release/lagtrace").display(),
            getppid.display(),
            python(),
            util::in_repo("bench/targets/asyncio_http.py").display(),
            args.rounds,
        ),
    )?;
    // Each state takes about a minute and a half under TCG (lagtrace's
    // start and settle, five getppid runs, wrk); the kernel's limit grows
    // with the rounds, and stays a hard kill.
    let states = MODES.split_whitespace().count() as u64 + 1;
    let args = &VmtestArgs {
        timeout: args
            .timeout
            .max(300 + u64::from(args.rounds) * states * 150),
        ..args.clone()
    };
    let mut accel: Option<Accel> = None;
    let mut failed = Vec::new();
    let mut report = String::new();
    for spec in specs {
        let booted = boot_kernel(*spec, args, "xtask/vmtest/bench.sh", &params, &mut accel)?;
        let samples: Vec<Sample> = booted
            .console
            .lines
            .iter()
            .filter_map(|l| parse(l))
            .collect();
        let t = table(&samples);
        let head = format!(
            "### {} ({}, {}, {} rounds)\n\n",
            spec.label,
            booted.release,
            booted.accel.name(),
            args.rounds
        );
        println!("\n{head}{t}");
        let _ = writeln!(report, "{head}{t}");
        if !booted.console.done || samples.is_empty() {
            failed.push(spec.label);
        }
    }
    let out = work.join("bench.md");
    fs::write(&out, &report)?;
    println!("vmtest --bench: tables written to {}", out.display());
    if !failed.is_empty() {
        bail!("vmtest --bench: no result from {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_are_parsed() {
        assert_eq!(
            parse(
                "vmtest: bench round=2 mode=fentry getppid_ns=812.5 rps=1500.25 lagtrace_cpu_pct=7"
            ),
            Some(Sample::Measured {
                round: 2,
                mode: "fentry".into(),
                getppid_ns: 812.5,
                rps: 1500.25,
                lagtrace_cpu: 7.0
            })
        );
        assert_eq!(
            parse("vmtest: bench round=1 mode=fentry refused: lagtrace: no fentry"),
            Some(Sample::Refused {
                mode: "fentry".into(),
                why: "lagtrace: no fentry".into()
            })
        );
        assert_eq!(parse("vmtest: result x rc=0"), None);
    }

    #[test]
    fn ratios_pair_rounds() {
        let s = |round, mode: &str, ns, rps| Sample::Measured {
            round,
            mode: mode.into(),
            getppid_ns: ns,
            rps,
            lagtrace_cpu: 5.0,
        };
        let t = table(&[
            s(1, "none", 100.0, 1000.0),
            s(1, "fentry", 100.0, 900.0),
            s(2, "none", 100.0, 2000.0),
            s(2, "fentry", 100.0, 1800.0),
        ]);
        assert!(
            t.contains("| `--attach fentry` | 100 | +0 ns (1.00×) | 1350 | 0.900 | 5 % | 2 |"),
            "{t}"
        );
    }
}
