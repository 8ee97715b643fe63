//! `cargo xtask bench --unwind`: what the kernel unwinder of issue #11
//! costs. Kernel time per on-CPU sample at stack depths 16, 64 and 128 (a C
//! target without frame pointers spinning at the bottom of a recursion),
//! attach time for a Python target that maps libpython and ~30 more
//! libraries, and each unwind table's rows, memory and build time
//! (libpython3.11, libc, and lagtrace itself, a Rust binary over 20 MB).
//! Writes `bench/UNWIND.md`. It measures and reports only.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    bpfstats::{self, StatsSwitch},
    proc::{Proc, Stream},
    report::Table,
};
use crate::util::{self, run};

const DEPTHS: [u32; 3] = [16, 64, 128];

/// A lagtrace run, from start to its `tracing` line; its summary goes to
/// `summary` (`--summary-json`), read with [`Started::summary`] once stopped.
struct Started {
    proc: Proc,
    took: Duration,
    summary: PathBuf,
}

impl Started {
    /// The `--summary-json` object, after `proc.stop()`.
    fn summary(&self) -> Result<serde_json::Value> {
        let text = fs::read_to_string(&self.summary)
            .with_context(|| format!("reading {}", self.summary.display()))?;
        let _ = fs::remove_file(&self.summary);
        serde_json::from_str(&text).context("lagtrace's --summary-json")
    }
}

fn start_lagtrace(bin: &Path, pid: u32, extra: &[&str]) -> Result<Started> {
    let summary = std::env::temp_dir().join(format!("lagtrace-unwind-bench-{pid}.summary.json"));
    let mut cmd = Command::new(bin);
    // The CPU clock: its program (`on_cpu_sample`) runs only on the target's
    // threads, so its run time is the walks' (the tick's sees every hrtimer).
    cmd.args(["--pid", &pid.to_string(), "-F", "499", "--summary-json"])
        .arg(&summary)
        .args(extra);
    let t0 = Instant::now();
    let mut proc = Proc::spawn(
        "lagtrace",
        &mut cmd,
        libc::SIGINT,
        Duration::from_secs(30),
        false,
    )?;
    proc.wait_line("`lagtrace: tracing`", Duration::from_secs(60), |s, l| {
        s == Stream::Stderr && l.starts_with("lagtrace: tracing")
    })?;
    Ok(Started {
        proc,
        took: t0.elapsed(),
        summary,
    })
}

fn start_target(name: &str, cmd: &mut Command, stdin: bool) -> Result<(Proc, u32)> {
    let mut proc = Proc::spawn(name, cmd, libc::SIGTERM, Duration::from_secs(5), stdin)?;
    let line = proc.wait_line("`READY <pid>`", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l.starts_with("READY ")
    })?;
    let pid = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{name} printed `{line}`"))?;
    Ok((proc, pid))
}

/// Kernel ns per on-CPU sample at one depth.
fn depth_cost(lagtrace: &Path, bin: &Path, depth: u32, secs: f64) -> Result<Vec<String>> {
    let mut cmd = Command::new(bin);
    cmd.args([depth.to_string(), secs.to_string()]);
    let (mut target, pid) = start_target("deep_stack", &mut cmd, true)?;
    let spans = std::env::temp_dir().join(format!("lagtrace-unwind-bench-{pid}.jsonl"));
    let mut lt = start_lagtrace(lagtrace, pid, &["--spans", spans.to_str().unwrap_or("")])?;
    let ids = bpfstats::prog_ids_of(lt.proc.pid());
    let a = bpfstats::snapshot(&ids)?;
    target.send("go\n")?;
    target.wait_line("`DONE`", Duration::from_secs_f64(secs + 30.0), |s, l| {
        s == Stream::Stdout && l == "DONE"
    })?;
    let b = bpfstats::snapshot(&ids)?;
    // The span ends at the next epoll_wait; let it reach userspace.
    std::thread::sleep(Duration::from_millis(300));
    lt.proc.stop()?;
    let costs = bpfstats::delta(&a, &b);
    let cost = |name: &str| costs.iter().find(|c| c.name == name).cloned();
    let sample = cost("on_cpu_sample").context("on_cpu_sample not loaded")?;
    let switch = cost("sched_switch");
    // On-CPU samples of the span, not machine-wide events: on_cpu_sample
    // also runs, and returns at once, on the other CPUs. (Off-CPU samples
    // are taken by sched_switch.)
    let records: Vec<serde_json::Value> = fs::read_to_string(&spans)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let samples: u64 = records
        .iter()
        .filter(|v| v.get("record").is_none())
        .flat_map(|v| v["stacks"].as_array().cloned().unwrap_or_default())
        .filter(|st| st["kind"] == "on-cpu")
        .filter_map(|st| st["samples"].as_u64())
        .sum();
    let _ = fs::remove_file(&spans);
    let _ = fs::remove_file(&lt.summary);
    // How the user stack walks ended, from the summary record's health
    // counters (`{"root": 731, "depth": 2}`).
    let ends = records
        .iter()
        .find(|v| v["record"] == "summary")
        .and_then(|v| v["health"]["user_stack_ends"].as_object().cloned())
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    drop(target);
    Ok(vec![
        depth.to_string(),
        samples.to_string(),
        format!(
            "{:.2}",
            sample.run_time_ns as f64 / samples.max(1) as f64 / 1e3
        ),
        format!("{:.2}", sample.ns_per_event().unwrap_or(0.0) / 1e3),
        switch
            .and_then(|c| c.ns_per_event())
            .map_or("-".into(), |n| format!("{:.0}", n)),
        ends,
    ])
}

