//! Issue 13: a span names the asyncio Task it ran in by the Task's own name
//! (`Task.get_name()`, the JSON `task_name`), read from the target's memory
//! while the span was open: a named Task gives its name, an unnamed one
//! `Task-N` (as asyncio names it), and a plain `loop.call_soon` callback,
//! where no Task runs, none. On every pyenv CPython 3.8–3.13 installed
//! (3.7's Tasks have no names) and on uvloop.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Trace `tests/targets/task_names.py` under `python` and check each of
/// its stalls' spans against the Task name the target wrote for it.
fn check(test: &str, python: &Path, extra: &[&str]) {
    let script = targets_dir().join("task_names.py");
    let mut args = vec![script.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let mut target = Target::start(python, &args);
    let fin = trace_scenario(&mut target, &[]);
    let stalls: Vec<Value> = read_jsonl(&target.truth)
        .into_iter()
        .filter(|v| v["kind"] == "stall")
        .collect();
    assert_eq!(stalls.len(), 3, "{test}: the target ran its three stalls");
    for s in &stalls {
        let truth = Truth::from_json(s);
        let found = matching_span(&fin.spans, &truth);
        assert_eq!(
            found.len(),
            1,
            "{test}: stall {} should be one span; got {found:?}",
            truth.label
        );
        let got = found[0].get("task_name").and_then(Value::as_str);
        let want = s["task_name"].as_str();
        eprintln!(
            "{test}: {}: task_name {got:?} (truth {want:?}), task {:?}",
            truth.label,
            found[0].get("task").and_then(Value::as_str)
        );
        assert_eq!(got, want, "{test}: stall {}: {:?}", truth.label, found[0]);
        // The task is named by its coroutine too, on uvloop as well (from
        // the Task read, where no `Handle._run` frame shows it).
        if truth.label == "named" {
            let task = found[0].get("task").and_then(Value::as_str);
            assert!(
                task.is_some_and(|t| t.contains("checkout_handler")),
                "{test}: task {task:?}"
            );
        }
    }
    // The unnamed Task is named as asyncio names it.
    let unnamed = stalls
        .iter()
        .find(|s| s["label"] == "unnamed")
        .expect("unnamed");
    assert!(
        unnamed["task_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("Task-")),
        "{test}: {unnamed}"
    );
}

fn pyenv(version: &str) {
    let test = format!("task_names_cpython_{version}");
    if !root_or_skip(&test) || !walker_or_skip(&test) {
        return;
    }
    let Some(python) = pyenv_python_or_skip(&test, version) else {
        return;
    };
    check(&test, &python, &[]);
}

#[test]
fn task_names_cpython_3_8() {
    pyenv("3.8");
}

#[test]
fn task_names_cpython_3_9() {
    pyenv("3.9");
}

#[test]
fn task_names_cpython_3_10() {
    pyenv("3.10");
}

#[test]
fn task_names_cpython_3_11() {
    pyenv("3.11");
}

#[test]
fn task_names_cpython_3_12() {
    pyenv("3.12");
}

#[test]
fn task_names_cpython_3_13() {
    pyenv("3.13");
}

#[test]
fn task_names_on_uvloop() {
    let test = "task_names_on_uvloop";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let venv_py: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-uvloop/bin/python3");
    if !venv_py.exists() {
        eprintln!(
            "SKIP {test}: no {} (cargo xtask setup makes it)",
            venv_py.display()
        );
        return;
    }
    check(test, &venv_py, &["--loop", "uvloop"]);
}
