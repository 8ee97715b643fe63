//! Running external commands the same way everywhere: echo each command line
//! before it runs, so logs show what happened, and turn a failure into an
//! error that names the command and its exit status.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of `xtask/`); commands run from here.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// `cargo` (the one that runs us, if known), started in the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(repo_root());
    cmd
}

/// Whether we run with euid 0 (lagtrace and apt-get need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a warning that stands out in a long log.
pub fn warn(msg: &str) {
    let bar = "!".repeat(72);
    eprintln!(
        "\n{bar}\n!! WARNING: {}\n{bar}\n",
        msg.replace('\n', "\n!!          ")
    );
}

/// The command line as a shell would show it, with any env overrides first.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let program = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    envs.chain(program.map(quote)).collect::<Vec<_>>().join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%^".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails unless it exits 0, quoting its
/// stderr in the error.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}` (is it installed and on PATH?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// `path` relative to the workspace root, for messages.
pub fn in_repo(rel: &str) -> PathBuf {
    repo_root().join(rel)
}
