//! Issue 13's bar: every span names the user's own code that caused it (the
//! JSON `blame`, which the live line and the cause lead with), not the
//! library or interpreter frame it was in; and `--children` on a pre-fork
//! master that already runs its workers traces them.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    pyenv_python_or_skip(module_path!(), "3.12")
}

fn blame<'a>(span: &'a Value, key: &str) -> &'a str {
    span["blame"][key].as_str().unwrap_or("")
}

/// A handler decoding a multi-MB JSON body (CPU in the stdlib's json) and an
/// `async def` handler calling urllib synchronously (blocked in recv under
/// http.client and socket): the culprit is the user's function both times.
#[test]
fn spans_name_the_handler_not_the_library() {
    let test = "spans_name_the_handler_not_the_library";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("culprit_app.py");
    // 8 MB: json.loads of the default 4 MB took 43 ms on a faster host,
    // under the 50 ms threshold, and the stall was no span.
    let mut target = Target::start(
        &py,
        &[script.to_str().unwrap(), "--count", "3", "--mb", "8"],
    );
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 6, "{stalls:?}");
    // The precondition: every stall is well over the threshold.
    for t in &stalls {
        let ms = (t.end_ns - t.start_ns) as f64 / 1e6;
        assert!(ms >= 60.0, "{}: the stall took only {ms:.1} ms", t.label);
    }
    let mut named = 0;
    for t in &stalls {
        let found = matching_span(&fin.spans, t);
        assert_eq!(found.len(), 1, "{}: {found:?}", t.label);
        let span = found[0];
        let cause = span["cause"].as_str().unwrap_or("");
        eprintln!(
            "CULPRIT {}: blame {} | cause {cause}",
            t.label, span["blame"]["text"]
        );
        if std::env::var_os("CULPRIT_DEBUG").is_some() {
            eprintln!("{span:#}");
        }
        match t.label.as_str() {
            "catalog" => {
                assert_eq!(blame(span, "function"), "load_catalog", "{span}");
                assert_eq!(blame(span, "kind"), "on-cpu", "{span}");
                let leaf = blame(span, "leaf");
                assert!(leaf.is_empty() || leaf.starts_with("json."), "{span}");
                // Under load the span may be partly runqueue (a mixed cause
                // with shares) or mostly runqueue, which still names the
                // code that waited for a CPU; either way the handler leads.
                assert!(
                    cause.contains("cpu in load_catalog (culprit_app.py:")
                        || cause.starts_with("runqueue in load_catalog (culprit_app.py:"),
                    "{cause}"
                );
            }
            "stock" => {
                assert_eq!(blame(span, "function"), "fetch_stock", "{span}");
                assert_eq!(blame(span, "kind"), "off-cpu", "{span}");
                assert_eq!(blame(span, "via"), "urllib", "{span}");
                // Mixed causes carry shares after the blocked part.
                assert!(
                    cause.starts_with("blocked in ")
                        && cause.contains("← fetch_stock (culprit_app.py:")
                        && cause.contains(" via urllib"),
                    "{cause}"
                );
            }
            other => panic!("unknown stall {other}"),
        }
        named += 1;
    }
    assert_eq!(named, 6);
    // Every stack in the JSON carries its time, on-CPU ones included.
    for s in &fin.spans {
        for st in s["stacks"].as_array().unwrap() {
            assert!(st["weight_ns"].as_u64().unwrap_or(0) > 0, "{st}");
        }
    }
}

/// The live children of `pid`, from `/proc/PID/task/PID/children`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A pre-fork server whose workers run before lagtrace attaches:
/// `--pid MASTER --children` traces them (their stall comes after attach).
#[test]
fn existing_prefork_workers_are_traced_with_children() {
    let test = "existing_prefork_workers_are_traced_with_children";
    if !root_or_skip(test) {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("prefork_server.py");
    let mut target = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--workers",
            "2",
            "--stall-ms",
            "120",
            // Long enough for lagtrace to attach after the fork.
            "--stall-delay-ms",
            "6000",
        ],
    );
    // Fork the workers before lagtrace exists.
    signal(target.pid, libc::SIGUSR1);
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(10));
    let workers: BTreeSet<u32> = loop {
        let c = children_of(target.pid);
        if c.len() == 2 {
            break c.into_iter().collect();
        }
        assert!(std::time::Instant::now() < deadline, "workers never forked");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms", "--children"]);
    // A second SIGUSR1 forks nothing; this waits for DONE.
    target.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 2);
    let errors = assert_stalls_witnessed(&fin, &stalls, 50);
    assert_eq!(errors.len(), 2, "both workers' stalls are reported");
    for t in &stalls {
        assert!(workers.contains(&t.tid), "{t:?} from a worker {workers:?}");
        let span = matching_span(&fin.spans, t)[0];
        assert_eq!(span["pid"].as_u64(), Some(u64::from(t.tid)));
        assert_eq!(blame(span, "function"), "burn_cpu", "{span}");
    }
    report("pre-fork workers running before attach", &errors);
}

