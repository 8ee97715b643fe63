//! Issue 11's bar: native stacks of binaries without frame pointers,
//! unwound in the kernel from `.eh_frame` tables: C++ at -O2
//! -fomit-frame-pointer, a library dlopen'ed after attach, a tokio release
//! build, and pyenv's CPython 3.11 with a C-extension hot spot.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

/// Outermost frames a complete walk ends in: the process's or a thread's start.
const THREAD_STARTS: [&str; 4] = ["_start", "clone3 ", "clone ", "start_thread "];

/// Frames of a stack, outermost first.
fn frames(st: &Value) -> Vec<&str> {
    st["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// True when `frames` holds every needle in this order (substring match).
fn has_chain(frames: &[&str], chain: &[&str]) -> bool {
    let mut at = 0;
    for needle in chain {
        match frames[at..].iter().position(|f| f.contains(needle)) {
            Some(i) => at += i + 1,
            None => return false,
        }
    }
    true
}

fn from_thread_start(frames: &[&str]) -> bool {
    frames.first().is_some_and(|f| {
        THREAD_STARTS
            .iter()
            .any(|s| f.starts_with(s) || *f == s.trim_end())
    })
}

/// (weight with the chain from the thread start, total weight) of a span's
/// stacks of `kind`: samples for on-CPU, time for off-CPU.
fn chain_share(span: &Value, kind: &str, chain: &[&str]) -> (u64, u64) {
    let (mut hit, mut total) = (0, 0);
    for st in span["stacks"].as_array().unwrap() {
        if st["kind"] != kind {
            continue;
        }
        let w = if kind == "on-cpu" {
            st["samples"].as_u64().unwrap()
        } else {
            st["weight_ns"].as_u64().unwrap_or(0)
        };
        total += w;
        let f = frames(st);
        if from_thread_start(&f) && has_chain(&f, chain) {
            hit += w;
        }
    }
    (hit, total)
}

fn compile(test: &str, dir: &tempdir::Dir, out: &str, args: &[&str]) -> Option<PathBuf> {
    let cc = if args.contains(&"c++") { "g++" } else { "gcc" };
    let cc = tool_or_skip(test, &[cc])?;
    let path = dir.path(out);
    let status = Command::new(cc)
        .args(args.iter().filter(|a| **a != "c++"))
        .arg("-o")
        .arg(&path)
        .status()
        .expect("compiler");
    assert!(status.success(), "{test}: compiling {out} failed");
    Some(path)
}

fn cpp_target(test: &str, dir: &tempdir::Dir) -> Option<PathBuf> {
    let src = targets_dir().join("cpp_nofp_loop.cpp");
    compile(
        test,
        dir,
        "cpp_nofp_loop",
        &[
            "c++",
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-Wall",
            src.to_str().unwrap(),
            "-ldl",
        ],
    )
}

/// The target must really lack frame pointers for the test to mean anything:
/// its function must not set rbp to its frame (`mov %rsp,%rbp`; a plain
/// `push %rbp` only saves rbp as the general register it becomes).
fn assert_no_frame_pointer(bin: &Path, func: &str) {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(bin)
        .output();
    let Ok(out) = out else {
        eprintln!("NOTE: no objdump; not checking {func} for a frame pointer");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let body: Vec<&str> = text
        .split(&format!("<{func}>:"))
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(!body.is_empty(), "{func} not found in {}", bin.display());
    assert!(
        !body.iter().any(|l| l.contains("mov    %rsp,%rbp")),
        "{func} sets up a frame pointer: the test would not test unwinding"
    );
}

#[test]
fn cpp_without_frame_pointers_has_full_stacks() {
    if !walker_or_skip("cpp_without_frame_pointers_has_full_stacks") {
        return;
    }
    let test = "cpp_without_frame_pointers_has_full_stacks";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("cppnofp");
    let Some(bin) = cpp_target(test, &dir) else {
        return;
    };
    assert_no_frame_pointer(&bin, "run_stall");
    let mut target = Target::start(&bin, &["--stalls-ms", "75,120,250"]);
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_stalls_witnessed(&fin, &stalls, 50);
    let chain = ["main (", "handle_tick (", "run_stall (", "spin_ms ("];
    let mut inlined = 0;
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (hit, total) = chain_share(span, "on-cpu", &chain);
        let share = hit as f64 / total.max(1) as f64;
        eprintln!(
            "UNWIND c++ -fomit-frame-pointer {}: {hit}/{total} on-CPU samples with _start … main ← handle_tick ← run_stall ← spin_ms ({:.1}%)",
            t.label,
            share * 100.0
        );
        assert!(share >= 0.9, "{}: {hit}/{total}: {span}", t.label);
        inlined += span["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|st| has_chain(&frames(st), &["spin_ms (", "mix ("]))
            .count();
    }
    assert!(inlined > 0, "the inlined helper mix() was never named");
}

#[test]
fn library_dlopened_after_attach_is_unwound() {
    if !walker_or_skip("library_dlopened_after_attach_is_unwound") {
        return;
    }
    let test = "library_dlopened_after_attach_is_unwound";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("dlopen");
    let Some(bin) = cpp_target(test, &dir) else {
        return;
    };
    let src = targets_dir().join("nofp_plugin.c");
    let Some(lib) = compile(
        test,
        &dir,
        "libnofp_plugin.so",
        &[
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fPIC",
            "-shared",
            src.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    assert_no_frame_pointer(&lib, "plugin_spin");
    // The plugin is loaded at the first SIGUSR1, after lagtrace attached.
    let mut target = Target::start(
        &bin,
        &[
            "--plugin",
            lib.to_str().unwrap(),
            "--stalls-ms",
            "100,150,150,150",
            "--gap-ms",
            "1200",
        ],
    );
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert_stalls_witnessed(&fin, &stalls, 50);
    let chain = ["main (", "handle_tick (", "run_stall (", "plugin_spin ("];
    // Its table is built once samples show PCs outside every table (at most
    // a second later): the first stall may be cut short, not the later ones.
    for t in &stalls[1..] {
        let span = matching_span(&fin.spans, t)[0];
        let (hit, total) = chain_share(span, "on-cpu", &chain);
        let share = hit as f64 / total.max(1) as f64;
        eprintln!(
            "UNWIND dlopen {}: {hit}/{total} on-CPU samples from _start through plugin_spin ({:.1}%)",
            t.label,
            share * 100.0
        );
        assert!(share >= 0.9, "{}: {hit}/{total}: {span}", t.label);
    }
}

fn testapp(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

#[test]
fn tokio_release_build_has_full_stacks() {
    if !walker_or_skip("tokio_release_build_has_full_stacks") {
        return;
    }
    let test = "tokio_release_build_has_full_stacks";
    if !root_or_skip(test) {
        return;
    }
    // The workspace's release profile: no force-frame-pointers.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "lagtrace-testapps"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building lagtrace-testapps failed");
    let app = testapp("tokio_stalls");
    for block in ["cpu", "sleep"] {
        let mut target = Target::start(
            &app,
            &[
                "--flavor",
                "multi",
                "--block",
                block,
                "--stalls-ms",
                "80,150,300",
            ],
        );
        let pid = target.pid.to_string();
        let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
        // Workers parked since before attach are seen from their next wait.
        std::thread::sleep(Duration::from_millis(100));
        target.run_scenario(Duration::from_secs(60));
        let fin = lt.stop();
        assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
        let stalls = target.stalls();
        assert_stalls_witnessed(&fin, &stalls, 50);
        for t in &stalls {
            let span = matching_span(&fin.spans, t)
                .into_iter()
                .find(|s| s["tid"].as_u64() == Some(u64::from(t.tid)))
                .expect("span on the blocked worker");
            let (kind, chain): (&str, &[&str]) = if block == "cpu" {
                (
                    "on-cpu",
                    &["tokio::runtime::", "stall_now", "tokio_stalls::spin_cpu"],
                )
            } else {
                (
                    "off-cpu",
                    &[
                        "tokio::runtime::",
                        "tokio_stalls::blocking_sleep",
                        "std::thread",
                        "nanosleep",
                    ],
                )
            };
            let (hit, total) = chain_share(span, kind, chain);
            let share = hit as f64 / total.max(1) as f64;
            eprintln!(
                "UNWIND tokio {block} {}: {:.1}% of {kind} weight from the thread start through {}",
                t.label,
                share * 100.0,
                chain.join(" ← ")
            );
            assert!(share >= 0.9, "{}: {hit}/{total}: {span}", t.label);
        }
        assert!(target.alive());
    }
}

#[test]
fn python_311_c_extension_frames_hang_under_their_python_caller() {
    if !walker_or_skip("python_311_c_extension_frames_hang_under_their_python_caller") {
        return;
    }
    let test = "python_311_c_extension_frames_hang_under_their_python_caller";
    if !root_or_skip(test) {
        return;
    }
    let Some(py) = pyenv_python("3.11") else {
        eprintln!("SKIP {test}: no pyenv CPython 3.11 installed");
        return;
    };
    let script = targets_dir().join("seed_story.py");
    let mut target = Target::start(&py, &[script.to_str().unwrap(), "--count", "3"]);
    let fin = trace_scenario(&mut target, &[]);
    let stalls = target.stalls();
    assert!(!stalls.is_empty());
    // The kernel's walk count (the summary record's health): nearly every
    // walk reached the thread start, so it passed through every
    // _PyEval_EvalFrameDefault on the way.
    let summary = read_record(&fin.dir.path("spans.jsonl"), "summary").expect("summary record");
    let ends = &summary["health"]["user_stack_ends"];
    let all: u64 = ends
        .as_object()
        .expect("user_stack_ends")
        .values()
        .filter_map(|n| n.as_u64())
        .sum();
    let root = ends["root"].as_u64().unwrap_or(0);
    eprintln!(
        "UNWIND python 3.11: {root}/{all} walks reached the root ({:.1}%): {ends}",
        root as f64 * 100.0 / all.max(1) as f64
    );
    assert!(root as f64 >= 0.9 * all as f64, "{ends}");
    // Merged stacks: the _json scanner's C frames under the Python function
    // that called it (after the interpreter's own call frames), among the
    // samples that have Python frames of the decode.
    for t in &stalls {
        let span = matching_span(&fin.spans, t)[0];
        let (mut under, mut total) = (0, 0);
        for st in span["stacks"].as_array().unwrap() {
            if st["kind"] != "on-cpu" {
                continue;
            }
            let f = frames(st);
            let Some(i) = f
                .iter()
                .position(|x| x.starts_with("JSONDecoder.raw_decode (json/decoder.py:"))
            else {
                continue;
            };
            let n = st["samples"].as_u64().unwrap();
            total += n;
            let below = &f[i + 1..];
            let next_python = below
                .iter()
                .position(|x| x.contains(".py:"))
                .unwrap_or(below.len());
            if below[..next_python]
                .iter()
                .any(|c| c.starts_with("scanner_call ("))
            {
                under += n;
            }
        }
        let share = under as f64 / total.max(1) as f64;
        eprintln!(
            "UNWIND python 3.11 {}: {under}/{total} on-CPU samples in raw_decode with the _json scanner under it ({:.1}%)",
            t.label,
            share * 100.0
        );
        assert!(
            total > 0 && share >= 0.9,
            "{}: {under}/{total}: {span}",
            t.label
        );
    }
}

/// The unwind tables are in the summary record, per file and in total
/// (what `cargo xtask bench --unwind` reads instead of `-v` lines).
#[test]
fn unwind_tables_are_in_the_summary_record() {
    let test = "unwind_tables_are_in_the_summary_record";
    if !root_or_skip(test) {
        return;
    }
    let Some(py) = python3_or_skip(test) else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let target = Target::start(&py, &[script.to_str().unwrap()]);
    // Long enough for the loop's 5 ms heartbeat to be seen: a trace that
    // saw no loop activity exits 3.
    let dir = tempdir::Dir::new("unwind-summary");
    let spans = dir.path("spans.jsonl");
    let pid = target.pid.to_string();
    let (code, _, stderr) = run_lagtrace(&[
        "--pid",
        &pid,
        "-d",
        "300ms",
        "--spans",
        spans.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let summary = read_record(&spans, "summary").expect("summary record");
    let t = &summary["health"]["unwind_tables"];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let files = t["files"].as_array().expect("files");
    assert_eq!(files.len() as u64, n(t, "files_loaded"), "{t}");
    assert!(n(t, "rows") > 0 && n(t, "bytes") == 8 * n(t, "rows"), "{t}");
    assert_eq!(
        files.iter().map(|f| n(f, "rows")).sum::<u64>(),
        n(t, "rows")
    );
    let libc = files
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.contains("libc.so")))
        .unwrap_or_else(|| panic!("libc's table: {t}"));
    assert!(n(libc, "rows") > 1000 && n(libc, "fdes") > 100, "{libc}");
    assert!(n(libc, "build_ns") > 0 && n(libc, "load_ns") > 0, "{libc}");
    eprintln!(
        "UNWIND TABLES: {} files, {} rows; libc {libc}",
        files.len(),
        n(t, "rows")
    );
}
