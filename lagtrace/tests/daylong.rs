//! Issue 16's long-attach outputs: `--spans-max-size` rotation loses no
//! span across files, and `SIGUSR1` writes a flamegraph and a summary of
//! the last window while the trace goes on.
mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::Value;

fn python() -> std::path::PathBuf {
    pyenv_python("3.11")
        .or_else(|| tool_or_skip("python", &["python3"]))
        .expect("a python3")
}

/// Every line of FILE and its rotated FILE.N, oldest first.
fn rotated_spans(path: &Path) -> (usize, Vec<Value>) {
    let mut files: Vec<(u32, std::path::PathBuf)> = vec![(0, path.to_path_buf())];
    for n in 1.. {
        let p = std::path::PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        files.push((n, p));
    }
    files.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let spans = files.iter().flat_map(|(_, p)| read_jsonl(p)).collect();
    (files.len(), spans)
}

#[test]
fn rotation_loses_no_span() {
    if !root_or_skip("rotation_loses_no_span") {
        return;
    }
    let script = targets_dir().join("asyncio_stalls.py");
    let mut target = Target::start(
        &python(),
        &[
            script.to_str().unwrap(),
            "--mode",
            "cpu",
            "--stalls-ms",
            "70,80,90,100,110,120,130,140",
            "--gap-ms",
            "100",
        ],
    );
    let pid = target.pid.to_string();
    // A tiny limit: a span line is 1–3 KB.
    let dir = tempdir::Dir::new("rotation");
    let spans_path = dir.path("spans.jsonl");
    let lt = Lagtrace::attach_with(
        &[
            "--pid",
            &pid,
            "--threshold",
            "50ms",
            "--spans",
            spans_path.to_str().unwrap(),
            "--spans-max-size",
            "3KB",
            "--spans-keep",
            "100",
        ],
        false,
    );
    target.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let (files, spans) = rotated_spans(&spans_path);
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 8);
    eprintln!("ROTATION {} spans in {files} files", spans.len());
    assert!(files >= 3, "a 3 KB limit must rotate: {files} files");
    let errors = assert_stalls_reported(&spans, &stalls, 50);
    assert_eq!(errors.len(), 8, "every stall in exactly one file");
    assert_eq!(spans.len(), 8, "no span lost or doubled across files");
}
