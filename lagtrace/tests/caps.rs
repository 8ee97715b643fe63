//! Issue 16's least privilege: lagtrace run as README's "Running it for a
//! day" says, as a non-root uid with only CAP_BPF, CAP_PERFMON,
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (tracefs is root-only, mode
//! 0700, on most hosts), traces a root-owned Python target with its frames,
//! and reports its stalls against the truth.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// The capability set README documents (setpriv names).
const CAPS: &str = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";
/// `nobody`.
const UID: &str = "65534";

#[test]
fn runs_with_only_the_documented_capabilities() {
    let test = "runs_with_only_the_documented_capabilities";
    if !root_or_skip(test) {
        return;
    }
    let Some(setpriv) = tool_or_skip(test, &["setpriv"]) else {
        return;
    };
    let py = pyenv_python("3.11")
        .or_else(|| tool_or_skip("python", &["python3"]))
        .expect("a python3");
    let script = targets_dir().join("asyncio_stalls.py");
    let mut target = Target::start(
        &py,
        &[
            script.to_str().unwrap(),
            "--mode",
            "cpu",
            "--stalls-ms",
            "100,200",
        ],
    );
    let dir = tempdir::Dir::new("caps");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let spans = dir.path("spans.jsonl");
    let log = dir.path("stderr.txt");
    let recording = witness::Recording::start_or_note();
    let mut lt = Command::new(setpriv)
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            &format!("--inh-caps=-all,{CAPS}"),
            &format!("--ambient-caps=-all,{CAPS}"),
            &format!("--bounding-set=-all,{CAPS}"),
            LAGTRACE,
            "--pid",
            &target.pid.to_string(),
            "--threshold",
            "50ms",
            "--spans",
            spans.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting setpriv");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let until = Instant::now() + patience(Duration::from_secs(30));
    while !stderr().contains("lagtrace: tracing") {
        if let Ok(Some(status)) = lt.try_wait() {
            panic!("lagtrace failed with only {CAPS}: {status}: {}", stderr());
        }
        assert!(
            Instant::now() < until,
            "lagtrace did not attach: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    target.run_scenario(patience(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    signal(lt.id(), libc::SIGINT);
    let status = lt.wait().unwrap();
    let witnessed = recording.and_then(witness::Recording::finish_or_note);
    let text = stderr();
    eprintln!("CAPS uid {UID} with {CAPS}: {status}\n{text}");
    assert!(status.success(), "lagtrace failed: {text}");
    assert!(
        text.contains("Python frames on"),
        "CAP_SYS_PTRACE reads another user's Python: {text}"
    );
    let found = read_spans(&spans);
    assert_spans_witnessed(&found, witnessed.as_ref(), &target.stalls(), 50);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|s| s.to_string().contains("burn_cpu")),
        "Python frames in the stacks"
    );
}
