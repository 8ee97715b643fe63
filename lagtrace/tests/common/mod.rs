//! Harness for the integration tests: real targets, the real lagtrace
//! binary, real BPF. A test that lacks a prerequisite (root, a Python, node)
//! prints `SKIP: <reason>` and returns; it never passes silently by faking.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod witness;

pub const LAGTRACE: &str = env!("CARGO_BIN_EXE_lagtrace");

pub fn targets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets")
}

/// True when running as root; otherwise prints why the test skips.
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIP {test}: needs root to load BPF programs (run `sudo -E cargo xtask test`)");
    false
}

/// Whether this kernel can run lagtrace's stack walkers (`.eh_frame`
/// unwinding and Python frames need `bpf_loop`, Linux 5.17+); else a
/// printed skip reason. Older kernels get frame-pointer stacks only.
pub fn walker_or_skip(test: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if version >= (5, 17) {
        return true;
    }
    eprintln!(
        "SKIP {test}: Python frames and .eh_frame unwinding need bpf_loop (Linux 5.17+); this kernel is {}",
        release.trim()
    );
    false
}

/// A program on PATH or at a path, or a printed skip reason.
pub fn tool_or_skip(test: &str, candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() && p.exists() {
            return Some(p.to_path_buf());
        }
        if let Ok(out) = Command::new("which").arg(c).output()
            && out.status.success()
        {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    eprintln!("SKIP {test}: none of {candidates:?} is installed");
    None
}

/// CPython `version` from pyenv, or a loud SKIP naming `test`.
pub fn pyenv_python_or_skip(test: &str, version: &str) -> Option<PathBuf> {
    let p = pyenv_python(version);
    if p.is_none() {
        eprintln!("SKIP {test}: no pyenv CPython {version}");
    }
    p
}

/// A Python 3 for the asyncio targets: pyenv's 3.11, else the system's
/// `python3`; or a loud SKIP naming `test`.
pub fn python3_or_skip(test: &str) -> Option<PathBuf> {
    pyenv_python("3.11").or_else(|| tool_or_skip(test, &["python3"]))
}

/// The python of a pyenv version, e.g. "3.12".
pub fn pyenv_python(version_prefix: &str) -> Option<PathBuf> {
    let root = std::env::var("PYENV_ROOT")
        .unwrap_or_else(|_| format!("{}/.pyenv", std::env::var("HOME").unwrap_or_default()));
    let mut versions: Vec<PathBuf> = std::fs::read_dir(format!("{root}/versions"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{version_prefix}."))
        })
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn lines_of<R: Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// A target program speaking the READY / SIGUSR1 / DONE protocol.
pub struct Target {
    pub child: Child,
    pub pid: u32,
    pub truth: PathBuf,
    stdout: mpsc::Receiver<String>,
    _dir: tempdir::Dir,
}

pub mod tempdir {
    use std::path::PathBuf;

    /// A temporary folder removed on drop.
    #[derive(Debug)]
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "lagtrace-test-{tag}-{}-{}",
                std::process::id(),
                rand()
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    fn rand() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Target {
    /// Start `program args… --truth FILE` and wait for `READY`.
    pub fn start(program: &Path, args: &[&str]) -> Target {
        Self::start_in(Command::new(program), args)
    }

    pub fn start_in(mut cmd: Command, args: &[&str]) -> Target {
        let dir = tempdir::Dir::new("target");
        let truth = dir.path("truth.jsonl");
        cmd.args(args)
            .arg("--truth")
            .arg(&truth)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdout = lines_of(child.stdout.take().expect("piped"));
        let mut seen = Vec::new();
        let ready = wait_line(
            &stdout,
            |l| l.starts_with("READY"),
            patience(Duration::from_secs(30)),
            &mut seen,
        )
        .unwrap_or_else(|| panic!("{cmd:?} never printed READY; saw {seen:?}"));
        let pid: u32 = ready
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("READY <pid>");
        Target {
            child,
            pid,
            truth,
            stdout,
            _dir: dir,
        }
    }

    /// Start a target as pid 1 of a new PID namespace (`unshare --pid
    /// --fork --mount-proc`), and point `pid` at its host pid: the child of
    /// the unshare process.
    pub fn start_in_pidns(program: &Path, args: &[&str]) -> Option<Target> {
        let unshare = tool_or_skip("pid namespace", &["unshare"])?;
        let mut cmd = Command::new(unshare);
        cmd.args(["--pid", "--fork", "--mount-proc"]).arg(program);
        let mut t = Self::start_in(cmd, args);
        let unshare_pid = t.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                .unwrap_or_default();
        t.pid = children.split_whitespace().next()?.parse().ok()?;
        Some(t)
    }

    /// Send SIGUSR1 and wait until the target prints DONE.
    pub fn run_scenario(&mut self, timeout: Duration) {
        signal(self.pid, libc::SIGUSR1);
        let mut seen = Vec::new();
        wait_line(&self.stdout, |l| l == "DONE", timeout, &mut seen).unwrap_or_else(|| {
            panic!(
                "target {} did not finish its scenario in {timeout:?}; saw {seen:?}",
                self.pid
            )
        });
    }

    /// Stall lines of the truth file.
    pub fn stalls(&self) -> Vec<Truth> {
        read_jsonl(&self.truth)
            .into_iter()
            .filter(|v| v["kind"] == "stall")
            .map(|v| Truth::from_json(&v))
            .collect()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        signal(self.pid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: i32) {
    unsafe { libc::kill(pid as i32, sig) };
}

#[derive(Debug, Clone)]
pub struct Truth {
    pub label: String,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// When the target's wait returned before the stall, by its own clock,
    /// where the target writes it (`c_epoll_loop`): a third witness of
    /// where the iteration began, for a failure message.
    pub woke_ns: Option<u64>,
}

impl Truth {
    /// A `{"kind":"stall",…}` line of a truth file.
    pub fn from_json(v: &Value) -> Self {
        Truth {
            label: v["label"].as_str().unwrap_or("").to_string(),
            tid: v["tid"].as_u64().unwrap_or(0) as u32,
            start_ns: v["start_ns"].as_u64().expect("start_ns"),
            end_ns: v["end_ns"].as_u64().expect("end_ns"),
            woke_ns: v["woke_ns"].as_u64(),
        }
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// The frame names of one stack of a span, outermost first.
pub fn frames_of(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The spans of a `--spans` file: its lines without a `record` field (the
/// header and the summary records have one).
pub fn read_spans(path: &Path) -> Vec<Value> {
    read_jsonl(path)
        .into_iter()
        .filter(|v| v.get("record").is_none())
        .collect()
}

/// The record of a `--spans` file with `"record": kind` (`header`, `summary`).
pub fn read_record(path: &Path, kind: &str) -> Option<Value> {
    read_jsonl(path).into_iter().find(|v| v["record"] == kind)
}

/// The on-CPU samples per second of a finished trace, and what clocked
/// them (`tick`, `clock`), from the header of its `--spans` file.
pub fn sampling_of(fin: &Finished) -> (f64, String) {
    let header = read_record(&fin.dir.path("spans.jsonl"), "header")
        .unwrap_or_else(|| panic!("no header record in {:?}", fin.dir.path("spans.jsonl")));
    (
        header["frequency_hz"].as_f64().expect("frequency_hz"),
        header["sampler"].as_str().expect("sampler").to_string(),
    )
}

/// A running lagtrace.
pub struct Lagtrace {
    pub child: Child,
    pub dir: tempdir::Dir,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
    witness: Option<witness::Recording>,
}

/// What lagtrace printed and wrote.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub spans: Vec<Value>,
    pub dir: tempdir::Dir,
    /// The kernel's own record of every thread's epoll and futex calls while
    /// lagtrace ran (see [`witness`]), when tracefs could take one.
    pub witness: Option<witness::Witness>,
}

impl Lagtrace {
    /// Start lagtrace with `--spans` into a temp folder and wait until it has
    /// attached.
    pub fn attach(args: &[&str]) -> Lagtrace {
        Self::attach_with(args, true)
    }

    /// As [`Lagtrace::attach`]; `spans`: add `--spans` into the temp folder
    /// (a test that names its own outputs passes false).
    pub fn attach_with(args: &[&str], spans: bool) -> Lagtrace {
        Self::attach_wrapped(&[], args, spans)
    }

    /// As [`Lagtrace::attach_with`], started through `wrapper` (a command
    /// that execs the rest of its arguments, such as `prlimit …`).
    pub fn attach_wrapped(wrapper: &[&str], args: &[&str], spans: bool) -> Lagtrace {
        let dir = tempdir::Dir::new("lagtrace");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(LAGTRACE),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(LAGTRACE);
                c
            }
        };
        cmd.args(args);
        if spans {
            cmd.arg("--spans").arg(dir.path("spans.jsonl"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut witness = witness::Recording::start_or_note();
        let mut child = cmd.spawn().expect("starting lagtrace");
        let stdout = lines_of::<ChildStdout>(child.stdout.take().expect("piped"));
        let stderr = lines_of::<ChildStderr>(child.stderr.take().expect("piped"));
        let mut seen = Vec::new();
        if wait_line(
            &stderr,
            |l| l.starts_with("lagtrace: tracing"),
            patience(Duration::from_secs(30)),
            &mut seen,
        )
        .is_none()
        {
            let _ = child.kill();
            panic!("lagtrace did not attach: {seen:?}");
        }
        if let Some(w) = witness.as_mut() {
            w.mark_attached();
        }
        Lagtrace {
            child,
            dir,
            stdout,
            stderr,
            stderr_seen: seen,
            witness,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stdout line matching `pred`.
    pub fn wait_stdout(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let mut seen = Vec::new();
        wait_line(&self.stdout, pred, timeout, &mut seen)
    }

    /// Stop with SIGINT (as Ctrl-C) and collect everything.
    pub fn stop(self) -> Finished {
        signal(self.child.id(), libc::SIGINT);
        self.wait(patience(Duration::from_secs(60)))
    }

    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("wait") {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("lagtrace did not exit within {timeout:?}");
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let drain = |rx: &mpsc::Receiver<String>| {
            let mut v = Vec::new();
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                v.push(l);
            }
            v
        };
        let stdout = drain(&self.stdout);
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        stderr.extend(drain(&self.stderr));
        let spans = read_spans(&self.dir.path("spans.jsonl"));
        let witness = self
            .witness
            .take()
            .and_then(witness::Recording::finish_or_note);
        Finished {
            code: status.code(),
            stdout,
            stderr,
            spans,
            dir: self.dir,
            witness,
        }
    }
}

/// Trace one scenario: lagtrace (`--pid <target> --threshold 50ms` and
/// `extra`) attached to `target`, SIGUSR1, wait for DONE, stop lagtrace
/// with SIGINT. Asserts lagtrace exited cleanly.
pub fn trace_scenario(target: &mut Target, extra: &[&str]) -> Finished {
    trace_scenario_wrapped(target, &[], extra)
}

/// As [`trace_scenario`], with lagtrace started through `wrapper` (see
/// [`Lagtrace::attach_wrapped`]).
pub fn trace_scenario_wrapped(target: &mut Target, wrapper: &[&str], extra: &[&str]) -> Finished {
    let pid = target.pid.to_string();
    let mut args = vec!["--pid", pid.as_str(), "--threshold", "50ms"];
    args.extend_from_slice(extra);
    let lt = Lagtrace::attach_wrapped(wrapper, &args, true);
    target.run_scenario(patience(Duration::from_secs(60)));
    // DONE is printed inside the last stall's iteration: let the loop get
    // back to its wait, so that span ends before lagtrace does.
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    fin
}

/// Build a C target of `tests/targets` into `dir` with gcc (frame pointers,
/// -pthread), or print why the test skips.
pub fn build_c_target(test: &str, source: &str, dir: &tempdir::Dir) -> Option<PathBuf> {
    let gcc = tool_or_skip(test, &["gcc", "cc"])?;
    let out = dir.path(source.trim_end_matches(".c"));
    let status = Command::new(gcc)
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&out)
        .arg(targets_dir().join(source))
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed on {source}");
    Some(out)
}

/// Run lagtrace to completion with the given args (for error cases).
pub fn run_lagtrace(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(LAGTRACE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running lagtrace");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The span that overlaps a stall the most, if any.
pub fn matching_span<'a>(spans: &'a [Value], t: &Truth) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| {
            let start = s["start_unix_ns"].as_u64().unwrap_or(0);
            let end = start + s["duration_ns"].as_u64().unwrap_or(0);
            (t.tid == 0 || s["tid"].as_u64() == Some(u64::from(t.tid)))
                && start < t.end_ns
                && end > t.start_ns
        })
        .collect()
}

/// Checks issue 2's accuracy bar for every stall at least 5 ms over the
/// threshold: exactly one span, duration within -1 ms / +3 ms of the truth.
/// Returns the errors (span - truth, in ms) for the report.
///
/// A span is the whole loop iteration, the stall is part of it: when the
/// host is busy, the target can be preempted between the epoll return and
/// the stall, or between the stall and the next epoll call. That wait is in
/// the span's `runqueue_ns` (measured by the kernel), not in the target's
/// own truth window, so it widens the bar by exactly that much. On a quiet
/// host it is near zero and the bar is the plain -1/+3 ms.
///
/// In a guest on an emulated CPU (`cargo xtask vmtest` under TCG) the bar
/// widens by `LAGTRACE_TEST_EMULATION_SLACK_MS`: the loop's own code
/// between the target's clock reads and its epoll calls runs tens of times
/// slower there, and that time is in the span but not in the truth window.
pub fn assert_stalls_reported(spans: &[Value], stalls: &[Truth], threshold_ms: u64) -> Vec<f64> {
    note_emulation();
    reported_stalls(spans, stalls, threshold_ms)
        .map(|(span, t)| against_truth(span, t))
        .collect()
}

/// As [`assert_stalls_reported`], with the kernel's own records of the
/// traced threads' wait calls as a second witness (see [`witness`]). Where
/// the span's thread made wait calls while recording, the span must begin
/// at a wait's return (or, for a thread lagtrace found asleep at attach,
/// inside that wait) and end at a wait's entry (or inside an epoll call:
/// `--attach exit-tp` hooks no entries and ends where the thread falls
/// asleep in it, and `fentry` hooks the wait function, which a thread can
/// reach well after the syscall's entry), with no epoll return in between;
/// it must also cover the
/// stall (-1 ms). The loop's own work around the stall is then measured by
/// those records instead of allowed for by the truth bar's +3 ms. Without a
/// witness, the truth bar.
pub fn assert_stalls_witnessed(fin: &Finished, stalls: &[Truth], threshold_ms: u64) -> Vec<f64> {
    assert_spans_witnessed(&fin.spans, fin.witness.as_ref(), stalls, threshold_ms)
}

/// As [`assert_stalls_witnessed`], for spans read some other way (rotated
/// files, a filtered list, a lagtrace not started by [`Lagtrace`]).
pub fn assert_spans_witnessed(
    spans: &[Value],
    witness: Option<&witness::Witness>,
    stalls: &[Truth],
    threshold_ms: u64,
) -> Vec<f64> {
    let Some(w) = witness else {
        return assert_stalls_reported(spans, stalls, threshold_ms);
    };
    note_emulation();
    reported_stalls(spans, stalls, threshold_ms)
        .map(|(span, t)| against_witness(span, t, w))
        .collect()
}

/// How far a span's boundary may lie from the wait call that makes it. The
/// two read the monotonic clock at the same tracepoint hits, but this
/// kernel's syscall tracepoints may sleep, so a busy host can preempt the
/// thread between lagtrace's hook and ftrace's; an emulated CPU runs both
/// far slower.
pub fn witness_tolerance_ns() -> u64 {
    if emulated() { 3_000_000 } else { 1_000_000 }
}

fn note_emulation() {
    let slack_ms = emulation_slack_ms();
    if slack_ms > 0.0 {
        eprintln!("NOTE emulated CPU: the accuracy bar widens by {slack_ms} ms");
    }
}

/// Each stall long enough to be checked, with its one span.
fn reported_stalls<'a>(
    spans: &'a [Value],
    stalls: &'a [Truth],
    threshold_ms: u64,
) -> impl Iterator<Item = (&'a Value, &'a Truth)> {
    stalls
        .iter()
        .filter(move |t| t.duration_ns() >= (threshold_ms + 5) * 1_000_000)
        .map(move |t| {
            let found = matching_span(spans, t);
            assert_eq!(
                found.len(),
                1,
                "stall {t:?} should be reported exactly once; got {found:?}"
            );
            (found[0], t)
        })
}

/// Nanosecond field `k` of a span, in ms.
fn ms_of(span: &Value, k: &str) -> f64 {
    span[k].as_u64().unwrap_or(0) as f64 / 1e6
}

/// One span against the witness; see [`assert_stalls_witnessed`]. Returns
/// span - truth in ms, as [`against_truth`].
fn against_witness(span: &Value, t: &Truth, w: &witness::Witness) -> f64 {
    let tid = span["tid"].as_u64().unwrap() as u32;
    let tol = witness_tolerance_ns();
    let start = span["start_unix_ns"].as_u64().unwrap();
    if !w.saw(tid) || start < w.since() + tol {
        eprintln!(
            "NOTE {}: tid {tid} made no wait call while recorded, or the span began before \
             the recording; held to the truth bar",
            t.label
        );
        return against_truth(span, t);
    }
    let end = start + span["duration_ns"].as_u64().unwrap();
    let err_ms = (end - start) as f64 / 1e6 - t.duration_ns() as f64 / 1e6;
    let start_err_ms = (start as f64 - t.start_ns as f64) / 1e6;
    let seen = || {
        let from = start.min(t.start_ns) - 2_000_000;
        let rel = |x: u64| (x as f64 - from as f64) / 1e6;
        // The waits' window reaches back past the previous iteration's
        // (a tick of up to 100 ms), and the count of every thread's
        // records in the span tells a silent recording from a silent
        // thread.
        let back = from.saturating_sub(250_000_000);
        let woke = t
            .woke_ns
            .map(|ns| format!("; the target's clock at its wait's return: {:+.3}", rel(ns)))
            .unwrap_or_default();
        format!(
            "span {:+.3}..{:+.3} ms, stall {:+.3}..{:+.3}{woke}; waits of tid {tid} (ms): {}; \
             records of all threads in the span: {}",
            rel(start),
            rel(end),
            rel(t.start_ns),
            rel(t.end_ns),
            w.around(tid, back, end + 2_000_000, from),
            w.records_between(start, end)
        )
    };
    // A thread found asleep at attach begins at its switch onto a CPU,
    // inside the wait it was found in.
    assert!(
        w.returned_near(tid, start, tol) || w.in_a_wait_from_before_attach(tid, start),
        "stall {}: the span does not begin at a wait's return: {}",
        t.label,
        seen()
    );
    assert!(
        w.waiting_near(tid, end, tol),
        "stall {}: the span does not end at a wait: {}",
        t.label,
        seen()
    );
    assert_eq!(
        w.epoll_returns(tid, start + tol, end.saturating_sub(tol)),
        0,
        "stall {}: the span runs over an epoll return: {}",
        t.label,
        seen()
    );
    assert!(
        err_ms >= -1.0 && start_err_ms <= 1.0,
        "stall {}: the span does not cover the stall: {}",
        t.label,
        seen()
    );
    if err_ms > 3.0 {
        eprintln!(
            "NOTE {}: the loop's own work outside the stall: {err_ms:+.3} ms, between \
             witnessed waits (started {start_err_ms:+.3} ms from the stall; on-CPU {:.3}, \
             off-CPU {:.3}, runqueue {:.3} ms)",
            t.label,
            ms_of(span, "on_cpu_ns"),
            ms_of(span, "off_cpu_ns"),
            ms_of(span, "runqueue_ns"),
        );
    }
    err_ms
}

/// The truth bar of [`assert_stalls_reported`] for one span. Returns
/// span - truth in ms.
fn against_truth(span: &Value, t: &Truth) -> f64 {
    let d = span["duration_ns"].as_u64().unwrap() as f64;
    let err_ms = (d - t.duration_ns() as f64) / 1e6;
    let waited_ms = ms_of(span, "runqueue_ns") + emulation_slack_ms();
    // Where the excess lies (before the stall began or after it ended)
    // and how the span split its time, so a miss says what to look at.
    let start_err_ms = (span["start_unix_ns"].as_u64().unwrap() as f64 - t.start_ns as f64) / 1e6;
    if err_ms > 3.0 {
        eprintln!(
            "NOTE {}: {err_ms:+.3} ms over the truth with {waited_ms:.3} ms spent waiting \
             for a CPU (started {start_err_ms:+.3} ms from the stall; on-CPU {:.3}, \
             off-CPU {:.3} ms)",
            t.label,
            ms_of(span, "on_cpu_ns"),
            ms_of(span, "off_cpu_ns"),
        );
    }
    assert!(
        (-1.0..=3.0 + waited_ms).contains(&err_ms),
        "stall {} lasted {:.3} ms, span says {:.3} ms (error {err_ms:+.3} ms: \
         started {:+.3} ms from the stall, ended {:+.3} ms from it; \
         on-CPU {:.3}, off-CPU {:.3}, runqueue {:.3} ms)",
        t.label,
        t.duration_ns() as f64 / 1e6,
        d / 1e6,
        start_err_ms,
        start_err_ms + err_ms,
        ms_of(span, "on_cpu_ns"),
        ms_of(span, "off_cpu_ns"),
        ms_of(span, "runqueue_ns"),
    );
    assert!(
        (-3.0 - waited_ms..=1.0).contains(&start_err_ms),
        "stall {} start off by {start_err_ms:+.3} ms",
        t.label
    );
    err_ms
}

/// Whether the tests run in a guest on an emulated CPU (`cargo xtask
/// vmtest` under TCG), where the loop's own code runs tens of times slower.
pub fn emulated() -> bool {
    emulation_slack_ms() > 0.0
}

/// How long to wait for an event that takes `d` on real hardware: an
/// emulated CPU starts interpreters and verifies BPF programs tens of times
/// slower. Waits only; no timing is asserted with it.
pub fn patience(d: Duration) -> Duration {
    if emulated() { d * 8 } else { d }
}

/// See [`assert_stalls_reported`]; 0 on real hardware.
fn emulation_slack_ms() -> f64 {
    std::env::var("LAGTRACE_TEST_EMULATION_SLACK_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

pub fn report(name: &str, errors: &[f64]) {
    if errors.is_empty() {
        return;
    }
    let max = errors.iter().cloned().fold(f64::MIN, f64::max);
    let min = errors.iter().cloned().fold(f64::MAX, f64::min);
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    eprintln!(
        "ACCURACY {name}: {} stalls, duration error min {min:+.3} ms, mean {mean:+.3} ms, max {max:+.3} ms",
        errors.len()
    );
}
