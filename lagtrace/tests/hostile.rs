//! Issue 10, part A: a hostile target (run as `nobody` where the attack is
//! the target's) must never hang lagtrace, leak a root-only file, forge its
//! output, or get a wrong name. Each test starts a real attacker and
//! asserts behaviour: exit in time, no raw control bytes, no secret token,
//! well-formed XML, spans present, no wrong name.
mod common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Compile a C target (frame pointers on) into `dir`.
fn gcc(dir: &tempdir::Dir, out: &str, srcs: &[&str], extra: &[&str]) -> Option<PathBuf> {
    let cc = tool_or_skip(out, &["gcc", "cc"])?;
    let path = dir.path(out);
    let status = Command::new(cc)
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-o"])
        .arg(&path)
        .args(srcs.iter().map(|s| targets_dir().join(s)))
        .args(extra)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc {srcs:?} failed");
    Some(path)
}

/// A command run as nobody, or a printed skip reason.
fn as_nobody(test: &str, program: &Path) -> Option<Command> {
    let setpriv = tool_or_skip(test, &["setpriv"])?;
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(program);
    Some(cmd)
}

/// A CPython 3.11–3.13 that nobody can run (pyenv's under /root often is
/// not reachable), or a printed skip reason.
fn python_for_nobody(test: &str) -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    candidates.extend(
        ["3.12", "3.13", "3.11"]
            .iter()
            .filter_map(|v| pyenv_python(v)),
    );
    let check = "import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12), (3, 13)))";
    for py in candidates {
        let ok = as_nobody(test, &py)
            .and_then(|mut c| c.args(["-c", check]).stderr(Stdio::null()).status().ok())
            .is_some_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("SKIP {test}: no CPython 3.11-3.13 that nobody can run");
    None
}

/// Make a temp folder usable by nobody (it holds the targets).
fn open_to_all(dir: &tempdir::Dir) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a traced run printed and wrote, raw.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// From attach to exit.
    elapsed: Duration,
    peak_rss_kb: u64,
    /// lagtrace's user + system CPU time, as last read before it exited.
    cpu: Duration,
    dir: tempdir::Dir,
}

impl Run {
    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path(name)).unwrap_or_default()
    }

    fn spans(&self) -> Vec<Value> {
        read_spans(&self.dir.path("spans.jsonl"))
    }

    fn all_output(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![
            ("stdout".to_string(), self.stdout.clone()),
            ("stderr".to_string(), self.stderr.clone()),
        ];
        for f in ["spans.jsonl", "stacks.folded", "flame.svg"] {
            out.push((f.to_string(), self.file(f)));
        }
        out
    }
}

enum Stop {
    /// `--duration` ends it.
    Duration,
    /// SIGINT this long after `on_attach` returned.
    Interrupt(Duration),
}

