//! `cargo xtask bench [--quick]`: measures what lagtrace costs — the traced
//! target's throughput and p99 (against py-spy, asyncio debug mode and an
//! in-process lag monitor), the BPF programs' kernel time, lagtrace's own
//! CPU and memory — and what it sees of known stalls next to the usual lag
//! monitor. Prints a markdown report and writes it to `bench/RESULTS.md`.
//! It measures and reports only: no timing is ever asserted.
mod attach;
mod bpfstats;
mod deps;
mod floors;
mod kernel;
mod lagtrace;
mod overhead;
mod proc;
mod procfs;
mod pyframes;
mod report;
mod resolution;
mod selfcost;
mod soak;
mod stats;
mod targets;
mod unwind;
mod v8frames;
mod wrk;

use std::{
    cell::Cell,
    fmt::Write as _,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{self, SetupArgs},
    util::{self, cargo, run},
};

#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// A short run (2 rounds of 2 s; under ~3 minutes) to check the bench
    /// itself; its numbers are noisier.
    #[arg(long)]
    pub quick: bool,
    /// Run only the sections whose key contains this (keys: overhead,
    /// alternatives, kernel, self, resolution, python, attach). The report then goes
    /// to target/bench/RESULTS-partial.md, not bench/RESULTS.md.
    #[arg(long)]
    pub only: Option<String>,
    /// Only the unwinder's costs (issue #11): kernel time per sample at
    /// stack depths 16/64/128, attach time, table sizes; writes
    /// bench/UNWIND.md instead of bench/RESULTS.md.
    #[arg(long)]
    pub unwind: bool,
    /// Run only the soak (section 7): lagtrace attached with every output
    /// to 20 stalls/s, its RSS read over time. Writes bench/SOAK.md.
    #[arg(long)]
    pub soak: bool,
    /// Length of the soak in seconds (default 300; 30 with --quick).
    #[arg(long, value_name = "SECS")]
    pub soak_seconds: Option<u64>,
    /// Length of the soak in minutes (issue #16's day-long bar: 30).
    #[arg(long, value_name = "MIN", conflicts_with = "soak_seconds")]
    pub soak_minutes: Option<u64>,
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Interleaved rounds per comparison.
    pub rounds: usize,
    /// wrk's -d, in seconds.
    pub load_secs: u64,
    /// How long the spin loop spins.
    pub spin_secs: u64,
    /// The idle and storm windows of section 4.
    pub window_secs: u64,
    /// The soak's length (section 6).
    pub soak_secs: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 2,
                load_secs: 2,
                spin_secs: 2,
                window_secs: 3,
                soak_secs: 30,
            }
        } else {
            Self {
                quick,
                rounds: 7,
                load_secs: 5,
                spin_secs: 5,
                window_secs: 5,
                soak_secs: 300,
            }
        }
    }
}

/// What every section needs.
pub struct Ctx {
    pub plan: Plan,
    /// The lagtrace binary the bench runs (a copy of the fresh build).
    pub lagtrace: PathBuf,
    pub python: deps::Python,
    pub node: String,
    /// Scratch output: target/bench/.
    pub out: PathBuf,
    /// What is left of the time rounds may spend waiting for someone
    /// else's lagtrace to exit.
    pub wait_budget: Cell<Duration>,
}

/// One section of the report.
pub struct Section {
    pub title: String,
    pub body: String,
    /// One-line results for the summary at the top.
    pub headline: Vec<String>,
}

type SectionFn = fn(&Ctx) -> Result<Section>;

const SECTIONS: &[(&str, &str, SectionFn)] = &[
    (
        "overhead",
        "1. Overhead on the target",
        overhead::section_overhead,
    ),
    (
        "alternatives",
        "2. Alternatives on the same asyncio server",
        overhead::section_alternatives,
    ),
    ("kernel", "3. Kernel-side cost", kernel::section_kernel),
    (
        "self",
        "4. lagtrace's own cost",
        selfcost::section_self_cost,
    ),
    (
        "resolution",
        "5. Resolution vs an in-process lag monitor",
        resolution::section_resolution,
    ),
    (
        "python",
        "6. Python frames in the kernel",
        pyframes::section_pyframes,
    ),
    (
        "soak",
        "7. Soak: memory over a long attach",
        soak::section_soak,
    ),
    ("attach", "8. Attach modes", attach::section_attach),
    (
        "node",
        "9. Node JS frames from V8",
        v8frames::section_v8frames,
    ),
];

