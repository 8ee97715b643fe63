//! Issue 13 part 3: Node's JS functions named without any flag, from V8's
//! own frames (`symbolize/v8/`, `lagtrace-ebpf/src/v8.rs`). Real node 20,
//! real BPF: the sync hot path of an express handler is named in at least
//! 80% of the span's on-CPU samples, JIT-compiled or interpreted only
//! (`--max-opt=0`), and no frame names a function of the app that was not
//! on the stack (a stale or misread pointer must give `[unknown js]`).
mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use common::*;

/// node and its V8 metadata, or a printed skip reason.
fn node_with_v8dbg_or_skip(test: &str) -> Option<PathBuf> {
    if !root_or_skip(test) || !walker_or_skip(test) {
        return None;
    }
    let node = tool_or_skip(test, &["node"])?;
    match lagtrace::symbolize::v8::metadata::from_file(&node) {
        Ok(_) => Some(node),
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

fn express_modules_or_skip(test: &str) -> Option<PathBuf> {
    let modules = targets_dir().join("../../../target/node-frameworks/node_modules");
    if modules.join("express/package.json").exists() {
        Some(modules)
    } else {
        eprintln!("SKIP {test}: no express in target/node-frameworks (run `cargo xtask setup`)");
        None
    }
}

/// The functions of `express_app.js` that are on the loop's stack while
/// `buildReport` blocks it: buildReport and the route handler (an arrow
/// function, so anonymous), and `nowNs`, the clock the handler reads at the
/// stall's start and end, only when called by the handler. Every other
/// function the file defines (the client loop, the signal handlers) runs at
/// other times.
const ON_STACK: [&str; 2] = ["buildReport", "(anonymous)"];
/// The clock, and the handler frame it must sit under.
const CLOCK: (&str, &str) = ("nowNs", "(anonymous) (targets/express_app.js:35)");

/// Run express_app.js under `node_flags` with three stalls; returns, per
/// stall, (samples naming buildReport, on-CPU samples) and checks every
/// V8 frame of the app's file against [`ON_STACK`].
/// Per stall: samples naming buildReport, all on-CPU samples, and the
/// stall's share of its span (the iteration also holds express's own work).
fn express_share(test: &str, node_flags: &[&str]) -> Option<Vec<(u64, u64, f64)>> {
    let node = node_with_v8dbg_or_skip(test)?;
    let modules = express_modules_or_skip(test)?;
    let script = targets_dir().join("express_app.js");
    let mut cmd = Command::new(&node);
    cmd.env("LAGTRACE_NODE_MODULES", &modules);
    let mut args = node_flags.to_vec();
    args.extend([script.to_str().unwrap(), "--count", "3"]);
    let mut target = Target::start_in(cmd, &args);
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 3);
    let mut shares = Vec::new();
    let mut app_functions: BTreeSet<String> = BTreeSet::new();
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (mut named, mut all) = (0u64, 0u64);
        for st in span["stacks"].as_array().unwrap() {
            let frames: Vec<&str> = st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            let kinds: Vec<&str> = st["kinds"]
                .as_array()
                .map(|k| k.iter().map(|k| k.as_str().unwrap_or("")).collect())
                .unwrap_or_default();
            for (i, f) in frames.iter().enumerate() {
                if kinds.get(i) == Some(&"js") && f.contains("(targets/express_app.js") {
                    let name = f.split(" (").next().unwrap_or(f);
                    app_functions.insert(name.to_string());
                    let clock_under_handler = name == CLOCK.0 && i > 0 && frames[i - 1] == CLOCK.1;
                    assert!(
                        ON_STACK.contains(&name) || clock_under_handler,
                        "{test}: frame {f:?} names a function that is not on the stack: {frames:?}"
                    );
                }
            }
            if st["kind"] != "on-cpu" {
                continue;
            }
            let n = st["samples"].as_u64().unwrap();
            all += n;
            if frames.iter().any(|f| f.contains("buildReport")) {
                named += n;
            } else {
                let tail = &frames[frames.len().saturating_sub(6)..];
                eprintln!("EXPRESS {node_flags:?}: {n} samples without buildReport: {tail:?}");
            }
        }
        eprintln!(
            "EXPRESS {node_flags:?}: {named}/{all} samples name buildReport ({:.0}%), blame {}",
            100.0 * named as f64 / all.max(1) as f64,
            span["blame"]["text"]
        );
        assert!(
            span["blame"]["function"]
                .as_str()
                .unwrap_or("")
                .contains("buildReport"),
            "{}",
            span["blame"]
        );
        let stall_share = t.duration_ns() as f64 / span["duration_ns"].as_u64().unwrap() as f64;
        shares.push((named, all, stall_share));
    }
    eprintln!("EXPRESS {node_flags:?}: functions of the app named: {app_functions:?}");
    assert!(app_functions.contains("buildReport"), "{app_functions:?}");
    Some(shares)
}

