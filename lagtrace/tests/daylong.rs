//! Issue 16's long-attach outputs: `--spans-max-size` rotation loses no
//! span across files, `SIGUSR1` writes a flamegraph and a summary of the
//! last window while the trace goes on, and thread churn leaves the
//! summary one row of exited threads per process, with exact totals.
mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::Value;

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
    // Each file can be read alone (`lagtrace report`): it starts with the
    // header record.
    for (_, p) in &files {
        let first = read_jsonl(p).into_iter().next();
        assert_eq!(
            first.as_ref().map(|v| v["record"].clone()),
            Some(Value::from("header")),
            "{} starts with the header",
            p.display()
        );
    }
    let spans = files.iter().flat_map(|(_, p)| read_spans(p)).collect();
    (files.len(), spans)
}

#[test]
fn rotation_loses_no_span() {
    if !root_or_skip("rotation_loses_no_span") {
        return;
    }
    let Some(py) = python3_or_skip("rotation_loses_no_span") else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let mut target = Target::start(
        &py,
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
    let errors = assert_spans_witnessed(&spans, fin.witness.as_ref(), &stalls, 50);
    assert_eq!(errors.len(), 8, "every stall in exactly one file");
    assert_eq!(spans.len(), 8, "no span lost or doubled across files");
}

/// Parse an SVG as XML: the root element's name, and the text of its
/// `<title>`s (one per flamegraph frame).
fn parse_svg(text: &str) -> (String, Vec<String>) {
    use quick_xml::{Reader, events::Event};
    let mut r = Reader::from_str(text);
    let (mut root, mut titles, mut in_title) = (String::new(), Vec::new(), false);
    loop {
        match r
            .read_event()
            .unwrap_or_else(|e| panic!("invalid XML: {e}"))
        {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if root.is_empty() {
                    root = name.clone();
                }
                in_title = name == "title";
            }
            Event::Text(t) if in_title => {
                titles.push(String::from_utf8_lossy(t.as_ref()).into_owned());
            }
            Event::End(_) => in_title = false,
            Event::Eof => break,
            _ => {}
        }
    }
    (root, titles)
}

