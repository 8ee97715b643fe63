//! Issue 16's target selection: `--name` and `--cgroup` trace processes
//! that start after lagtrace, from their exec, within 1 s of their first
//! loop iteration; their stalls are reported against the target's truth.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;

const THRESHOLD_MS: u64 = 50;
/// The issue's bar: a matching process is traced within this long of its
/// first loop iteration (READY is printed from inside the running loop).
const ATTACH_BAR: Duration = Duration::from_secs(1);

/// Trigger the stalls `ATTACH_BAR` after the loop started, stop lagtrace,
/// and check every stall against the truth and that the spans are the
/// target's.
fn check_traced(lt: Lagtrace, target: &mut Target, name: &str) {
    std::thread::sleep(ATTACH_BAR);
    target.run_scenario(patience(Duration::from_secs(60)));
    // DONE is printed inside the last stall's iteration.
    std::thread::sleep(Duration::from_millis(200));
    let fin = lt.stop();
    assert_eq!(fin.code, Some(0), "lagtrace failed: {:?}", fin.stderr);
    assert!(
        fin.stderr
            .iter()
            .any(|l| l.contains(&format!("tracing pid {}", target.pid))),
        "no line says pid {} is traced: {:?}",
        target.pid,
        fin.stderr
    );
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 3, "the target's truth: {stalls:?}");
    let errors = assert_stalls_witnessed(&fin, &stalls, THRESHOLD_MS);
    assert_eq!(errors.len(), 3, "every stall over the threshold is a span");
    for s in &fin.spans {
        assert_eq!(s["pid"].as_u64(), Some(u64::from(target.pid)), "{s}");
    }
    report(name, &errors);
}

const STALL_ARGS: [&str; 4] = ["--mode", "cpu", "--stalls-ms", "80,120,300"];

#[test]
fn name_traces_a_target_started_later() {
    if !root_or_skip("name_traces_a_target_started_later") {
        return;
    }
    let Some(py) = python3_or_skip("name_traces_a_target_started_later") else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let lt = Lagtrace::attach(&["--name", r"asyncio_stalls\.py", "--threshold", "50ms"]);
    // The target starts 2 s after lagtrace: found at its exec, not at start.
    std::thread::sleep(Duration::from_secs(2));
    let mut args = vec![script.to_str().unwrap()];
    args.extend(STALL_ARGS);
    let mut target = Target::start(&py, &args);
    check_traced(lt, &mut target, "name_traces_a_target_started_later");
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` or, on a hybrid host,
/// `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .min_by_key(|p| p.as_os_str().len())
}

/// A cgroup made by the test, removed (once empty) on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

#[test]
fn cgroup_traces_a_target_inside() {
    if !root_or_skip("cgroup_traces_a_target_inside") {
        return;
    }
    let Some(py) = python3_or_skip("cgroup_traces_a_target_inside") else {
        return;
    };
    let Some(root) = cgroup2_root() else {
        eprintln!("SKIP cgroup_traces_a_target_inside: no cgroup v2 hierarchy mounted");
        return;
    };
    let name = format!("lagtrace-test-{}", std::process::id());
    let cg = Cgroup(root.join(&name));
    std::fs::create_dir(&cg.0).expect("creating a cgroup");
    // Relative to the v2 root, as /proc/PID/cgroup shows it.
    let lt = Lagtrace::attach(&["--cgroup", &name, "--threshold", "50ms"]);
    // The shell moves itself into the cgroup, then becomes the target.
    let procs: &Path = &cg.0.join("cgroup.procs");
    let script = targets_dir().join("asyncio_stalls.py");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(procs)
        .arg(&py)
        .arg(&script)
        .args(STALL_ARGS);
    let mut target = Target::start_in(cmd, &[]);
    let in_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", target.pid)).unwrap();
    assert!(in_cg.contains(&name), "target not in the cgroup: {in_cg}");
    check_traced(lt, &mut target, "cgroup_traces_a_target_inside");
    drop(target);
}

#[test]
fn max_targets_refuses_with_a_warning() {
    if !root_or_skip("max_targets_refuses_with_a_warning") {
        return;
    }
    let Some(py) = python3_or_skip("max_targets_refuses_with_a_warning") else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let start = || Target::start(&py, &[script.to_str().unwrap()]);
    let (a, b) = (start(), start());
    let fin = Lagtrace::attach(&[
        "--name",
        r"asyncio_stalls\.py",
        "--max-targets",
        "1",
        "--duration",
        "1s",
    ])
    .wait(patience(Duration::from_secs(30)));
    let traced: Vec<u32> = [a.pid, b.pid]
        .into_iter()
        .filter(|p| {
            fin.stderr
                .iter()
                .any(|l| l.contains(&format!("tracing pid {p} ")))
        })
        .collect();
    assert_eq!(traced.len(), 1, "one of two traced: {:?}", fin.stderr);
    assert!(
        fin.stderr
            .iter()
            .any(|l| l.contains("--max-targets") && l.contains("not traced")),
        "a warning names the flag: {:?}",
        fin.stderr
    );
}
