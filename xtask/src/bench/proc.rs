//! Child processes the bench starts (targets, lagtrace, py-spy) and how it
//! gets rid of them on every path: a [`Proc`] is stopped (its signal, then
//! SIGKILL) and reaped when dropped, each child is SIGKILLed by the kernel if
//! xtask itself dies (PR_SET_PDEATHSIG), and SIGINT/SIGTERM/SIGHUP to xtask
//! only raise a flag that the bench's wait loops turn into an error, so the
//! drops run.
use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag; see [`check_interrupt`].
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once xtask got SIGINT/SIGTERM/SIGHUP, so the caller unwinds and
/// every guard on the way cleans up.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; stopping everything the bench started");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) if xtask is interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Makes the kernel SIGKILL the child if xtask dies first, whatever the way.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not send signal {sig} to pid {pid}"));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// The last lines of both streams, for error messages.
    tail: VecDeque<String>,
}

/// A started child with both output streams captured line by line (and
/// drained continuously, so it never blocks on a full pipe).
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Stream, String)>,
    captured: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
    stop_signal: libc::c_int,
    grace: Duration,
    status: Option<ExitStatus>,
}

const TAIL_LINES: usize = 20;

impl Proc {
    /// Starts `cmd`. `stop_signal` is what [`Proc::stop`] sends first, and
    /// `grace` how long it then waits before SIGKILL.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        stop_signal: libc::c_int,
        grace: Duration,
        piped_stdin: bool,
    ) -> Result<Self> {
        check_interrupt()?;
        cmd.stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        die_with_parent(cmd);
        let line = util::display(cmd);
        eprintln!("$ {line} &");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader(out, Stream::Stdout, tx.clone(), captured.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader(err, Stream::Stderr, tx, captured.clone()));
        }
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            captured,
            readers,
            stop_signal,
            grace,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first new line (on either stream) that `want` accepts,
    /// and returns it. Fails if the process exits or `timeout` passes first.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(Stream, &str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupt()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} did not print {what} within {:.0} s; its last output:\n{}",
                    self.name,
                    timeout.as_secs_f64(),
                    self.tail()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((stream, line)) if want(stream, &line) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit()?;
                    bail!(
                        "{} exited ({status}) before printing {what}; its last output:\n{}",
                        self.name,
                        self.tail()
                    );
                }
            }
        }
    }

    /// Writes to the child's stdin (it must have been started with one).
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("no stdin pipe")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("could not write to {}'s stdin", self.name))
    }

    /// Closes the child's stdin (EOF for it).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stdout(&self) -> Vec<String> {
        self.captured
            .lock()
            .map(|c| c.stdout.clone())
            .unwrap_or_default()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.captured
            .lock()
            .map(|c| c.stderr.clone())
            .unwrap_or_default()
    }

    /// The last lines it printed, indented, for error messages.
    pub fn tail(&self) -> String {
        let lines: Vec<String> = self
            .captured
            .lock()
            .map(|c| c.tail.iter().map(|l| format!("    {l}")).collect())
            .unwrap_or_default();
        if lines.is_empty() {
            "    (nothing)".into()
        } else {
            lines.join("\n")
        }
    }

    fn wait_exit(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .with_context(|| format!("could not wait for {}", self.name))?;
        self.finish(status);
        Ok(status)
    }

    fn finish(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.stdin = None;
        // The pipes hit EOF once the child is gone, so this is quick; after
        // it, stdout()/stderr() hold everything the child printed.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Stops it: its stop signal, up to `grace` to exit, then SIGKILL.
    /// Reaps it either way. Safe to call again.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            self.finish(status);
            return Ok(status);
        }
        let pid = self.pid();
        eprintln!("$ kill -{} {pid}   # {}", self.stop_signal, self.name);
        signal(pid, self.stop_signal)?;
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("try_wait")? {
                self.finish(status);
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} ignored signal {} for {:.0} s; killing it",
            self.name,
            self.stop_signal,
            self.grace.as_secs_f64()
        );
        let _ = self.child.kill();
        self.wait_exit()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: could not stop {}: {e:#}", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    tx: Sender<(Stream, String)>,
    captured: Arc<Mutex<Captured>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut c) = captured.lock() {
                match stream {
                    Stream::Stdout => c.stdout.push(line.clone()),
                    Stream::Stderr => c.stderr.push(line.clone()),
                }
                if c.tail.len() == TAIL_LINES {
                    c.tail.pop_front();
                }
                c.tail.push_back(line.clone());
            }
            // The receiver may be gone (Proc dropped): keep draining anyway.
            let _ = tx.send((stream, line));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    use super::{Proc, Stream};

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn waits_for_a_line_then_stops() {
        let mut p = Proc::spawn(
            "sh",
            &mut sh("echo hello; echo err >&2; echo READY 1 2; exec sleep 60"),
            libc::SIGTERM,
            Duration::from_secs(5),
            false,
        )
        .unwrap();
        let line = p
            .wait_line("READY", Duration::from_secs(10), |s, l| {
                s == Stream::Stdout && l.starts_with("READY")
            })
            .unwrap();
        assert_eq!(line, "READY 1 2");
        assert!(p.running());
        let status = p.stop().unwrap();
        assert!(!status.success());
        assert_eq!(p.stdout(), ["hello", "READY 1 2"]);
        assert_eq!(p.stderr(), ["err"]);
        assert!(!p.running());
    }

    #[test]
    fn exit_before_line_is_an_error() {
        let mut p = Proc::spawn(
            "sh",
            &mut sh("echo oops; exit 3"),
            libc::SIGTERM,
            Duration::from_secs(5),
            false,
        )
        .unwrap();
        let err = p
            .wait_line("READY", Duration::from_secs(10), |_, l| l == "READY")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("oops"),
            "{err}"
        );
    }

    #[test]
    fn stdin_round_trip() {
        let mut p = Proc::spawn(
            "sh",
            &mut sh("read x; echo got $x"),
            libc::SIGTERM,
            Duration::from_secs(5),
            true,
        )
        .unwrap();
        p.send("go\n").unwrap();
        let line = p
            .wait_line("got", Duration::from_secs(10), |_, l| l.starts_with("got"))
            .unwrap();
        assert_eq!(line, "got go");
        p.stop().unwrap();
    }

    #[test]
    fn sigkill_after_grace() {
        let mut p = Proc::spawn(
            "sh",
            &mut sh("trap '' TERM; echo up; while :; do sleep 0.05; done"),
            libc::SIGTERM,
            Duration::from_millis(300),
            false,
        )
        .unwrap();
        p.wait_line("up", Duration::from_secs(10), |_, l| l == "up")
            .unwrap();
        let status = p.stop().unwrap();
        assert!(!status.success());
    }
}