/// Node with `--perf-basic-prof`: the JS function that spins is the blame
/// of each span, and at least 80% of its on-CPU samples name it.
#[test]
fn node_with_a_perf_map_blames_the_js_function() {
    let test = "node_with_a_perf_map_blames_the_js_function";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(node) = tool_or_skip(test, &["node"]) else {
        return;
    };
    let script = targets_dir().join("node_stalls.js");
    let mut target = Target::start(
        &node,
        &[
            "--perf-basic-prof",
            script.to_str().unwrap(),
            "--stalls-ms",
            "80,150,250",
        ],
    );
    let pid = target.pid;
    let fin = trace_scenario(&mut target, &[]);
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let stalls = target.stalls();
    assert_stalls_witnessed(&fin, &stalls, 50);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (mut named, mut all) = (0u64, 0u64);
        for st in span["stacks"].as_array().unwrap() {
            if st["kind"] != "on-cpu" {
                continue;
            }
            let n = st["samples"].as_u64().unwrap();
            all += n;
            if st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().contains("blockTheLoop"))
            {
                named += n;
            }
        }
        let share = named as f64 / all.max(1) as f64;
        eprintln!(
            "NODE {}: {named}/{all} samples name blockTheLoop ({:.0}%), blame {}",
            t.label,
            share * 100.0,
            span["blame"]["text"]
        );
        assert!(share >= 0.8, "{}: {share:.2}: {span}", t.label);
        assert!(
            blame(span, "function").contains("blockTheLoop"),
            "{}: {}",
            t.label,
            span["blame"]
        );
    }
}

/// Node without flags: the start of the trace says that JS frames are read
/// from V8's frames, or, when the binary has no V8 metadata to read them
/// with, how to get JS names.
#[test]
fn node_without_a_perf_map_is_told_how_to_name_js() {
    let test = "node_without_a_perf_map_is_told_how_to_name_js";
    if !root_or_skip(test) {
        return;
    }
    let Some(node) = tool_or_skip(test, &["node"]) else {
        return;
    };
    let v8 = lagtrace::symbolize::v8::metadata::from_file(&node).is_ok();
    let script = targets_dir().join("node_stalls.js");
    let target = Target::start(&node, &[script.to_str().unwrap(), "--stalls-ms", "60"]);
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    let fin = lt.stop();
    let said = if v8 {
        "JS frames read from V8"
    } else {
        "--perf-basic-prof"
    };
    let hints: Vec<&String> = fin.stderr.iter().filter(|l| l.contains(said)).collect();
    assert_eq!(hints.len(), 1, "said once: {:?}", fin.stderr);
    assert!(
        hints[0].contains(&format!("pid {pid} is node")),
        "{hints:?}"
    );
    if v8 {
        assert!(
            !fin.stderr.iter().any(|l| l.contains("--perf-basic-prof")),
            "no hint when V8's frames are read: {:?}",
            fin.stderr
        );
    }
}

/// A perf map left under the target's pid by an earlier process (planted
/// here, dated before the target started, covering every address) must not
/// name the target's JIT code.
#[test]
fn a_stale_perf_map_under_a_reused_pid_names_nothing() {
    let test = "a_stale_perf_map_under_a_reused_pid_names_nothing";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(node) = tool_or_skip(test, &["node"]) else {
        return;
    };
    let script = targets_dir().join("node_stalls.js");
    let mut target = Target::start(&node, &[script.to_str().unwrap(), "--stalls-ms", "80,150"]);
    let map = format!("/tmp/perf-{}.map", target.pid);
    std::fs::write(&map, "0 7fffffffffff STALE_PERF_MAP_FN\n").unwrap();
    let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let planted = std::fs::File::open(&map).and_then(|f| f.set_modified(long_ago));
    let fin = trace_scenario(&mut target, &[]);
    let _ = std::fs::remove_file(&map);
    planted.unwrap();
    let stalls = target.stalls();
    assert_stalls_witnessed(&fin, &stalls, 50);
    let (mut stale, mut jit) = (0u64, 0u64);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        for st in span["stacks"].as_array().unwrap() {
            for f in st["frames"].as_array().unwrap() {
                let f = f.as_str().unwrap();
                stale += u64::from(f.contains("STALE_PERF_MAP_FN"));
                // JIT code the perf map did not name: unnamed, or named from
                // V8's frames (which take a JIT frame's place only when the
                // perf map has no name for it).
                jit += u64::from(
                    f.starts_with("[unknown] 0x") || f.starts_with("blockTheLoop (targets/"),
                );
            }
        }
    }
    eprintln!("STALE MAP: {stale} stale frames, {jit} unnamed JIT frames");
    assert_eq!(stale, 0, "a stale perf map named frames: {:?}", fin.spans);
    assert!(jit > 0, "no JIT frame was looked up, so nothing was tested");
}