#[test]
fn sigusr1_snapshot_while_tracing() {
    if !root_or_skip("sigusr1_snapshot_while_tracing") {
        return;
    }
    let Some(py) = python3_or_skip("sigusr1_snapshot_while_tracing") else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let start = || {
        Target::start(
            &py,
            &[
                script.to_str().unwrap(),
                "--mode",
                "cpu",
                "--stalls-ms",
                "100,200",
            ],
        )
    };
    let (mut a, mut b) = (start(), start());
    let snaps = tempdir::Dir::new("snapshots");
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let lt = Lagtrace::attach(&[
        "--pid",
        &pa,
        "--pid",
        &pb,
        "--threshold",
        "50ms",
        "--window",
        "10m",
        "--snapshot-dir",
        snaps.0.to_str().unwrap(),
    ]);
    a.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    signal(lt.pid(), libc::SIGUSR1);
    // Wait for the summary (written after the SVG).
    let find = |ext: &str| {
        std::fs::read_dir(&snaps.0)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(ext))
    };
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(20));
    while find(".summary.json").is_none() {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let svg = std::fs::read_to_string(find(".svg").expect("a snapshot SVG")).unwrap();
    let (root, titles) = parse_svg(&svg);
    assert_eq!(root, "svg");
    assert!(
        titles.iter().any(|t| t.contains("burn_cpu")),
        "the snapshot shows the stalling function: {titles:?}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(find(".summary.json").unwrap()).unwrap())
            .unwrap();
    // a's two stalls, and any iteration a loaded host stretched past the
    // threshold (counted exactly against the recorded spans below).
    let in_snapshot = span_rows(&summary).values().map(|r| r[0]).sum::<u64>();
    assert!(in_snapshot >= 2, "{summary}");
    // The trace goes on: b's stalls after the signal are reported too.
    b.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    let after: Vec<Value> = fin
        .spans
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(b.pid)))
        .cloned()
        .collect();
    assert_spans_witnessed(&after, fin.witness.as_ref(), &b.stalls(), 50);
    assert_eq!(after.len(), 2, "spans after the snapshot: {after:?}");

    // One summary, not two: `lagtrace report` over the recorded spans of
    // the snapshot's window computes the same span figures and causes.
    let window = &summary["window"];
    let time = |k: &str| {
        let ns = window[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {window}"));
        jiff::Timestamp::from_nanosecond(i128::from(ns))
            .unwrap()
            .to_string()
    };
    let again = fin.dir.path("window.summary.json");
    let (code, _, err) = run_lagtrace(&[
        "report",
        fin.dir.path("spans.jsonl").to_str().unwrap(),
        "--since",
        &time("from_unix_ns"),
        "--until",
        &time("to_unix_ns"),
        "--summary-json",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (from, to) = (
        window["from_unix_ns"].as_u64().unwrap(),
        window["to_unix_ns"].as_u64().unwrap(),
    );
    let recorded = fin
        .spans
        .iter()
        .filter(|s| (from..to).contains(&s["start_unix_ns"].as_u64().unwrap()))
        .count() as u64;
    assert_eq!(in_snapshot, recorded, "{summary}");
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(span_rows(&summary), span_rows(&again), "{summary}\n{again}");
    assert_eq!(causes(&summary), causes(&again), "{summary}\n{again}");
    assert!(!causes(&summary).is_empty(), "{summary}");
}

/// Per (pid, tid) with spans: spans, total and longest, from a summary.
fn span_rows(summary: &Value) -> std::collections::BTreeMap<(u64, u64), [u64; 3]> {
    let mut rows = std::collections::BTreeMap::new();
    for p in summary["processes"].as_array().expect("processes") {
        for t in p["threads"].as_array().expect("threads") {
            let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k} in {t}"));
            if n("spans") > 0 {
                rows.insert(
                    (n("pid"), n("tid")),
                    [n("spans"), n("span_total_ns"), n("span_longest_ns")],
                );
            }
        }
    }
    rows
}

/// Per pid, its top causes.
fn causes(summary: &Value) -> std::collections::BTreeMap<u64, Value> {
    summary["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["top_causes"].as_array().is_some_and(|c| !c.is_empty()))
        .map(|p| (p["pid"].as_u64().unwrap(), p["top_causes"].clone()))
        .collect()
}

/// 2,000 short-lived threads (4 at a time, 160 a second: the kernel's
/// table holds 256 threads with samples until lagtrace forgets the exited
/// ones), each a tiny epoll loop of 9 iterations and
/// every 100th with one 60 ms stall: the summary keeps the last 32 exited
/// threads' rows and one `[1968 exited threads]` row (not 2,000), and its
/// iterations and spans equal the target's own totals exactly.
#[test]
fn thread_churn_is_folded_into_one_row_with_exact_totals() {
    let test = "thread_churn_is_folded_into_one_row_with_exact_totals";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("churn");
    let Some(bin) = build_c_target(test, "thread_churn.c", &dir) else {
        return;
    };
    let mut target = Target::start(
        &bin,
        &[
            "--threads",
            "2000",
            "--batch",
            "4",
            "--pause-ms",
            "25",
            "--stall-every",
            "100",
        ],
    );
    let lt = Lagtrace::attach(&["--pid", &target.pid.to_string(), "--threshold", "50ms"]);
    target.run_scenario(patience(Duration::from_secs(120)));
    let truth = read_jsonl(&target.truth)
        .into_iter()
        .find(|v| v["kind"] == "done")
        .expect("the target's totals");
    // The last threads' rows reach the summary at lagtrace's next snapshot.
    std::thread::sleep(Duration::from_millis(1000));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let summary = read_record(&fin.dir.path("spans.jsonl"), "summary").expect("summary record");
    let rows = summary["processes"][0]["threads"]
        .as_array()
        .expect("threads");
    eprintln!(
        "CHURN: {} rows: {:?}; truth {truth}",
        rows.len(),
        rows.iter().map(|r| r["thread"].clone()).collect::<Vec<_>>()
    );
    // The last 32 exited threads keep their rows; the rest are one row.
    assert_eq!(rows.len(), 33, "{rows:?}");
    let folded = rows.iter().find(|r| r["tid"] == 0).expect("the folded row");
    assert_eq!(folded["thread"], "[1968 exited threads]", "{folded}");
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        sum("iterations"),
        truth["iterations"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(sum("spans"), truth["spans"].as_u64().unwrap(), "{summary}");
    assert_eq!(fin.spans.len() as u64, truth["spans"].as_u64().unwrap());
    let total: u64 = fin
        .spans
        .iter()
        .map(|s| s["duration_ns"].as_u64().unwrap())
        .sum();
    assert_eq!(sum("span_total_ns"), total, "{summary}");
    let longest = fin
        .spans
        .iter()
        .map(|s| s["duration_ns"].as_u64().unwrap())
        .max();
    let row_longest = rows
        .iter()
        .map(|r| r["span_longest_ns"].as_u64().unwrap())
        .max();
    assert_eq!(row_longest, longest);
    assert!(folded["max_ns"].as_u64().unwrap() >= 60_000_000, "{folded}");
    // `lagtrace report` counts the recorded spans of the folded threads in
    // that row too.
    let again = fin.dir.path("again.summary.json");
    let (code, _, err) = run_lagtrace(&[
        "report",
        fin.dir.path("spans.jsonl").to_str().unwrap(),
        "--summary-json",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(
        again["processes"][0]["threads"],
        summary["processes"][0]["threads"]
    );
}

/// 400 short-lived child processes (`--children`), each a tiny epoll loop
/// of 9 iterations and every 100th with one 60 ms stall: past 256 exited
/// children the oldest fold into one `[other exited processes]` process,
/// so the summary stays bounded, and its totals equal the target's own.
#[test]
fn process_churn_is_folded_into_one_process_with_exact_totals() {
    let test = "process_churn_is_folded_into_one_process_with_exact_totals";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("pchurn");
    let Some(bin) = build_c_target(test, "thread_churn.c", &dir) else {
        return;
    };
    let mut target = Target::start(
        &bin,
        &[
            "--processes",
            "1",
            "--threads",
            "400",
            "--batch",
            "4",
            "--pause-ms",
            "25",
            "--stall-every",
            "100",
        ],
    );
    let lt = Lagtrace::attach(&[
        "--pid",
        &target.pid.to_string(),
        "--children",
        "--threshold",
        "50ms",
    ]);
    target.run_scenario(patience(Duration::from_secs(120)));
    let truth = read_jsonl(&target.truth)
        .into_iter()
        .find(|v| v["kind"] == "done")
        .expect("the target's totals");
    // The last children are found exited at lagtrace's next ticks.
    std::thread::sleep(Duration::from_millis(2500));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    let summary = read_record(&fin.dir.path("spans.jsonl"), "summary").expect("summary record");
    let processes = summary["processes"].as_array().expect("processes");
    let other = processes.iter().find(|p| p["pid"] == 0);
    eprintln!(
        "PROCESS CHURN: {} processes in the summary; other: {:?}; truth {truth}",
        processes.len(),
        other.map(|o| (&o["describe"], &o["threads"]))
    );
    assert!(processes.len() <= 1 + 256 + 1, "{}", processes.len());
    let other = other.expect("an [other exited processes] row");
    assert_eq!(other["comm"], "[other exited processes]");
    let rows = || {
        processes
            .iter()
            .flat_map(|p| p["threads"].as_array().unwrap().iter())
    };
    let sum = |k: &str| rows().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        sum("iterations"),
        truth["iterations"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(sum("spans"), truth["spans"].as_u64().unwrap(), "{summary}");
    assert_eq!(fin.spans.len() as u64, truth["spans"].as_u64().unwrap());
    // `lagtrace report` gives the same rows from the recorded spans.
    let again = fin.dir.path("again.summary.json");
    let (code, _, err) = run_lagtrace(&[
        "report",
        fin.dir.path("spans.jsonl").to_str().unwrap(),
        "--summary-json",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again["processes"], summary["processes"]);
}
