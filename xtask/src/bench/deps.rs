//! The tools the bench needs beyond what `cargo xtask setup` installs, each
//! checked first and installed only if missing: Debian packages (gcc for the
//! spin loop; wrk and bpftool again, in case setup could not), py-spy in a
//! venv under target/, a Python that can name its frames (`-X perf`, 3.12+),
//! and node.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, capture, run};

/// Debian packages the bench runs, by the program it runs from each.
pub const DEB_PACKAGES: &[(&str, &str)] = &[("wrk", "wrk"), ("bpftool", "bpftool"), ("gcc", "gcc")];
const VENV: &str = "target/bench-venv";

fn deb_installed(package: &str) -> bool {
    let status = capture(Command::new("dpkg").args(["-s", package]));
    status.is_ok_and(|s| s.lines().any(|l| l == "Status: install ok installed"))
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the missing ones of [`DEB_PACKAGES`] (we run as root).
pub fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .filter(|(pkg, program)| !on_path(program) && !deb_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt().arg("update"))?;
    run(apt().args(["install", "-y"]).args(&missing))
}

/// `node`, which must be there already (Debian's may be older than 20).
pub fn node() -> Result<String> {
    let v = capture(Command::new("node").arg("--version"))
        .context("node (20+) is needed for the Node.js target; it is not on PATH")?;
    Ok(v.trim().to_owned())
}

/// The Python the targets run with, and whether it supports `-X perf`.
#[derive(Clone, Debug)]
pub struct Python {
    pub path: PathBuf,
    pub version: String,
    pub perf_maps: bool,
}

fn python_version(path: &Path) -> Option<(u32, u32, String)> {
    let out = capture(Command::new(path).args([
        "-c",
        "import sys; print('%d %d %s' % (sys.version_info[0], sys.version_info[1], sys.version.split()[0]))",
    ]))
    .ok()?;
    let mut it = out.split_whitespace();
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.to_owned(),
    ))
}

/// `python3` from PATH if it is 3.12+ (`-X perf` writes a perf map that names
/// Python frames); else the lowest pyenv-installed 3.12+; else `python3`.
pub fn python() -> Result<Python> {
    let mut candidates = vec![PathBuf::from("python3")];
    if let Ok(list) = capture(Command::new("pyenv").args(["versions", "--bare"])) {
        let mut versions: Vec<(u32, u32, &str)> = list
            .lines()
            .filter_map(|v| {
                let mut p = v.trim().split('.');
                Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?, v.trim()))
            })
            .filter(|&(maj, min, _)| (maj, min) >= (3, 12))
            .collect();
        versions.sort();
        for (_, _, v) in versions {
            if let Ok(prefix) = capture(Command::new("pyenv").args(["prefix", v])) {
                candidates.push(Path::new(prefix.trim()).join("bin/python3"));
            }
        }
    }
    let mut fallback = None;
    for path in candidates {
        let Some((maj, min, version)) = python_version(&path) else {
            continue;
        };
        let py = Python {
            path,
            version,
            perf_maps: (maj, min) >= (3, 12),
        };
        if py.perf_maps {
            return Ok(py);
        }
        fallback.get_or_insert(py);
    }
    fallback.context("no working python3 on PATH")
}

/// py-spy: from the bench venv, else PATH, else pip-installed into the venv.
pub fn py_spy(python: &Python) -> Result<PathBuf> {
    let venv = util::in_repo(VENV);
    let bin = venv.join("bin/py-spy");
    if bin.is_file() {
        return Ok(bin);
    }
    if on_path("py-spy") {
        return Ok(PathBuf::from("py-spy"));
    }
    if !venv.join("bin/pip").is_file() {
        run(Command::new(&python.path).args(["-m", "venv"]).arg(&venv))
            .context("could not create the bench venv")?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "py-spy"]))
        .context("could not pip-install py-spy")?;
    if !bin.is_file() {
        bail!("pip installed py-spy but {} is missing", bin.display());
    }
    Ok(bin)
}
