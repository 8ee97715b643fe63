//! Resolution against real interpreters: each installed pyenv CPython
//! 3.8–3.13 runs a known function at a known line; the interpreter is found,
//! its frames walked with the kernel's offsets, and each code object and
//! line resolved.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    PyFrames, interp,
    mem::Mem,
    walk::{self, Pick},
};
use lagtrace_common::{PY_FRAME_ENTRY, STACK_END_ROOT};

const SCRIPT: &str = "import sys, time
def inner_known():
    print('ready', flush=True)
    time.sleep(600)
def outer_known():
    x = 1
    inner_known()
outer_known()
";

fn pyenv(minor: u32) -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("3.{minor}."))
        })
        .map(|e| e.path().join(format!("bin/python3.{minor}")))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v.pop()
}

#[test]
fn resolves_a_known_function_on_every_version() {
    let script = std::env::temp_dir().join(format!("lagtrace-known-{}.py", std::process::id()));
    std::fs::write(&script, SCRIPT).unwrap();
    let mut checked = 0;
    for minor in 8..=13 {
        let Some(python) = pyenv(minor) else {
            eprintln!("SKIP resolves_a_known_function on 3.{minor}: no pyenv CPython 3.{minor}");
            continue;
        };
        let mut child = Command::new(&python)
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = child.id();
        let result = (|| {
            let it = interp::find(pid).map_err(|e| e.to_string())?;
            assert_eq!(it.version, (3, minor));
            assert!(super::check(&it)? >= 1, "3.{minor}: check");
            // Another version's layout must not pass the check.
            let mut wrong = it.clone();
            let other = if minor == 12 { 9 } else { 12 };
            wrong.layout = super::layout::table_entry(other).unwrap().layout().unwrap();
            assert!(
                super::check(&wrong).is_err(),
                "3.{minor} checked with the 3.{other} layout"
            );
            let mem = Mem { pid };
            let mut frames = PyFrames::default();
            frames.add(it.clone());
            // The thread moves from the print to the sleep: wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let ts =
                    walk::thread_state(&mem, &it, Pick::FirstWithFrame).ok_or("no thread state")?;
                let (recs, end) = walk::walk(&mem, &it, ts);
                let names: Vec<String> = frames
                    .frames(pid, &recs)
                    .iter()
                    .map(crate::symbolize::frame::Frame::label)
                    .collect();
                let path = script.to_string_lossy();
                let file = super::short_path(&path);
                let expect = [
                    format!("<module> ({file}:8)"),
                    format!("outer_known ({file}:7)"),
                    format!("inner_known ({file}:4)"),
                ];
                if names == expect {
                    assert_eq!(end, STACK_END_ROOT);
                    // Each frame entered from C on ≤3.10; on 3.11+ only the
                    // module's frame (run from C), the calls are inlined.
                    let entries: Vec<bool> =
                        recs.iter().map(|r| r.flags & PY_FRAME_ENTRY != 0).collect();
                    if minor <= 10 {
                        assert_eq!(entries, [true, true, true], "3.{minor}");
                    } else {
                        assert_eq!(entries, [false, false, true], "3.{minor}");
                    }
                    return Ok::<_, String>(());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "3.{minor}: frames {names:?} ({end}), want {expect:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })();
        let _ = child.kill();
        let _ = child.wait();
        result.unwrap();
        checked += 1;
    }
    let _ = std::fs::remove_file(&script);
    eprintln!("resolved frames on {checked} CPython versions");
}
