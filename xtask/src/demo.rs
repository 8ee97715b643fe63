//! `cargo xtask demo`: shows lagtrace end to end in one command — starts the
//! bundled asyncio demo target, traces it for 10 s, and leaves spans, folded
//! stacks, a flamegraph, a pprof and a speedscope profile and the summary
//! JSON in `target/demo/<timestamp>/`.
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{self, SetupArgs},
    util::{self, capture, cargo, run},
};

const TARGET_SCRIPT: &str = "xtask/demo/feature_store.py";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The Python the demo prefers: a pyenv build, which supports `-X perf`.
const PYENV_VERSION: &str = "3.12.1";

pub fn run_demo() -> Result<()> {
    if !util::is_root() {
        bail!(
            "the demo runs lagtrace, which needs root (it loads BPF programs).\n\
             Run: sudo -E cargo xtask demo   (or run it as root)\n\
             If sudo cannot find cargo: sudo -E env \"PATH=$PATH\" cargo xtask demo"
        );
    }
    setup::run_setup(&SetupArgs::default()).context("setup failed")?;
    run(cargo().args(["build", "--release", "--package", "lagtrace"])).context("build failed")?;

    let mut target = DemoTarget::start(&util::in_repo(TARGET_SCRIPT))?;
    let pid = target.wait_ready(READY_TIMEOUT)?;
    println!("demo target ready: pid {pid}");

    let stamp = capture(Command::new("date").arg("+%Y%m%d-%H%M%S"))?;
    let dir = util::in_repo("target/demo").join(stamp.trim());
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;

    let traced = run(Command::new(util::in_repo("target/release/lagtrace"))
        .args(["--pid", &pid.to_string(), "--duration", "10s", "--spans"])
        .arg(dir.join("spans.jsonl"))
        .arg("--flamegraph")
        .arg(dir.join("flamegraph.svg"))
        .arg("--folded")
        .arg(dir.join("stacks.folded"))
        .arg("--pprof")
        .arg(dir.join("profile.pb.gz"))
        .arg("--speedscope")
        .arg(dir.join("speedscope.json"))
        .arg("--summary-json")
        .arg(dir.join("summary.json")))
    .context("lagtrace failed");
    let stopped = target.stop().context("could not stop the demo target")?;
    println!("demo target stopped ({stopped})");
    traced?;

    println!("\nDemo output: {}", dir.display());
    let mut files: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("could not list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    files.sort_by_key(|e| e.file_name());
    for file in files {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        println!(
            "  {:<20} {size:>10} bytes",
            file.file_name().to_string_lossy()
        );
    }
    Ok(())
}

/// The Python to run the demo target with: pyenv's 3.12.1 if installed,
/// else `python3` from PATH.
pub fn demo_python() -> PathBuf {
    let pyenv = capture(Command::new("pyenv").args(["prefix", PYENV_VERSION]));
    if let Ok(prefix) = pyenv {
        let python = PathBuf::from(prefix.trim()).join("bin/python3");
        if python.is_file() {
            return python;
        }
    }
    PathBuf::from("python3")
}

/// The running demo target. Dropping it (on an error path) stops it too.
struct DemoTarget {
    child: Child,
    ready: mpsc::Receiver<String>,
}

impl DemoTarget {
    fn start(script: &Path) -> Result<Self> {
        if !script.is_file() {
            bail!("demo target {} does not exist", script.display());
        }
        let python = demo_python();
        let mut cmd = Command::new(&python);
        cmd.arg(script).stdin(Stdio::null()).stdout(Stdio::piped());
        eprintln!("$ {}", util::display(&cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", python.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("demo target has no stdout pipe")?;

        // Hand over the `READY <pid>` payload, then keep draining stdout so
        // the target never blocks on a full pipe (that would be a stall).
        let (tx, ready) = mpsc::channel();
        thread::spawn(move || {
            let mut waiting = true;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix("READY ") {
                    Some(pid) if waiting => {
                        waiting = false;
                        let _ = tx.send(pid.trim().to_owned());
                    }
                    _ => println!("[feature_store] {line}"),
                }
            }
        });
        Ok(Self { child, ready })
    }

    /// Waits for `READY <pid>` and returns the pid.
    fn wait_ready(&mut self, timeout: Duration) -> Result<u32> {
        match self.ready.recv_timeout(timeout) {
            Ok(pid) => pid
                .parse()
                .with_context(|| format!("demo target printed `READY {pid}`, not a pid")),
            Err(RecvTimeoutError::Timeout) => bail!(
                "demo target did not print `READY <pid>` within {} s",
                timeout.as_secs_f64()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self
                    .child
                    .wait()
                    .context("could not wait for the demo target")?;
                bail!("demo target exited ({status}) before printing `READY <pid>`")
            }
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after 5 s.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("could not poll the demo target")?
        {
            return Ok(status);
        }
        signal(self.child.id(), libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .try_wait()
                .context("could not poll the demo target")?
            {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("demo target ignored SIGTERM for 5 s; killing it");
        self.child
            .kill()
            .context("could not kill the demo target")?;
        self.child
            .wait()
            .context("could not wait for the demo target")
    }
}

impl Drop for DemoTarget {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not send signal {sig} to pid {pid}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf, time::Duration};

    use super::DemoTarget;

    fn script(name: &str, body: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("xtask-demo-{}-{name}.py", std::process::id()));
        fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn ready_then_sigterm() {
        let path = script(
            "ok",
            "import os, time\nprint('hello')\nprint('READY', os.getpid(), flush=True)\ntime.sleep(60)\n",
        );
        let mut target = DemoTarget::start(&path).unwrap();
        assert_eq!(
            target.wait_ready(Duration::from_secs(20)).unwrap(),
            target.child.id()
        );
        let status = target.stop().unwrap();
        assert!(!status.success(), "{status}");
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn exits_before_ready() {
        let path = script("exit", "raise SystemExit(3)\n");
        let mut target = DemoTarget::start(&path).unwrap();
        let err = target.wait_ready(Duration::from_secs(20)).unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn ready_timeout() {
        let path = script("slow", "import time\ntime.sleep(60)\n");
        let mut target = DemoTarget::start(&path).unwrap();
        let err = target.wait_ready(Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("within 0.3 s"), "{err}");
        fs::remove_file(path).unwrap();
    }
}