/// Trace `pid` with every output on, call `on_attach` once lagtrace has
/// attached, and wait at most `limit` (from attach) for it to exit; past
/// that it is killed and the test fails. Peak RSS is lagtrace's VmHWM.
fn trace(pid: u32, extra: &[&str], stop: Stop, limit: Duration, on_attach: impl FnOnce()) -> Run {
    let dir = tempdir::Dir::new("hostile");
    let mut cmd = Command::new(LAGTRACE);
    cmd.args(["--pid", &pid.to_string(), "--threshold", "50ms"])
        .args(extra)
        .arg("--spans")
        .arg(dir.path("spans.jsonl"))
        .arg("--folded")
        .arg(dir.path("stacks.folded"))
        .arg("--flamegraph")
        .arg(dir.path("flame.svg"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting lagtrace");
    let collect = |mut r: Box<dyn Read + Send>, attached: Option<mpsc::Sender<()>>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let h = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            let mut sent = false;
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut all = b.lock().unwrap();
                all.extend_from_slice(&chunk[..n]);
                if !sent && let Some(tx) = &attached {
                    let text = String::from_utf8_lossy(&all);
                    if text.contains("lagtrace: tracing") {
                        let _ = tx.send(());
                        sent = true;
                    }
                }
            }
        });
        (buf, h)
    };
    let (tx, rx) = mpsc::channel();
    let (out, h1) = collect(Box::new(child.stdout.take().unwrap()), None);
    let (err, h2) = collect(Box::new(child.stderr.take().unwrap()), Some(tx));
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "lagtrace did not attach: {}",
            String::from_utf8_lossy(&err.lock().unwrap())
        );
    }
    let t0 = Instant::now();
    on_attach();
    let t1 = Instant::now();
    let mut peak = 0;
    let mut cpu = Duration::ZERO;
    let mut interrupted = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            && let Some(kb) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        cpu = cpu_time(child.id()).unwrap_or(cpu);
        if let Stop::Interrupt(after) = stop
            && !interrupted
            && t1.elapsed() >= after
        {
            signal(child.id(), libc::SIGINT);
            interrupted = true;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t0.elapsed();
    h1.join().unwrap();
    h2.join().unwrap();
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out.lock().unwrap().clone(),
        stderr: err.lock().unwrap().clone(),
        elapsed,
        peak_rss_kb: peak,
        cpu,
        dir,
    };
    assert!(
        status.is_some(),
        "lagtrace did not exit within {limit:?} of attaching; stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

/// User + system CPU time of a process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, 12 and 13 after the comm.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Bytes a terminal would act on: C0 controls but LF, DEL, and C1 controls
/// (as UTF-8).
fn raw_controls(bytes: &[u8]) -> Vec<usize> {
    let mut at = Vec::new();
    for (i, w) in bytes.windows(2).enumerate() {
        let b = w[0];
        if (b < 0x20 && b != b'\n') || b == 0x7f || (b == 0xc2 && (0x80..0xa0).contains(&w[1])) {
            at.push(i);
        }
    }
    if let Some(&b) = bytes.last()
        && ((b < 0x20 && b != b'\n') || b == 0x7f)
    {
        at.push(bytes.len() - 1);
    }
    at
}

fn assert_terminal_clean(run: &Run) {
    for (what, bytes) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        let at = raw_controls(bytes);
        assert!(
            at.is_empty(),
            "raw control bytes in {what} at {at:?}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// The SVG is well-formed XML to a real parser (python3's xml.etree).
fn assert_valid_svg(run: &Run) {
    let Some(py) = tool_or_skip("svg check", &["python3"]) else {
        return;
    };
    let out = Command::new(py)
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
        ])
        .arg(run.dir.path("flame.svg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flame.svg is not well-formed XML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every folded line is `frames count`, with no control character.
fn assert_valid_folded(run: &Run) {
    let text = String::from_utf8(run.file("stacks.folded")).expect("folded is UTF-8");
    for line in text.lines() {
        assert!(
            !line.chars().any(char::is_control),
            "control char in {line:?}"
        );
        let (_, n) = line.rsplit_once(' ').expect("frames count");
        assert!(n.parse::<u64>().is_ok(), "{line:?}");
    }
}

fn frames_of(span: &Value) -> Vec<String> {
    span["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["frames"].as_array().into_iter().flatten())
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

/// Run the target's scenario (SIGUSR1, wait for DONE) once attached, then
/// stop lagtrace with SIGINT.
fn trace_scenario_raw(target: &mut Target, limit: Duration) -> Run {
    trace(
        target.pid,
        &[],
        Stop::Interrupt(Duration::from_millis(300)),
        limit,
        || target.run_scenario(Duration::from_secs(30)),
    )
}

#[test]
fn thread_and_symbol_names_cannot_drive_the_terminal_or_break_files() {
    if !root_or_skip("hostile names") {
        return;
    }
    let dir = tempdir::Dir::new("hostile-names");
    open_to_all(&dir);
    let Some(bin) = gcc(&dir, "hostile", &["hostile.c"], &["-ldl"]) else {
        return;
    };
    let Some(cmd) = as_nobody("hostile names", &bin) else {
        return;
    };
    let mut target = Target::start_in(cmd, &["names"]);
    let run = trace_scenario_raw(&mut target, Duration::from_secs(60));
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let spans = run.spans();
    assert!(spans.len() >= 4, "{} spans of 6 stalls", spans.len());
    // The names did reach lagtrace (JSON keeps them, escaped by serde)...
    assert!(
        spans
            .iter()
            .any(|s| s["thread"].as_str().is_some_and(|t| t.contains('\x1b')))
    );
    let jit = "\x1b]0;jit-pwned\x07";
    assert!(
        spans
            .iter()
            .any(|s| frames_of(s).iter().any(|f| f.contains(jit))),
        "the perf map (owned by the target) was read"
    );
    // ...and left for the terminal and the files only escaped.
    assert_terminal_clean(&run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("\\x1b]0;pw\\x07"), "{stdout}");
    assert_valid_svg(&run);
    assert_valid_folded(&run);
    let folded = String::from_utf8(run.file("stacks.folded")).unwrap();
    assert!(
        folded
            .lines()
            .any(|l| l.contains("\\x1b]0:jit-pwned\\x07\\x1b[2J:forged\\x0d:frame")),
        "{folded}"
    );
}

#[test]
fn python_names_cannot_forge_a_span_line() {
    if !walker_or_skip("python_names_cannot_forge_a_span_line") {
        return;
    }
    if !root_or_skip("hostile python names") {
        return;
    }
    let Some(py) = python_for_nobody("hostile python names") else {
        return;
    };
    let Some(mut cmd) = as_nobody("hostile python names", &py) else {
        return;
    };
    cmd.arg(targets_dir().join("hostile.py"));
    let mut target = Target::start_in(
        cmd,
        &["--mode", "names", "--stalls", "4", "--stall-ms", "300"],
    );
    let run = trace_scenario_raw(&mut target, Duration::from_secs(60));
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let spans = run.spans();
    assert!(spans.len() >= 3, "{} spans of 4 stalls", spans.len());
    assert!(
        spans.iter().any(|s| frames_of(s)
            .iter()
            .any(|f| f.contains("00:00:00.000  python3[1]"))),
        "the forged name was read"
    );
    // The 6000-character name is kept, cut with an ellipsis, not dropped.
    assert!(
        spans.iter().any(|s| frames_of(s)
            .iter()
            .any(|f| f.starts_with("long_xxxx") && f.contains('…'))),
        "the long name is missing"
    );
    assert_terminal_clean(&run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !stdout.lines().any(|l| l.starts_with("00:00:00.000")),
        "a forged line: {stdout}"
    );
    assert_valid_svg(&run);
    assert_valid_folded(&run);
}

#[test]
fn a_perf_map_symlinked_to_a_root_only_file_is_not_read() {
    if !root_or_skip("perf map symlink") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir::Dir::new("hostile-symlink");
    open_to_all(&dir);
    let Some(bin) = gcc(&dir, "hostile", &["hostile.c"], &["-ldl"]) else {
        return;
    };
    // A root-only secret shaped as a perf map that names every address.
    let secret_dir = tempdir::Dir::new("secret");
    std::fs::set_permissions(&secret_dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = format!(
        "SECRET{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let secret = secret_dir.path("secret.map");
    std::fs::write(&secret, format!("0 7fffffffffff {token}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(cmd) = as_nobody("perf map symlink", &bin) else {
        return;
    };
    let mut target = Target::start_in(cmd, &["perfmap-symlink", secret.to_str().unwrap()]);
    let run = trace_scenario_raw(&mut target, Duration::from_secs(60));
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.spans().len() >= 4, "spans present");
    for (what, bytes) in run.all_output() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "the secret leaked into {what}"
        );
    }
}

#[test]
fn a_fifo_perf_map_does_not_hang() {
    if !root_or_skip("perf map fifo") {
        return;
    }
    let dir = tempdir::Dir::new("hostile-fifo");
    open_to_all(&dir);
    let Some(bin) = gcc(&dir, "hostile", &["hostile.c"], &["-ldl"]) else {
        return;
    };
    let Some(cmd) = as_nobody("perf map fifo", &bin) else {
        return;
    };
    let target = Target::start_in(cmd, &["perfmap-fifo"]);
    let run = trace(
        target.pid,
        &["--duration", "3s"],
        Stop::Duration,
        Duration::from_secs(5),
        || signal(target.pid, libc::SIGUSR1),
    );
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    assert!(!run.spans().is_empty(), "spans present");
}

#[test]
fn a_sparse_2gb_perf_map_costs_bounded_time_and_memory() {
    if !root_or_skip("sparse perf map") {
        return;
    }
    let dir = tempdir::Dir::new("hostile-sparse");
    open_to_all(&dir);
    let Some(bin) = gcc(&dir, "hostile", &["hostile.c"], &["-ldl"]) else {
        return;
    };
    let Some(cmd) = as_nobody("sparse perf map", &bin) else {
        return;
    };
    let target = Target::start_in(cmd, &["perfmap-sparse"]);
    let run = trace(
        target.pid,
        &["--duration", "3s"],
        Stop::Duration,
        Duration::from_secs(5),
        || signal(target.pid, libc::SIGUSR1),
    );
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", target.pid));
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!(
        "sparse perf map: exit {:?} after attach, peak RSS {} MB",
        run.elapsed,
        run.peak_rss_kb / 1024
    );
    // Generous: lagtrace reads at most 64 MB of a perf map, keeping lines
    // of at most 8 KB.
    assert!(
        run.peak_rss_kb < 400 * 1024,
        "peak RSS {} kB",
        run.peak_rss_kb
    );
    assert!(!run.spans().is_empty(), "spans present");
}

#[test]
fn a_fifo_mounted_over_a_mapped_library_does_not_hang() {
    if !root_or_skip("fifo over library") {
        return;
    }
    let dir = tempdir::Dir::new("hostile-fifo-lib");
    open_to_all(&dir);
    let Some(bin) = gcc(&dir, "hostile", &["hostile.c"], &["-ldl"]) else {
        return;
    };
    let Some(lib) = gcc(
        &dir,
        "libspin.so",
        &["dlswap_lib.c"],
        &["-shared", "-fPIC", "-DSPIN=spin_in_lib"],
    ) else {
        return;
    };
    let Some(unshare) = tool_or_skip("fifo over library", &["unshare"]) else {
        return;
    };
    let Some(mut cmd) = as_nobody("fifo over library", &unshare) else {
        return;
    };
    // Its own user and mount namespace, where it may mount over its files.
    cmd.args(["-Urm"]).arg(&bin);
    let target = Target::start_in(cmd, &["fifo-over-lib", lib.to_str().unwrap()]);
    let run = trace(
        target.pid,
        &["--duration", "3s"],
        Stop::Duration,
        Duration::from_secs(5),
        || signal(target.pid, libc::SIGUSR1),
    );
    let _ = std::fs::remove_file(format!("/tmp/fifo-{}", target.pid));
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let spans = run.spans();
    assert!(!spans.is_empty(), "spans present");
    // The mapped file itself (not the FIFO over its path) names the code.
    let named = spans
        .iter()
        .any(|s| frames_of(s).iter().any(|f| f.starts_with("spin_in_lib")));
    println!(
        "fifo over library: exit {:?} after attach, spin_in_lib named: {named}",
        run.elapsed
    );
}

#[test]
fn a_cyclic_python_frame_chain_ends_the_walk_in_time() {
    if !walker_or_skip("a_cyclic_python_frame_chain_ends_the_walk_in_time") {
        return;
    }
    if !root_or_skip("cyclic python frames") {
        return;
    }
    let Some(py) = python_for_nobody("cyclic python frames") else {
        return;
    };
    for stop in [Stop::Duration, Stop::Interrupt(Duration::from_millis(1500))] {
        let Some(mut cmd) = as_nobody("cyclic python frames", &py) else {
            return;
        };
        cmd.arg(targets_dir().join("hostile.py"));
        let target = Target::start_in(
            cmd,
            &["--mode", "cyclic", "--stalls", "3", "--stall-ms", "2500"],
        );
        let (extra, limit): (&[&str], _) = match stop {
            Stop::Duration => (&["--duration", "3s"], Duration::from_secs(5)),
            Stop::Interrupt(after) => (&[], after + Duration::from_secs(2)),
        };
        let run = trace(target.pid, extra, stop, limit, || {
            signal(target.pid, libc::SIGUSR1)
        });
        assert_eq!(
            run.code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let spans = run.spans();
        assert!(!spans.is_empty(), "spans present");
        let truncated = spans.iter().any(|s| {
            frames_of(s)
                .iter()
                .any(|f| f.starts_with("[python frames truncated"))
        });
        assert!(
            truncated,
            "no stack marked truncated; stderr: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        println!("cyclic python frames: exit {:?} after attach", run.elapsed);
    }
}

#[test]
fn a_library_swapped_at_the_same_address_never_gets_the_old_name() {
    if !root_or_skip("dlopen swap") {
        return;
    }
    let dir = tempdir::Dir::new("dlswap");
    let Some(bin) = gcc(&dir, "dlswap", &["dlswap.c"], &["-ldl"]) else {
        return;
    };
    let mut libs = Vec::new();
    for l in ["A", "B"] {
        let name = format!("lib{l}.so");
        let def = format!("-DSPIN=spin_in_lib{l}");
        let Some(p) = gcc(&dir, &name, &["dlswap_lib.c"], &["-shared", "-fPIC", &def]) else {
            return;
        };
        libs.push(p.to_str().unwrap().to_string());
    }
    // Both samplers: the tick's timing (the default) made a swap between
    // the read of the maps and the open of the mapped file
    // (`untrusted::open_mapping`) come in about 1 run in 4, the clock's
    // (`-F 499`) in about 1 in 20.
    for sampler in [&[][..], &["-F", "499"][..]] {
        swap_is_named_right(&bin, &libs, sampler);
    }
}

/// One trace of the dlswap target with lagtrace's `extra` flags.
fn swap_is_named_right(bin: &Path, libs: &[String], extra: &[&str]) {
    let mut target = Target::start(bin, &[&libs[0], &libs[1]]);
    let run = trace(
        target.pid,
        extra,
        Stop::Interrupt(Duration::from_millis(300)),
        Duration::from_secs(60),
        || target.run_scenario(Duration::from_secs(30)),
    );
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let truth = read_jsonl(&target.truth);
    let addrs: std::collections::HashSet<u64> =
        truth.iter().filter_map(|t| t["addr"].as_u64()).collect();
    let spans = run.spans();
    let (mut matched, mut wrong, mut right) = (0, 0, 0);
    for t in &truth {
        let label = t["label"].as_str().unwrap();
        let stall = Truth::from_json(t);
        let other = if label == "A" {
            "spin_in_libB"
        } else {
            "spin_in_libA"
        };
        let own = if label == "A" {
            "spin_in_libA"
        } else {
            "spin_in_libB"
        };
        for s in matching_span(&spans, &stall) {
            matched += 1;
            for st in s["stacks"].as_array().into_iter().flatten() {
                let frames = frames_of(st);
                let n = st["samples"].as_u64().unwrap_or(0);
                if frames.iter().any(|f| f.starts_with(other)) {
                    wrong += n;
                }
                if frames.iter().any(|f| f.starts_with(own)) {
                    right += n;
                }
            }
        }
    }
    println!(
        "dlopen swap {extra:?}: {} stalls, {} distinct load addresses, {matched} matching spans, samples named right {right}, wrong {wrong}",
        truth.len(),
        addrs.len()
    );
    assert!(
        matched >= truth.len() - 2,
        "spans present: {matched} of {}",
        truth.len()
    );
    assert_eq!(
        wrong, 0,
        "{extra:?}: samples given the other library's name"
    );
}

#[test]
fn python_frames_of_a_process_with_500_threads_are_found_cheaply() {
    if !walker_or_skip("python_frames_of_a_process_with_500_threads_are_found_cheaply") {
        return;
    }
    if !root_or_skip("500 python threads") {
        return;
    }
    let Some(py) = pyenv_python("3.12") else {
        eprintln!("SKIP 500 python threads: no pyenv CPython 3.12");
        return;
    };
    let mut cmd = Command::new(py);
    cmd.arg(targets_dir().join("hostile.py"));
    let target = Target::start_in(
        cmd,
        &["--mode", "threads", "--stalls", "12", "--stall-ms", "300"],
    );
    let run = trace(
        target.pid,
        &["--duration", "5s"],
        Stop::Duration,
        Duration::from_secs(8),
        || signal(target.pid, libc::SIGUSR1),
    );
    assert_eq!(
        run.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let spans = run.spans();
    assert!(spans.len() >= 8, "spans present: {}", spans.len());
    // The loop runs in the main thread, the oldest, so its state is last of
    // 501 in the interpreter's list: its frames must still be found.
    let named = spans
        .iter()
        .filter(|s| frames_of(s).iter().any(|f| f.starts_with("stall (")))
        .count();
    assert!(
        named * 10 >= spans.len() * 9,
        "{named} of {} spans have the loop's Python frames",
        spans.len()
    );
    let share = run.cpu.as_secs_f64() / run.elapsed.as_secs_f64();
    println!(
        "500 python threads: lagtrace used {:?} of CPU over {:?} ({:.0}%); {}",
        run.cpu,
        run.elapsed,
        share * 100.0,
        String::from_utf8_lossy(&run.stderr)
            .lines()
            .filter(|l| l.contains("python:"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    // The bug was 63% (a py-spy read per sample walked every thread). The
    // kernel now walks at most 4096 states once per thread. Generous, for
    // a busy host.
    assert!(share < 0.45, "lagtrace used {:.0}% of a CPU", share * 100.0);
}