/// At least 80 % of the stall's share of its span's samples name
/// buildReport (see `culprit::express_hot_path_is_named`).
fn assert_share(shares: &[(u64, u64, f64)]) {
    for &(named, all, stall_share) in shares {
        let share = named as f64 / all.max(1) as f64;
        assert!(
            share >= 0.8 * stall_share,
            "{named}/{all} samples name buildReport, the stall is {stall_share:.2} of the span"
        );
    }
}

/// No flag at all: V8 compiles the hot loop (Sparkplug, Maglev, Turbofan)
/// and the JS frames come from its frame slots alone.
#[test]
fn express_hot_path_is_named_without_flags() {
    let test = "express_hot_path_is_named_without_flags";
    if let Some(shares) = express_share(test, &[]) {
        assert_share(&shares);
    }
}

/// V8 kept to its interpreter: bytecode handlers run without a frame of
/// their own, on the interpreted function's frame, which the leaf's frame
/// pointer names.
#[test]
fn express_hot_path_is_named_in_the_interpreter_without_flags() {
    let test = "express_hot_path_is_named_in_the_interpreter_without_flags";
    if let Some(shares) = express_share(test, &["--max-opt=0"]) {
        assert_share(&shares);
    }
}

/// node_stalls.js with every GC a compacting one (`--stress-compaction`:
/// functions move while lagtrace reads them). Every V8 frame of the script
/// names a function that runs in a stall's iteration (never `parseArgs` or
/// `main`, which ran at start-up only), and the JS frame just outside
/// `blockTheLoop` is always its caller, `injectStalls`.
#[test]
fn moved_functions_never_name_another_function() {
    let test = "moved_functions_never_name_another_function";
    let Some(node) = node_with_v8dbg_or_skip(test) else {
        return;
    };
    let script = targets_dir().join("node_stalls.js");
    let mut target = Target::start(
        &node,
        &[
            "--stress-compaction",
            script.to_str().unwrap(),
            "--stalls-ms",
            "80,150,250",
        ],
    );
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_stalls_witnessed(&fin, &stalls, 50);
    let in_stall = [
        "blockTheLoop",
        "injectStalls",
        "startAfterAWait",
        "wallNs",
        "sleep",
        "writeTruth",
        "(anonymous)",
    ];
    let (mut named, mut unknown, mut callers) = (0u64, 0u64, 0u64);
    for span in &fin.spans {
        let Some(stacks) = span["stacks"].as_array() else {
            continue;
        };
        for st in stacks {
            let n = st["samples"].as_u64().unwrap_or(0);
            let frames: Vec<&str> = st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            let mut outer_js: Option<&str> = None;
            for f in &frames {
                if *f == "[unknown js]" {
                    unknown += n;
                }
                if !f.contains("(targets/node_stalls.js") {
                    continue;
                }
                named += n;
                let name = f.split(" (").next().unwrap_or(f);
                assert!(
                    in_stall.contains(&name),
                    "{f:?} is not on the stack: {frames:?}"
                );
                if name == "blockTheLoop" {
                    assert_eq!(outer_js, Some("injectStalls"), "{frames:?}");
                    callers += n;
                }
                outer_js = Some(name);
            }
        }
    }
    eprintln!(
        "MOVED: {named} frame samples name the script's functions ({callers} blockTheLoop under injectStalls), {unknown} [unknown js]"
    );
    assert!(callers > 0, "no sample named blockTheLoop");
}
