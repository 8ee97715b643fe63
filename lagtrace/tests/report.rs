//! Issue 14's bar: record once, report anywhere. A live run writes every
//! output; `lagtrace report` on its `--spans` file writes them again, the
//! same; filters on a recorded file select exactly the spans they name; a
//! file cut short is reported with a warning; the pprof file is read by
//! `go tool pprof` and the speedscope file checked against speedscope's own
//! file-format schema.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::{Value, json};

/// Every output flag of a run or report, into `dir` with `prefix`.
fn output_args(dir: &tempdir::Dir, prefix: &str) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, name) in [
        ("--folded", "stacks.folded"),
        ("--flamegraph", "flame.svg"),
        ("--pprof", "profile.pb.gz"),
        ("--speedscope", "speedscope.json"),
        ("--summary-json", "summary.json"),
    ] {
        args.push(flag.to_string());
        args.push(dir.path(&format!("{prefix}{name}")).display().to_string());
    }
    args
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    run_lagtrace(&all)
}

/// `go tool pprof -top` of a profile: the function names, hottest first by
/// flat samples.
fn pprof_top(go: &Path, profile: &Path) -> Vec<String> {
    let out = Command::new(go)
        .args(["tool", "pprof", "-top", "-sample_index=samples"])
        .arg(profile)
        .output()
        .expect("go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Rows: flat flat% sum% cum cum% name.
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .collect()
}

/// Check a speedscope file against the schema of the `speedscope` npm
/// package (installed by `cargo xtask setup` in target/npm); None when the
/// schema or node is missing.
fn speedscope_schema_check(file: &Path) -> Option<Result<(), String>> {
    let npm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/npm/node_modules");
    let schema = npm.join("speedscope/dist/release/file-format-schema.json");
    if !schema.exists() || !npm.join("ajv").exists() {
        eprintln!(
            "SKIP speedscope schema check: {} missing (run `cargo xtask setup`)",
            schema.display()
        );
        return None;
    }
    let node = tool_or_skip("speedscope schema check", &["node", "nodejs"])?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/validate_schema.js");
    let out = Command::new(node)
        .env("NODE_PATH", &npm)
        .arg(script)
        .arg(&schema)
        .arg(file)
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(if out.status.success() && text.trim() == "valid" {
        Ok(())
    } else {
        Err(text)
    })
}

/// The speedscope file holds one profile per loop thread, one sample per
/// stack of its spans, and one frame per distinct frame, marker and span.
fn check_speedscope_counts(doc: &Value, spans: &[Value]) {
    let mut labels: BTreeSet<String> = BTreeSet::new();
    let mut stacks: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for s in spans {
        let key = (s["pid"].as_u64().unwrap(), s["tid"].as_u64().unwrap());
        for st in s["stacks"].as_array().unwrap() {
            *stacks.entry(key).or_default() += 1;
            if st["kind"] != "on-cpu" {
                labels.insert(format!("[{}]", st["kind"].as_str().unwrap()));
            }
            for f in st["frames"].as_array().unwrap() {
                labels.insert(f.as_str().unwrap().to_string());
            }
        }
    }
    let frames = doc["shared"]["frames"].as_array().unwrap();
    assert_eq!(
        frames.len(),
        labels.len() + spans.len(),
        "one frame per distinct frame and marker, plus one per span"
    );
    let profiles = doc["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), stacks.len(), "one profile per loop thread");
    let mut samples: Vec<usize> = profiles
        .iter()
        .map(|p| {
            let n = p["samples"].as_array().unwrap().len();
            assert_eq!(n, p["weights"].as_array().unwrap().len());
            n
        })
        .collect();
    let mut want: Vec<usize> = stacks.into_values().collect();
    samples.sort();
    want.sort();
    assert_eq!(samples, want, "one sample per stack of each thread's spans");
}

#[test]
fn a_report_of_a_live_run_writes_the_same_outputs() {
    let test = "a_report_of_a_live_run_writes_the_same_outputs";
    if !root_or_skip(test) || !walker_or_skip(test) {
        return;
    }
    let dir = tempdir::Dir::new("report-live");
    let Some(bin) = build_c_target(test, "c_epoll_loop.c", &dir) else {
        return;
    };
    let mut target = Target::start(&bin, &["--stalls-ms", "75,120,250", "--gap-ms", "100"]);
    let pid = target.pid.to_string();
    let mut args: Vec<String> = ["--pid", &pid, "--threshold", "50ms"]
        .map(String::from)
        .to_vec();
    args.extend(output_args(&dir, "live-"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lt = Lagtrace::attach(&args);
    target.run_scenario(patience(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "{:?}", fin.stderr);
    assert_stalls_witnessed(&fin, &target.stalls(), 50);
    let spans_file = fin.dir.path("spans.jsonl");

    // The file starts with its header and ends with the summary record,
    // which is the --summary-json object.
    let lines = read_jsonl(&spans_file);
    assert_eq!(lines[0]["record"], "header", "{}", lines[0]);
    assert_eq!(lines[0]["format_version"], 2);
    assert_eq!(
        lines[0]["targets"][0]["pid"].as_u64(),
        Some(target.pid.into())
    );
    let mut last = lines.last().unwrap().clone();
    assert_eq!(last["record"], "summary");
    last.as_object_mut().unwrap().remove("record");
    let live_summary = json_file(&dir.path("live-summary.json"));
    assert_eq!(last, live_summary, "the last record is the summary");
    let threads = live_summary["processes"][0]["threads"].as_array().unwrap();
    let spans_counted: u64 = threads.iter().map(|t| t["spans"].as_u64().unwrap()).sum();
    assert_eq!(spans_counted, fin.spans.len() as u64);
    assert!(threads[0]["iterations"].as_u64().unwrap() > 0);
    assert!(live_summary["health"]["lost_events"].is_u64());

    let spans_arg = spans_file.display().to_string();
    let mut rargs = vec![spans_arg.clone()];
    rargs.extend(output_args(&dir, "report-"));
    let rargs: Vec<&str> = rargs.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = report(&rargs);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.contains("== lag summary"), "{stdout}");
    for name in ["stacks.folded", "speedscope.json"] {
        assert!(
            read(&dir.path(&format!("live-{name}"))) == read(&dir.path(&format!("report-{name}"))),
            "{name} differs between the live run and the report"
        );
    }
    assert!(!read(&dir.path("live-stacks.folded")).is_empty());
    assert_eq!(
        json_file(&dir.path("report-summary.json")),
        live_summary,
        "the summaries agree"
    );
    let svg = String::from_utf8(read(&dir.path("report-flame.svg"))).unwrap();
    assert!(svg.contains("hot_spin_ms") && svg.trim_end().ends_with("</svg>"));

    let speedscope = json_file(&dir.path("live-speedscope.json"));
    check_speedscope_counts(&speedscope, &fin.spans);
    if let Some(r) = speedscope_schema_check(&dir.path("live-speedscope.json")) {
        r.expect("the speedscope file follows speedscope's schema");
    }

    // pprof, as Go's own reader sees it: the spin loop's leaf is on top.
    if let Some(go) = tool_or_skip("go tool pprof", &["go"]) {
        for f in ["live-profile.pb.gz", "report-profile.pb.gz"] {
            let top = pprof_top(&go, &dir.path(f));
            assert_eq!(
                top.first().map(String::as_str),
                Some("inner_work"),
                "{f}: {top:?}"
            );
            assert!(top.iter().any(|n| n == "hot_spin_ms"), "{f}: {top:?}");
        }
    }
}

const T0: u64 = 1_700_000_000_000_000_000; // 2023-11-14T22:13:20Z
const MS: u64 = 1_000_000;

fn stack(frames: &[&str], kinds: &[&str], kind: &str, samples: u64, weight_ns: u64) -> Value {
    let mut v = json!({ "frames": frames, "kinds": kinds, "samples": samples, "kind": kind });
    if weight_ns > 0 {
        v["weight_ns"] = json!(weight_ns);
    }
    v
}

/// A span with a duration that names it: each span's duration is a
/// distinct power of two milliseconds, so a sum of durations tells which
/// spans a report kept.
fn span(pid: u32, tid: u32, thread: &str, at_ms: u64, dur_ms: u64, cause: &str) -> Value {
    json!({
        "pid": pid, "tid": tid, "thread": thread, "comm": "app",
        "start_unix_ns": T0 + at_ms * MS, "duration_ns": dur_ms * MS,
        "on_cpu_ns": dur_ms * MS, "off_cpu_ns": 0, "runqueue_ns": 0,
        "iteration": at_ms, "samples": 3, "samples_dropped": 0, "cause": cause,
        "stacks": [stack(&["main", "work"], &["native", "native"], "on-cpu", 3, 0)],
    })
}

fn thread_row(pid: u32, tid: u32, thread: &str) -> Value {
    json!({
        "pid": pid, "tid": tid, "thread": thread, "iterations": 1000,
        "p50_ns": 1000, "p90_ns": 2000, "p99_ns": 3000, "max_ns": 1024 * MS,
        "spans": 0, "span_total_ns": 0, "span_longest_ns": 0, "lag_share": 0.0,
    })
}

/// A recorded file with five known spans, A (64 ms) to E (1024 ms).
fn recorded_lines() -> Vec<String> {
    let header = json!({
        "record": "header", "format_version": 1, "lagtrace_version": "0.1.0",
        "targets": [
            {"pid": 100, "comm": "app", "describe": "app"},
            {"pid": 200, "comm": "other", "describe": "other"},
        ],
        "threshold_ns": 50 * MS, "frequency_hz": 499, "kernel_release": "6.18",
        "start_unix_ns": T0,
    });
    let a = span(100, 100, "main", 1000, 64, "cpu");
    let mut b = span(
        100,
        100,
        "main",
        2000,
        128,
        "blocked in recvfrom ← fetch (app/client.py:12)",
    );
    b["stacks"] = json!([stack(
        &[
            "main (app.py:3)",
            "fetch (app/client.py:12)",
            "recvfrom",
            "__x64_sys_recvfrom_[k]"
        ],
        &["python", "python", "native", "kernel"],
        "off-cpu",
        1,
        120 * MS
    )]);
    let mut c = span(100, 101, "worker", 3000, 256, "cpu");
    c["blame"] = json!({
        "function": "json.loads",
        "file": "json/__init__.py",
        "line": 346,
        "kind": "on-cpu",
        "text": "json.loads (json/__init__.py:346)",
        "frame": "json.loads (json/__init__.py:346)",
        "group": "json.loads (__init__.py)"
    });
    let d = span(200, 200, "loop", 4000, 512, "runqueue");
    let e = span(
        100,
        100,
        "main",
        5000,
        1024,
        "cpu 60%, blocked in futex 40%",
    );
    let summary = json!({
        "record": "summary", "wall_ns": 7_000 * MS,
        "processes": [
            {"pid": 100, "comm": "app", "describe": "app", "exited": false, "active": true,
             "threads": [thread_row(100, 100, "main"), thread_row(100, 101, "worker")],
             "top_causes": []},
            {"pid": 200, "comm": "other", "describe": "other", "exited": false, "active": true,
             "threads": [thread_row(200, 200, "loop")], "top_causes": []},
        ],
        "health": {"lost_events": 0, "samples_dropped": 0, "spans_refused": 0,
                   "spans_unread_at_exit": 0, "stacks_overflow": 0, "kernel_stack_errors": 0,
                   "no_sample_room": 0, "user_stack_ends": {}, "code_objects_read": 0,
                   "code_objects_stale": 0},
    });
    [header, a, b, c, d, e, summary]
        .iter()
        .map(Value::to_string)
        .collect()
}

/// The durations (ms) of the spans a report kept, from its --summary-json.
fn kept_ms(file: &Path, filters: &[&str]) -> (u64, u64, String) {
    let dir = tempdir::Dir::new("report-kept");
    let out = dir.path("s.json");
    let mut args = vec![
        file.to_str().unwrap(),
        "--summary-json",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(filters);
    let (code, _, stderr) = report(&args);
    assert_eq!(code, Some(0), "{filters:?}: {stderr}");
    let s = json_file(&out);
    let (mut n, mut total) = (0, 0);
    for p in s["processes"].as_array().unwrap() {
        for t in p["threads"].as_array().unwrap() {
            n += t["spans"].as_u64().unwrap();
            total += t["span_total_ns"].as_u64().unwrap();
        }
    }
    (n, total / MS, stderr)
}

fn write_lines(dir: &tempdir::Dir, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn filters_select_exactly_the_expected_spans() {
    let dir = tempdir::Dir::new("report-filters");
    let file = write_lines(&dir, "rec.jsonl", &recorded_lines());
    // (filters, spans kept, their total ms): A=64 B=128 C=256 D=512 E=1024.
    let cases: &[(&[&str], u64, u64)] = &[
        (&[], 5, 1984),
        (&["--pid", "200"], 1, 512),
        (&["--thread", "worker"], 1, 256),
        (&["--thread", "100"], 3, 64 + 128 + 1024),
        (&["--min-duration", "200ms"], 3, 256 + 512 + 1024),
        (&["--cause", "cpu"], 3, 64 + 256 + 1024),
        (&["--cause", "recvfrom"], 1, 128),
        (&["--blame", "json.loads"], 1, 256),
        (&["--blame", "fetch"], 1, 128),
        (&["--since", "2023-11-14T22:13:22.5Z"], 3, 256 + 512 + 1024),
        (&["--until", "-4.5s"], 2, 64 + 128),
        (
            &[
                "--pid",
                "100",
                "--min-duration",
                "100ms",
                "--until",
                "-2.5s",
            ],
            2,
            128 + 256,
        ),
    ];
    for (filters, n, ms) in cases {
        let (got_n, got_ms, stderr) = kept_ms(&file, filters);
        assert_eq!((got_n, got_ms), (*n, *ms), "{filters:?}");
        assert!(!stderr.contains("warning"), "{filters:?}: {stderr}");
    }
    // Without outputs: the summary and top causes on the terminal.
    let (code, stdout, _) = report(&[file.to_str().unwrap(), "--pid", "100"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("== lag summary: pid 100"), "{stdout}");
    assert!(!stdout.contains("pid 200 (other)"), "{stdout}");
    assert!(stdout.contains("top causes by total lag"), "{stdout}");
}

#[test]
fn a_truncated_file_reports_what_it_holds_with_a_warning() {
    let dir = tempdir::Dir::new("report-cut");
    let mut lines = recorded_lines();
    // Killed while writing E: no summary, half a line.
    lines.pop();
    let e = lines.pop().unwrap();
    let cut = lines.join("\n") + "\n" + &e[..e.len() / 2];
    let file = dir.path("cut.jsonl");
    std::fs::write(&file, cut).unwrap();
    let (n, ms, stderr) = kept_ms(&file, &[]);
    assert_eq!((n, ms), (4, 64 + 128 + 256 + 512));
    assert!(
        stderr.contains("warning") && stderr.contains("cut short"),
        "{stderr}"
    );

    // A file from a newer format is refused in one line.
    let mut newer = recorded_lines();
    newer[0] = newer[0].replace("\"format_version\":1", "\"format_version\":99");
    let file = write_lines(&dir, "newer.jsonl", &newer);
    let (code, _, stderr) = report(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("format 99"), "{stderr}");
}
