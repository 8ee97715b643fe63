//! The `lagtrace` command. It parses flags, runs a session, and turns every
//! error into one line that names the remedy.
//!
//! Exit codes: 0 done; 1 error (or an output that could not be written,
//! the others and the summary being complete); 2 bad flag (clap); 3 no
//! event-loop activity was seen in a target.
use std::{io, process::ExitCode};

use clap::Parser;
use lagtrace::{
    cli::{Args, Command},
    error::Error,
    output::sanitize,
    report, session,
};

const PRIVS: &str = "run as root (sudo lagtrace …), or grant CAP_BPF and CAP_PERFMON \
                     (plus CAP_SYS_PTRACE for other users' processes)";

/// The errno at the bottom of an error chain, if any.
fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The last lines of a verifier log, on one line: where it says why (the
/// statistics it prints last included).
fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

fn remedy(e: &Error) -> String {
    let denied = matches!(errno(e), Some(libc::EPERM | libc::EACCES));
    match e {
        Error::NoSuchProcess { pid } => {
            format!(
                "no process with pid {pid}; check it with `ps -p {pid}` or find the loop with `pgrep -a python`"
            )
        }
        Error::Exited { pid } => format!(
            "pid {pid} has exited: it is a zombie waiting for its parent to reap it, with no thread left to trace; pass the pid of a running process"
        ),
        Error::KernelThread { pid } => {
            format!(
                "pid {pid} is a kernel thread, which runs no event loop; pass the pid of a user process"
            )
        }
        Error::Privileges { what } => format!("{what}; {PRIVS}"),
        // EACCES too, but the verifier's, not a privilege: say what it said.
        Error::Attach {
            probe,
            source:
                aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                },
        } => format!(
            "the kernel's BPF verifier refused {probe} ({io_error}); it ended with: {}",
            verifier_tail(&verifier_log.to_string())
        ),
        _ if denied => format!("permission denied ({}); {PRIVS}", chain(e)),
        Error::Tracefs { .. } => format!(
            "{}; mount it by hand with `mount -t tracefs nodev /sys/kernel/tracing`",
            chain(e)
        ),
        Error::Load { .. } => format!(
            "{}; lagtrace needs BPF ring buffers and stack maps (Linux 5.8 or later); rerun with -vv for the verifier log",
            chain(e)
        ),
        Error::Attach { probe, .. } if matches!(errno(e), Some(libc::ENOENT)) => {
            format!(
                "cannot attach {probe}: this kernel does not have it ({})",
                chain(e)
            )
        }
        Error::Attach { .. } => format!(
            "{}; check `dmesg` and that no security module blocks BPF",
            chain(e)
        ),
        _ => chain(e),
    }
}

fn init_logging(verbose: u8) {
    let filter = match verbose {
        // Only lagtrace's own warnings: libraries (aya, blazesym) log to
        // the terminal with -v only.
        0 => "lagtrace=warn",
        1 => "info,lagtrace=debug,lagtrace_ebpf=debug,aya=warn",
        _ => "debug",
    };
    // Log messages may quote target strings (paths, symbols, py-spy's
    // errors): they leave through the sanitiser too.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format(|buf, record| {
            use std::io::Write;
            let ts = buf.timestamp_millis();
            let msg = record.args().to_string();
            writeln!(
                buf,
                "[{ts} {} {}] {}",
                record.level(),
                record.target(),
                sanitize::line(&msg)
            )
        })
        .init();
}

/// `lagtrace report`: exit 0, or 1 when the file cannot be read or an
/// output cannot be written.
fn report_main(args: &report::ReportArgs) -> ExitCode {
    match report::run(args) {
        Ok(outcome) => {
            for path in &outcome.files {
                eprintln!(
                    "lagtrace: wrote {}",
                    sanitize::line(&path.display().to_string())
                );
            }
            if outcome.failed_outputs.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "lagtrace: error: could not write {}; free space or choose another path",
                    outcome.failed_outputs.join("; ")
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lagtrace: error: {}", sanitize::line(&remedy(&e)));
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    if let Some(Command::Report(r)) = &args.command {
        return report_main(r);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lagtrace: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(session::run(&args)) {
        Ok(outcome) => {
            for path in &outcome.files {
                eprintln!(
                    "lagtrace: wrote {}",
                    sanitize::line(&path.display().to_string())
                );
            }
            if !outcome.failed_outputs.is_empty() {
                // Each was warned about as it failed; the rest was written.
                eprintln!(
                    "lagtrace: error: {} could not be written ({}); free space or choose another path",
                    if outcome.failed_outputs.len() == 1 {
                        "one output".to_string()
                    } else {
                        format!("{} outputs", outcome.failed_outputs.len())
                    },
                    outcome.failed_outputs.join("; ")
                );
                return ExitCode::from(1);
            }
            if !outcome.idle.is_empty() {
                let pids: Vec<String> = outcome.idle.iter().map(u32::to_string).collect();
                eprintln!(
                    "lagtrace: no event-loop activity seen in pid {}: no thread returned from epoll_wait/epoll_pwait/epoll_pwait2 while traced. \
                     The loop may be idle in another wait (poll, select, io_uring), park on futexes (tokio workers), or this is not an event-loop process.",
                    pids.join(", ")
                );
                // A pre-fork master runs no loop itself: only when nothing
                // traced showed a loop is the trace a failure.
                if outcome.idle.len() == outcome.traced {
                    return ExitCode::from(3);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lagtrace: error: {}", sanitize::line(&remedy(&e)));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remedies_are_one_line_and_name_the_fix() {
        let cases = [
            Error::NoSuchProcess { pid: 4242 },
            Error::KernelThread { pid: 2 },
            Error::Privileges {
                what: "not root".into(),
            },
            Error::io("x", io::Error::from_raw_os_error(libc::EPERM)),
        ];
        for e in &cases {
            let r = remedy(e);
            assert!(!r.contains('\n'), "{r}");
        }
        assert!(remedy(&cases[0]).contains("ps -p 4242"));
        assert!(remedy(&cases[2]).contains("CAP_BPF"));
        assert!(remedy(&cases[3]).contains("CAP_PERFMON"));
    }
}
