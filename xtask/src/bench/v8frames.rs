//! Section 9: Node's JS frames read from V8's frames in the kernel (issue
//! 13). What reading them adds per sample: the same node target, one long
//! stall, traced once as it is and once with `LAGTRACE_V8=off` (the same
//! build, V8 frames not read), with the kernel's own accounting of the
//! `on_cpu_sample` program. Also the share of the stall's on-CPU samples
//! that name the blocking JS function. Runs alone with
//! `cargo xtask bench --only node`.
use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    Ctx, Section,
    bpfstats::{self, StatsSwitch},
    lagtrace::Lagtrace,
    overhead,
    proc::{self, Stream},
    report::Table,
    targets,
};
use crate::util;

/// The one stall each run is measured over.
const STALL_MS: u32 = 3000;

struct Run {
    /// On-CPU samples of the span, and those naming `blockTheLoop`.
    samples: u64,
    named: u64,
    sample_ns: u64,
    sample_events: u64,
    /// `on_cpu_sample`'s mean run time while the target idled.
    filter_ns: f64,
}

impl Run {
    /// Run time per target sample, the filter-only runs taken out.
    fn net_us(&self) -> f64 {
        let others = self.sample_events.saturating_sub(self.samples) as f64;
        let net = (self.sample_ns as f64 - others * self.filter_ns).max(0.0);
        net / 1e3 / self.samples.max(1) as f64
    }

    fn upper_us(&self) -> f64 {
        self.sample_ns as f64 / 1e3 / self.samples.max(1) as f64
    }
}

fn on_cpu(spans_file: &Path) -> (u64, u64) {
    let (mut all, mut named) = (0, 0);
    for line in fs::read_to_string(spans_file).unwrap_or_default().lines() {
        let Ok(span) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for st in span["stacks"].as_array().into_iter().flatten() {
            if st["kind"] != "on-cpu" {
                continue;
            }
            let n = st["samples"].as_u64().unwrap_or(0);
            all += n;
            let frames = st["frames"].as_array().into_iter().flatten();
            if frames
                .filter_map(|f| f.as_str())
                .any(|f| f.contains("blockTheLoop"))
            {
                named += n;
            }
        }
    }
    (all, named)
}

fn measure(ctx: &Ctx, lagtrace: &Path, tag: &str) -> Result<Run> {
    let script = util::in_repo("lagtrace/tests/targets/node_stalls.js");
    let truth = ctx.out.join(format!("v8-truth-{tag}.jsonl"));
    let spans_file = ctx.out.join(format!("v8-spans-{tag}.jsonl"));
    let _ = fs::remove_file(&spans_file);
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .args(["--stalls-ms", &STALL_MS.to_string()])
        .arg("--truth")
        .arg(&truth);
    let targets::Target {
        proc: mut target,
        pid,
        ..
    } = targets::start("node_stalls", &mut cmd, false)?;
    overhead::settle(ctx)?;
    let args = vec!["--spans".to_owned(), spans_file.display().to_string()];
    let lt = Lagtrace::start(lagtrace, pid, &args)?;
    let ids = bpfstats::prog_ids_of(lt.pid());
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
    let (sample_ns, sample_events) = bpfstats::delta(&a, &b)
        .iter()
        .find(|c| c.name == "on_cpu_sample")
        .map_or((0, 0), |c| (c.run_time_ns, c.events));
    let (samples, named) = on_cpu(&spans_file);
    Ok(Run {
        samples,
        named,
        sample_ns,
        sample_events,
        filter_ns,
    })
}

pub fn section_v8frames(ctx: &Ctx) -> Result<Section> {
    // The same binary with the V8 frames off, through its environment.
    let off = ctx.out.join("lagtrace-v8-off");
    fs::write(
        &off,
        format!(
            "#!/bin/sh\nLAGTRACE_V8=off exec {} \"$@\"\n",
            ctx.lagtrace.display()
        ),
    )?;
    fs::set_permissions(&off, fs::Permissions::from_mode(0o755))?;
    let mut t = Table::new(&[
        "JS frames",
        "target on-CPU samples",
        "naming blockTheLoop",
        "µs per target sample (upper bound)",
        "µs per target sample (net)",
        "filter-only run ns",
    ]);
    let mut runs = Vec::new();
    {
        let _stats = StatsSwitch::enable().context("could not enable BPF stats")?;
        for (label, bin) in [
            ("read from V8", ctx.lagtrace.as_path()),
            ("off (LAGTRACE_V8=off)", off.as_path()),
        ] {
            eprintln!("-- node JS frames: {label}");
            let r = measure(ctx, bin, if runs.is_empty() { "on" } else { "off" })?;
            t.row(vec![
                label.into(),
                r.samples.to_string(),
                format!(
                    "{} ({:.0}%)",
                    r.named,
                    100.0 * r.named as f64 / r.samples.max(1) as f64
                ),
                format!("{:.1}", r.upper_us()),
                format!("{:.1}", r.net_us()),
                format!("{:.0}", r.filter_ns),
            ]);
            runs.push(r);
        }
    }
    let added = runs[0].net_us() - runs[1].net_us();
    let headline = vec![format!(
        "node JS frames from V8: +{added:.1} µs per sample ({:.1} vs {:.1} µs net), {:.0}% of the stall's samples name the JS function",
        runs[0].net_us(),
        runs[1].net_us(),
        100.0 * runs[0].named as f64 / runs[0].samples.max(1) as f64
    )];
    let mut body = format!(
        "node {} running `node_stalls.js` with no flag, one {STALL_MS} ms stall in \
         `blockTheLoop` (V8 compiles it). *µs per target sample* as in section 6: the \
         `on_cpu_sample` program's run time over the stall ÷ the span's on-CPU samples \
         (upper bound), and net of the runs that only filter. The difference between the \
         rows is what reading the JS frames adds.\n\n",
        ctx.node
    );
    body.push_str(&t.render());
    Ok(Section {
        title: "9. Node JS frames from V8".into(),
        body,
        headline,
    })
}