pub fn run_bench(args: &BenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the bench runs lagtrace, which needs root (it loads BPF programs), and it \
             toggles kernel.bpf_stats_enabled.\n\
             Run: sudo -E cargo xtask bench   (or run it as root)\n\
             If sudo cannot find cargo: sudo -E env \"PATH=$PATH\" cargo xtask bench"
        );
    }
    let _stats_off = bpfstats::StatsSwitch::off_for_run()?;
    if args.unwind {
        proc::catch_signals();
        return unwind::run_unwind_bench(args.quick);
    }
    let started = Instant::now();
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    }
    if args.soak {
        command.push_str(" --soak");
    }
    if let Some(m) = args.soak_minutes {
        command.push_str(&format!(" --soak-minutes {m}"));
    } else if let Some(s) = args.soak_seconds {
        command.push_str(&format!(" --soak-seconds {s}"));
    }
    if let Some(only) = &args.only {
        command.push_str(&format!(" --only {only}"));
        if !SECTIONS
            .iter()
            .any(|(key, _, _)| key.contains(only.as_str()))
        {
            bail!("no bench section matches --only {only}");
        }
    }
    setup::run_setup(&SetupArgs::default()).context("setup failed")?;
    deps::debian_packages().context("installing the bench's Debian packages")?;
    run(cargo().args(["build", "--release", "--package", "lagtrace"])).context("build failed")?;

    let out = util::in_repo("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    // Run a private copy: a concurrent `cargo build` may replace the original.
    let built = util::in_repo("target/release/lagtrace");
    let lagtrace = out.join("lagtrace");
    fs::copy(&built, &lagtrace).with_context(|| format!("copying {}", built.display()))?;
    let version = util::capture(std::process::Command::new(&lagtrace).arg("--version"))?;

    let python = deps::python()?;
    let node = deps::node()?;
    let mut plan = Plan::new(args.quick);
    if let Some(s) = args.soak_seconds.or(args.soak_minutes.map(|m| m * 60)) {
        plan.soak_secs = s.max(10);
    }
    let ctx = Ctx {
        plan,
        lagtrace,
        python,
        node,
        out,
        wait_budget: Cell::new(Duration::from_secs(if args.quick { 30 } else { 120 })),
    };
    proc::catch_signals();
    let load_before = report::loadavg();
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for (key, title, f) in SECTIONS {
        let skip_only = args
            .only
            .as_ref()
            .is_some_and(|o| !key.contains(o.as_str()));
        if skip_only || (args.soak && *key != "soak") {
            continue;
        }
        eprintln!("\n==== bench: {title} ====");
        let t0 = Instant::now();
        let result = f(&ctx);
        proc::check_interrupt()?;
        let took = t0.elapsed();
        match result {
            Ok(mut s) => {
                let _ = write!(s.body, "\n*({} s)*\n", took.as_secs());
                sections.push(s);
            }
            Err(e) => {
                eprintln!("bench: section {title} failed: {e:#}");
                failed.push(*title);
                sections.push(Section {
                    title: (*title).to_owned(),
                    body: format!("**This section failed:**\n\n```\n{e:#}\n```\n"),
                    headline: vec![format!("{title}: **failed** (see below)")],
                });
            }
        }
    }

    let tools = [
        (
            "lagtrace",
            format!("{} (`target/release/lagtrace`)", version.trim()),
        ),
        (
            "python",
            format!("{} (`{}`)", ctx.python.version, ctx.python.path.display()),
        ),
        ("node", ctx.node.clone()),
        (
            "wrk",
            util::capture(
                std::process::Command::new("sh").args(["-c", "wrk --version 2>&1 | head -1"]),
            )
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        ),
        (
            "plan",
            format!(
                "{} — {} rounds of {} s per comparison, spin {} s, windows {} s; took {}",
                if ctx.plan.quick { "quick" } else { "full" },
                ctx.plan.rounds,
                ctx.plan.load_secs,
                ctx.plan.spin_secs,
                ctx.plan.window_secs,
                minutes(started.elapsed())
            ),
        ),
    ];
    let mut md = String::from("# lagtrace benchmark results\n\n");
    md.push_str(&report::machine(&command, &tools, &load_before));
    md.push_str(
        "\nNumbers come from one machine, shared with whatever else ran on it (see the load \
         average): compare ratios within a round rather than absolute numbers across runs.\n",
    );
    md.push_str("\n## Headlines\n\n");
    for s in &sections {
        for h in &s.headline {
            let _ = writeln!(md, "- {h}");
        }
    }
    for s in &sections {
        let _ = write!(md, "\n## {}\n\n{}", s.title, s.body);
    }

    println!("\n{md}");
    // The soak alone, or a subset, does not replace the full report.
    let results = if args.soak {
        util::in_repo("bench/SOAK.md")
    } else if args.only.is_some() {
        ctx.out.join("RESULTS-partial.md")
    } else {
        util::in_repo("bench/RESULTS.md")
    };
    fs::write(&results, &md).with_context(|| format!("writing {}", results.display()))?;
    eprintln!(
        "bench: report written to {} ({})",
        results.display(),
        minutes(started.elapsed())
    );
    if !failed.is_empty() {
        bail!("bench sections failed: {}", failed.join(", "));
    }
    Ok(())
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}