/// Two `--pid`: every `time.sleep` span of both targets keeps its Python
/// frames (the bug seen with py-spy: 2 of 3 lost them; single pid: all).
#[test]
fn two_pids_keep_their_python_frames() {
    let test = "two_pids_keep_their_python_frames";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    let args = [
        script.to_str().unwrap(),
        "--mode",
        "sleep",
        "--stalls-ms",
        "80,120,160",
    ];
    let mut a = Target::start(&py, &args);
    let mut b = Target::start(&py, &args);
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let lt = Lagtrace::attach(&["--pid", &pa, "--pid", &pb, "--threshold", "50ms"]);
    a.run_scenario(patience(Duration::from_secs(60)));
    b.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let mut named = 0;
    for target in [&a, &b] {
        let stalls = target.stalls();
        assert_eq!(stalls.len(), 3);
        for t in &stalls {
            let span = matching_span(&fin.spans, t);
            assert_eq!(span.len(), 1, "{t:?}");
            assert_eq!(
                blame(span[0], "function"),
                "legacy_sync_call",
                "pid {}: {}",
                target.pid,
                span[0]
            );
            named += 1;
        }
    }
    eprintln!("TWO PIDS: {named} of 6 sleep spans named legacy_sync_call");
}

fn testapp(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the apps sit next to it.
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

/// A tokio binary (frame pointers) whose task sleeps in a named function:
/// the cause names that function, not libc's `clock_nanosleep`.
#[test]
fn tokio_sleep_blames_the_named_function_not_libc() {
    let test = "tokio_sleep_blames_the_named_function_not_libc";
    if !root_or_skip(test) {
        return;
    }
    if std::env::var_os("LAGTRACE_TEST_PREBUILT").is_none() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "lagtrace-testapps"])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building lagtrace-testapps failed");
    }
    let app = testapp("tokio_stalls");
    let args = [
        "--flavor",
        "current",
        "--block",
        "sleep",
        "--stalls-ms",
        "80,150",
    ];
    let mut target = Target::start(&app, &args);
    let pid = target.pid.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    // A worker parked since before attach is seen from its next wait on.
    std::thread::sleep(Duration::from_millis(100));
    target.run_scenario(patience(Duration::from_secs(60)));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let stalls = target.stalls();
    assert_eq!(assert_stalls_witnessed(&fin, &stalls, 50).len(), 2);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let cause = span["cause"].as_str().unwrap_or("");
        eprintln!("TOKIO {}: {cause}", t.label);
        assert!(
            blame(span, "function").ends_with("blocking_sleep"),
            "{}",
            span["blame"]
        );
        assert!(
            cause.starts_with("blocked in clock_nanosleep ← tokio_stalls::blocking_sleep"),
            "{cause}"
        );
        assert_eq!(blame(span, "via"), "std", "{}", span["blame"]);
    }
}

/// The Python of `target/venv-frameworks` (aiohttp, requests), made by
/// `cargo xtask setup`.
fn frameworks_python(test: &str) -> Option<PathBuf> {
    let py = targets_dir().join("../../../target/venv-frameworks/bin/python3");
    let ok = Command::new(&py)
        .args(["-c", "import aiohttp, requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIP {test}: no target/venv-frameworks with aiohttp and requests (run `cargo xtask setup`)"
        );
        return None;
    }
    Some(py)
}

/// aiohttp: `await resp.json()` on a multi-MB body in a handler, and a
/// sync `requests.get` in an `async def` handler. The blame (what the live
/// line and the summary lead with) is the user's function, never aiohttp's
/// `RequestHandler._handle_request`, json or socket internals.
#[test]
fn aiohttp_and_requests_spans_name_the_handler() {
    let test = "aiohttp_and_requests_spans_name_the_handler";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(py) = frameworks_python(test) else {
        return;
    };
    let script = targets_dir().join("aiohttp_app.py");
    let mut target = Target::start(&py, &[script.to_str().unwrap(), "--count", "3"]);
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 6, "{stalls:?}");
    for t in &stalls {
        let found = matching_span(&fin.spans, t);
        assert_eq!(found.len(), 1, "{}: {found:?}", t.label);
        let span = found[0];
        let cause = span["cause"].as_str().unwrap_or("");
        eprintln!(
            "AIOHTTP {}: blame {} | cause {cause} | task {}",
            t.label, span["blame"]["text"], span["task"]
        );
        match t.label.as_str() {
            "catalog" => {
                assert_eq!(blame(span, "function"), "load_catalog", "{}", span["blame"]);
                assert_eq!(blame(span, "via"), "aiohttp", "{}", span["blame"]);
                assert!(cause.contains("load_catalog (aiohttp_app.py:"), "{cause}");
            }
            "stock" => {
                assert_eq!(blame(span, "function"), "fetch_stock", "{}", span["blame"]);
                assert_eq!(blame(span, "via"), "requests", "{}", span["blame"]);
                assert!(
                    cause.contains("← fetch_stock (aiohttp_app.py:")
                        && cause.contains(" via requests"),
                    "{cause}"
                );
            }
            other => panic!("unknown stall {other}"),
        }
        // The task is the handler, not aiohttp's per-request wrapper.
        let task = span["task"].as_str().unwrap_or("");
        assert!(
            !task.contains("_handle_request"),
            "{}: task {task}; stacks {:#}",
            t.label,
            span["stacks"]
        );
    }
}