/// Extension modules whose imports map ~30 shared libraries.
const IMPORTS: &str = "import asyncio, json, ssl, sqlite3, decimal, ctypes, hashlib, zlib, bz2, \
    lzma, socket, select, array, math, cmath, datetime, csv, pickle, struct, unicodedata, uuid, \
    xml.etree.ElementTree, readline, curses, mmap, binascii, zoneinfo, queue, heapq, bisect, \
    random, statistics, fcntl, grp, termios, resource";

fn python311() -> Option<PathBuf> {
    let root = format!("{}/.pyenv/versions", std::env::var("HOME").ok()?);
    let dir = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("3.11."))?;
    let py = dir.path().join("bin/python3.11");
    py.exists().then_some(py)
}

pub fn run_unwind_bench(quick: bool) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the unwind bench loads BPF programs: run it as root (sudo -E cargo xtask bench --unwind)"
        );
    }
    run(crate::util::cargo().args(["build", "--release", "--package", "lagtrace"]))
        .context("build failed")?;
    let out = util::in_repo("target/bench");
    fs::create_dir_all(&out)?;
    let lagtrace = out.join("lagtrace-unwind");
    fs::copy(util::in_repo("target/release/lagtrace"), &lagtrace)?;
    let bin = out.join("deep_stack");
    run(Command::new("gcc")
        .args([
            "-O2",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
        .arg(&bin)
        .arg(util::in_repo("bench/targets/deep_stack.c")))
    .context("compiling deep_stack.c")?;
    let secs = if quick { 1.5 } else { 4.0 };
    let mut md = String::from("# lagtrace unwinding benchmark (issue #11)\n\n");
    let _ = writeln!(
        md,
        "`sudo -E cargo xtask bench --unwind{}` on {} ({} CPUs), load average before: {}\n",
        if quick { " --quick" } else { "" },
        util::capture(Command::new("uname").arg("-r"))?.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // 1. Kernel cost per sample.
    {
        let _stats = StatsSwitch::enable()?;
        let mut t = Table::new(&[
            "stack depth",
            "on-CPU samples",
            "µs per sample (on_cpu_sample run time / samples)",
            "µs per event (machine-wide, incl. other CPUs' early exits)",
            "sched_switch ns/event",
            "walks ended",
        ]);
        for depth in DEPTHS {
            eprintln!("-- unwind bench: depth {depth}");
            t.row(depth_cost(&lagtrace, &bin, depth, secs)?);
        }
        md.push_str("## Kernel time per on-CPU sample\n\n");
        md.push_str(
            "`deep_stack.c` (gcc -O2 -fomit-frame-pointer) spins at the bottom of a recursion \
             of the given depth inside one loop iteration, sampled at 499 Hz; `kernel.bpf_stats_enabled` \
             gives `on_cpu_sample`'s run time, divided by the span's samples (the kernel's count). \
             Each sample walks the native stack with .eh_frame rows (plus main and libc's start \
             frames) and the kernel stack. Before unwinding (two `bpf_get_stackid` walks) it \
             was 4.1 µs.\n\n",
        );
        md.push_str(&t.render());
    }

    // 2. Attach time and tables for a Python target with many libraries.
    md.push_str("\n## Attach time and table sizes\n\n");
    let mut sizes = Table::new(&["file", "rows", "map memory", "build time", "load time"]);
    if let Some(py) = python311() {
        let script = format!(
            "{IMPORTS}\nimport os, sys\nprint('READY', os.getpid(), flush=True)\n\
             async def main():\n    while True:\n        await asyncio.sleep(0.005)\n\
             asyncio.run(main())\n"
        );
        let (target, pid) =
            start_target("python3.11", Command::new(&py).args(["-c", &script]), false)?;
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mut files: Vec<&str> = maps
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/'))
            .collect();
        files.sort_unstable();
        files.dedup();
        let mut lt = start_lagtrace(&lagtrace, pid, &[])?;
        std::thread::sleep(Duration::from_millis(200));
        lt.proc.stop()?;
        let tables = lt.summary()?["health"]["unwind_tables"].clone();
        let _ = writeln!(
            md,
            "CPython 3.11 (pyenv) after `{}`: {} executable files mapped. lagtrace started \
             and attached in **{:.0} ms** (from exec to its `tracing` line: BPF load and \
             verification, unwind tables, symbol warm-up). Tables: {}\n",
            IMPORTS
                .replace(", ", ",")
                .chars()
                .take(60)
                .collect::<String>()
                + "…",
            files.len(),
            lt.took.as_secs_f64() * 1e3,
            tables_total(&tables)
        );
        for f in tables["files"].as_array().into_iter().flatten() {
            let path = f["path"].as_str().unwrap_or("");
            if ["libpython3.11", "libc.so.6"]
                .iter()
                .any(|w| path.contains(w))
            {
                sizes.row(size_row(f));
            }
        }
        drop(target);
    } else {
        md.push_str("SKIP: no pyenv CPython 3.11 for the attach-time measurement.\n\n");
    }
    // lagtrace itself as the big Rust binary: a second, idle lagtrace.
    let sleeper = Command::new("sleep").arg("60").spawn()?;
    let (big, big_pid) = {
        let mut cmd = Command::new(&lagtrace);
        cmd.args(["--pid", &sleeper.id().to_string(), "--duration", "50s"]);
        let mut p = Proc::spawn(
            "lagtrace (target)",
            &mut cmd,
            libc::SIGINT,
            Duration::from_secs(10),
            false,
        )?;
        p.wait_line("`lagtrace: tracing`", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.starts_with("lagtrace: tracing")
        })?;
        let pid = p.pid();
        (p, pid)
    };
    let size = fs::metadata(&lagtrace).map(|m| m.len()).unwrap_or(0);
    let mut lt = start_lagtrace(&lagtrace, big_pid, &[])?;
    lt.proc.stop()?;
    let tables = lt.summary()?["health"]["unwind_tables"].clone();
    for f in tables["files"].as_array().into_iter().flatten() {
        if f["path"]
            .as_str()
            .is_some_and(|p| p.contains("lagtrace-unwind"))
        {
            let mut row = size_row(f);
            row[0] = format!("lagtrace (Rust, {:.0} MB)", size as f64 / 1e6);
            sizes.row(row);
        }
    }
    drop(big);
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    md.push_str(&sizes.render());
    md.push_str(
        "\nRows are 8 bytes in one shared BPF array (`UNWIND_ROWS`, 2M rows, 16 MiB, allocated \
         at load); a file's rows are built and loaded once and shared by every process that \
         maps it. Build = parse .eh_frame with gimli and compact; load = BPF_MAP_UPDATE_BATCH.\n",
    );
    let _ = writeln!(
        md,
        "\nPer-thread sample memory in the kernel: `size_of::<ThreadSamples>()` = {} bytes \
         ({} slots + the pending off-CPU sample, {} bytes each), allocated per loop thread.",
        THREAD_SAMPLES_BYTES, SAMPLE_SLOTS, SAMPLE_BYTES
    );
    println!("\n{md}");
    let path = util::in_repo("bench/UNWIND.md");
    fs::write(&path, &md)?;
    eprintln!("bench: report written to {}", path.display());
    Ok(())
}

/// `StackSample`: 32 bytes of fields, 128 user and 32 kernel addresses, 64
/// Python frames of 16 bytes (see lagtrace-common; xtask does not link it).
const SAMPLE_BYTES: usize = 32 + 8 * 128 + 8 * 32 + 16 * 64;
const SAMPLE_SLOTS: usize = 32;
const THREAD_SAMPLES_BYTES: usize = SAMPLE_BYTES * (SAMPLE_SLOTS + 1);

/// A table row from one file of the summary's `health.unwind_tables.files`.
fn size_row(f: &serde_json::Value) -> Vec<String> {
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    let path = f["path"].as_str().unwrap_or("?");
    vec![
        path.rsplit('/').next().unwrap_or(path).to_owned(),
        n("rows").to_string(),
        format!("{} KiB", n("bytes") / 1024),
        format!("{:.1} ms", n("build_ns") as f64 / 1e6),
        format!("{:.1} ms", n("load_ns") as f64 / 1e6),
    ]
}

/// The totals of the summary's `health.unwind_tables`.
fn tables_total(t: &serde_json::Value) -> String {
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    format!(
        "{} files, {} rows ({:.1} MiB of kernel maps), built in {:.1} ms, loaded in {:.1} ms",
        n("files_loaded"),
        n("rows"),
        n("bytes") as f64 / (1u64 << 20) as f64,
        n("build_ns") as f64 / 1e6,
        n("load_ns") as f64 / 1e6
    )
}
