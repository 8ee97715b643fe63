//! Starting the bench's target processes (the scripts and C source in
//! `bench/targets/`) and waiting for their `READY <pid> [<port>]` line.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    deps::Python,
    proc::{Proc, Stream},
};
use crate::util::{self, run};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running target; dropping it stops it (SIGTERM, then SIGKILL).
pub struct Target {
    pub proc: Proc,
    pub pid: u32,
    /// The port it listens on, for the HTTP servers.
    pub port: u16,
}

fn script(name: &str) -> Result<PathBuf> {
    let path = util::in_repo("bench/targets").join(name);
    if !path.is_file() {
        bail!("bench target {} is missing", path.display());
    }
    Ok(path)
}

/// Starts `cmd` and waits for `READY <pid> [<port>]` on its stdout.
pub(super) fn start(name: &str, cmd: &mut Command, piped_stdin: bool) -> Result<Target> {
    let mut proc = Proc::spawn(name, cmd, libc::SIGTERM, STOP_GRACE, piped_stdin)?;
    let line = proc.wait_line("`READY <pid>`", READY_TIMEOUT, |s, l| {
        s == Stream::Stdout && l.starts_with("READY ")
    })?;
    let (pid, port) = parse_ready(&line).with_context(|| format!("{name} printed `{line}`"))?;
    Ok(Target { proc, pid, port })
}

fn parse_ready(line: &str) -> Option<(u32, u16)> {
    let mut it = line.strip_prefix("READY ")?.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let port = match it.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    Some((pid, port))
}

fn python_cmd(py: &Python, perf_maps: bool) -> Command {
    let mut cmd = Command::new(&py.path);
    if perf_maps && py.perf_maps {
        cmd.args(["-X", "perf"]);
    }
    cmd
}

/// bench/targets/asyncio_http.py, with extra environment (e.g.
/// `LAG_MONITOR=1`, `PYTHONASYNCIODEBUG=1`).
pub fn asyncio_http(py: &Python, name: &str, env: &[(&str, &str)]) -> Result<Target> {
    let mut cmd = python_cmd(py, false);
    cmd.arg(script("asyncio_http.py")?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    start(name, &mut cmd, false)
}

/// bench/targets/node_http.js.
pub fn node_http() -> Result<Target> {
    let mut cmd = Command::new("node");
    cmd.arg(script("node_http.js")?);
    start("node_http", &mut cmd, false)
}

/// bench/targets/stall_storm.py (with `-X perf` where supported).
pub fn stall_storm(py: &Python) -> Result<Target> {
    stall_storm_with(py, &[])
}

/// bench/targets/stall_storm.py with its `BLOCK_MS [YIELD_MS]` arguments.
pub fn stall_storm_with(py: &Python, args: &[&str]) -> Result<Target> {
    let mut cmd = python_cmd(py, true);
    cmd.arg(script("stall_storm.py")?).args(args);
    start("stall_storm", &mut cmd, false)
}

/// bench/targets/injected_stalls.py (with `-X perf` where supported),
/// logging its lag monitor to `monitor_log`.
pub fn injected_stalls(py: &Python, monitor_log: &Path) -> Result<Target> {
    let mut cmd = python_cmd(py, true);
    cmd.arg(script("injected_stalls.py")?).arg(monitor_log);
    start("injected_stalls", &mut cmd, false)
}

/// Compiles bench/targets/spin_loop.c into `out_dir`.
pub fn build_spin_loop(out_dir: &Path) -> Result<PathBuf> {
    let bin = out_dir.join("spin_loop");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&bin)
        .arg(script("spin_loop.c")?))
    .context("could not compile the spin loop")?;
    Ok(bin)
}

/// Compiles bench/targets/getppid_loop.c into `out_dir`.
pub fn build_getppid_loop(out_dir: &Path) -> Result<PathBuf> {
    let bin = out_dir.join("getppid_loop");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&bin)
        .arg(script("getppid_loop.c")?))
    .context("could not compile the getppid loop")?;
    Ok(bin)
}

/// The compiled spin loop; each `go` on its stdin spins for `secs`.
pub fn spin_loop(bin: &Path, secs: u64) -> Result<Target> {
    let mut cmd = Command::new(bin);
    cmd.arg(secs.to_string());
    start("spin_loop", &mut cmd, true)
}

#[cfg(test)]
mod tests {
    use super::parse_ready;

    #[test]
    fn ready_lines() {
        assert_eq!(parse_ready("READY 12 8080"), Some((12, 8080)));
        assert_eq!(parse_ready("READY 12"), Some((12, 0)));
        assert_eq!(parse_ready("READY x"), None);
        assert_eq!(parse_ready("hello"), None);
    }
}