/// express with `--perf-basic-prof`: the handler's sync hot path is the
/// blame, and at least 80% of each span's on-CPU samples name it.
#[test]
fn express_hot_path_is_named_with_a_perf_map() {
    express_hot_path_is_named(
        "express_hot_path_is_named_with_a_perf_map",
        &["--perf-basic-prof"],
    );
}

/// The same with `--interpreted-frames-native-stack`: an interpreted
/// function runs through its own copy of `InterpreterEntryTrampoline`,
/// which the perf map names (`JS:~name`), and V8 reuses code space, so the
/// newest entry at an address must win (an older one named a module
/// loader). The hot path is soon compiled (`JS:*name`) here.
#[test]
fn express_hot_path_is_named_with_interpreted_frames_native_stack() {
    express_hot_path_is_named(
        "express_hot_path_is_named_with_interpreted_frames_native_stack",
        &["--perf-basic-prof", "--interpreted-frames-native-stack"],
    );
}

/// The same with V8 kept to its interpreter (`--max-opt=0`). Most of V8's
/// bytecode handlers run without a frame of their own (no `push rbp`) and
/// have no `.eh_frame` rows, so the frame-pointer fallback steps from the
/// handler straight to the caller of the trampoline copy: the perf map
/// alone named the function in about a third of the samples (19/53). The
/// JS frames read from V8's frames (`symbolize/v8/`) name the function the
/// handler runs for, from the leaf's frame pointer.
#[test]
fn express_hot_path_is_named_with_the_interpreter_only() {
    express_hot_path_is_named(
        "express_hot_path_is_named_with_the_interpreter_only",
        &[
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            "--max-opt=0",
        ],
    );
}

fn express_hot_path_is_named(test: &str, node_flags: &[&str]) {
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let Some(node) = tool_or_skip(test, &["node"]) else {
        return;
    };
    let modules = targets_dir().join("../../../target/node-frameworks/node_modules");
    if !modules.join("express/package.json").exists() {
        eprintln!("SKIP {test}: no express in target/node-frameworks (run `cargo xtask setup`)");
        return;
    }
    let script = targets_dir().join("express_app.js");
    let mut cmd = Command::new(&node);
    cmd.env("LAGTRACE_NODE_MODULES", &modules);
    let mut args = node_flags.to_vec();
    args.extend([script.to_str().unwrap(), "--count", "3"]);
    let mut target = Target::start_in(cmd, &args);
    let pid = target.pid;
    let fin = trace_scenario(&mut target, &[]);
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 3);
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (mut named, mut all) = (0u64, 0u64);
        for st in span["stacks"].as_array().unwrap() {
            if st["kind"] != "on-cpu" {
                continue;
            }
            let n = st["samples"].as_u64().unwrap();
            all += n;
            let frames = st["frames"].as_array().unwrap();
            if frames
                .iter()
                .any(|f| f.as_str().unwrap().contains("buildReport"))
            {
                named += n;
            }
        }
        let share = named as f64 / all.max(1) as f64;
        // The span is the whole iteration, and express's own work around
        // the handler is in it (a first request can compile its request
        // path for tens of ms), so the bar is 80 % of the stall's share.
        let stall_share = t.duration_ns() as f64 / span["duration_ns"].as_u64().unwrap() as f64;
        eprintln!(
            "EXPRESS {node_flags:?}: {named}/{all} samples name buildReport ({:.0}%, the stall \
             is {:.0}% of the span), blame {}",
            share * 100.0,
            stall_share * 100.0,
            span["blame"]["text"]
        );
        assert!(
            share >= 0.8 * stall_share,
            "{share:.2} of samples, the stall {stall_share:.2} of the span: {span}"
        );
        assert!(
            blame(span, "function").contains("buildReport"),
            "{}",
            span["blame"]
        );
    }
}
