//! One guest run: virtiofsd shares the host's root, qemu boots the kernel
//! with the initramfs, and the serial console is read line by line until the
//! guest says it is done, the deadline passes, or the kernel panics. A hang
//! or a panic is a failure, never a stuck run.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const VIRTIOFSD: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];
/// Guest memory; it also backs the tmpfs overlay the tests write to.
const MEM: &str = "6G";

/// How the guest is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Multi-threaded TCG: a host thread per guest CPU.
    Tcg,
    /// TCG with both guest CPUs on one host thread (`--accel tcg-single`),
    /// to tell an emulation fault from a guest kernel's.
    TcgSingle,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
            Self::TcgSingle => "tcg-single",
        }
    }

    /// qemu's `-accel` value.
    fn qemu_accel(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
            Self::TcgSingle => "tcg,thread=single",
        }
    }
}

/// What one boot printed and how it ended.
#[derive(Debug, Default)]
pub struct Console {
    pub lines: Vec<String>,
    /// The guest printed `vmtest: guest-done`.
    pub done: bool,
    pub timed_out: bool,
    pub panicked: bool,
    pub booted: bool,
}

/// Kills the child on drop, so no qemu or virtiofsd outlives a failed run.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtiofsd() -> Result<&'static str> {
    VIRTIOFSD
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
        .context("virtiofsd not found (apt-get install qemu-system-x86)")
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub append: String,
    pub accel: Accel,
    pub timeout: Duration,
    pub socket: PathBuf,
    /// Echo every console line as it comes; otherwise only the guest's
    /// progress lines (`vmtest: ` but not the tests' own output), so a
    /// non-verbose run still shows which test binary it is in.
    pub echo: bool,
}

pub fn boot(b: &Boot) -> Result<Console> {
    let _ = std::fs::remove_file(&b.socket);
    let fsd = Command::new(virtiofsd()?)
        .arg(format!("--socket-path={}", b.socket.display()))
        // The namespace sandbox fails in a container; chroot does not.
        .args([
            "-o",
            "source=/",
            "-o",
            "cache=always",
            "-o",
            "sandbox=chroot",
            "-f",
        ])
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(b.socket.with_extension("log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .context("starting virtiofsd")?;
    let _fsd = Reaper(fsd);
    let waited = Instant::now();
    while !b.socket.exists() {
        if waited.elapsed() > Duration::from_secs(10) {
            bail!("virtiofsd made no socket at {}", b.socket.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-m", MEM, "-smp", "2"])
        .args(["-accel", b.accel.qemu_accel()])
        .args([
            "-cpu",
            match b.accel {
                Accel::Kvm => "host",
                Accel::Tcg | Accel::TcgSingle => "max",
            },
        ])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initramfs)
        .args(["-append", &b.append])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEM},share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .args([
            "-chardev",
            &format!("socket,id=vfs,path={}", b.socket.display()),
            "-device",
            "vhost-user-fs-pci,chardev=vfs,tag=host",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let _qemu = Reaper(child);
    let deadline = Instant::now() + b.timeout;
    let mut out = Console::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.timed_out = true;
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                if b.echo {
                    println!("  | {line}");
                } else if line.starts_with("vmtest: ") && !line.starts_with("vmtest: out ") {
                    println!("  {line}");
                }
                if line.starts_with("vmtest: booted") {
                    out.booted = true;
                }
                if line.contains("Kernel panic") || line.contains("BUG: ") {
                    out.panicked = true;
                }
                let done = line.starts_with("vmtest: guest-done");
                out.lines.push(line);
                if done {
                    out.done = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // qemu exited (reboot, panic with panic=-1, or an error).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(out)
}
