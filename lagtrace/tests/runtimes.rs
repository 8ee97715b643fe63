//! Issue 7's bar: loops in non-main threads, several loops and processes,
//! runtimes whose workers park on futexes (tokio), uvloop, pre-fork
//! servers followed with --children, and a target in its own PID namespace.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    let p = pyenv_python("3.12");
    if p.is_none() {
        eprintln!("SKIP: no pyenv CPython 3.12");
    }
    p
}

fn testapp(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the apps sit next to it.
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

fn build_testapps() -> bool {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "lagtrace-testapps"])
        .status()
        .expect("cargo build");
    status.success()
}

fn spans_of_tid(spans: &[Value], tid: u32) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| s["tid"].as_u64() == Some(u64::from(tid)))
        .collect()
}

#[test]
fn loop_in_a_non_main_thread_and_two_loops_in_one_process() {
    if !root_or_skip("loop_in_a_non_main_thread_and_two_loops_in_one_process") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    for (extra, names) in [
        (vec!["--thread"], vec!["loop-thread"]),
        (vec!["--loops", "2"], vec!["loop-a", "loop-b"]),
    ] {
        let mut args = vec![
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "80,160",
        ];
        args.extend(extra.iter());
        let mut target = Target::start(&py, &args);
        let pid = target.pid.to_string();
        let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
        target.run_scenario(Duration::from_secs(30));
        let fin = lt.stop();
        assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
        let stalls = target.stalls();
        assert_eq!(stalls.len(), 2 * names.len());
        let errors = assert_stalls_reported(&fin.spans, &stalls, 50);
        for t in &stalls {
            assert_ne!(t.tid, target.pid, "the loop runs off the main thread");
            let span = matching_span(&fin.spans, t)[0];
            let thread = span["thread"].as_str().unwrap();
            assert!(
                names.contains(&thread),
                "span of tid {} named {thread}",
                t.tid
            );
        }
        let summary = fin.stdout.join("\n");
        for n in &names {
            assert!(
                summary.contains(&format!("{n}[")),
                "summary lacks {n}: {summary}"
            );
        }
        report(&format!("asyncio {extra:?}"), &errors);
    }
}

#[test]
fn repeated_pid_traces_two_processes_with_a_summary_each() {
    if !root_or_skip("repeated_pid_traces_two_processes_with_a_summary_each") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    let mut a = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "90",
        ],
    );
    let mut b = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "sleep",
            "--stalls-ms",
            "120",
        ],
    );
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let lt = Lagtrace::attach(&["--pid", &pa, "--pid", &pb, "--threshold", "50ms"]);
    a.run_scenario(Duration::from_secs(30));
    b.run_scenario(Duration::from_secs(30));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    assert_stalls_reported(&fin.spans, &a.stalls(), 50);
    assert_stalls_reported(&fin.spans, &b.stalls(), 50);
    let out = fin.stdout.join("\n");
    assert!(
        out.contains(&format!("== lag summary: pid {pa} "))
            && out.contains(&format!("== lag summary: pid {pb} ")),
        "{out}"
    );
    // With two processes, live lines name the process too.
    assert!(
        fin.stdout.iter().any(|l| l.contains(&format!("[{pa}/"))),
        "{out}"
    );
}

#[test]
fn target_in_its_own_pid_namespace_is_traced_by_host_pid() {
    if !root_or_skip("target_in_its_own_pid_namespace_is_traced_by_host_pid") {
        return;
    }
    let Some(py) = python() else { return };
    let script = targets_dir().join("asyncio_stalls.py");
    let Some(mut target) = Target::start_in_pidns(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "cpu",
            "--stalls-ms",
            "120,200",
        ],
    ) else {
        return;
    };
    let host = target.pid;
    assert_ne!(host, 1);
    let pid = host.to_string();
    let lt = Lagtrace::attach(&["--pid", &pid, "--threshold", "50ms"]);
    target.run_scenario(Duration::from_secs(30));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    // Inside the namespace the loop thread is tid 1: compare by host tid.
    let stalls: Vec<Truth> = target
        .stalls()
        .into_iter()
        .map(|t| Truth { tid: host, ..t })
        .collect();
    let errors = assert_stalls_reported(&fin.spans, &stalls, 50);
    for s in &fin.spans {
        assert_eq!(
            s["pid"].as_u64(),
            Some(u64::from(host)),
            "outputs use the host pid"
        );
        assert_eq!(
            s["ns_pid"].as_u64(),
            Some(1),
            "and the in-namespace pid: {s}"
        );
    }
    // Files are found through /proc/PID/root: Python and native frames are named.
    let named = fin.spans.iter().all(|s| {
        s["stacks"].as_array().unwrap().iter().any(|st| {
            st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().starts_with("burn_cpu ("))
        })
    });
    assert!(
        named,
        "burn_cpu not named in the container: {:?}",
        fin.spans
    );
    report("asyncio in a PID namespace", &errors);
    // Kill the namespace's init through the unshare process.
    signal(host, libc::SIGKILL);
}
