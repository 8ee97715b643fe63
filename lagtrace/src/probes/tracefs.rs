//! tracefs: classic tracepoints are attached by the ids it exposes. A fresh
//! host may not have it mounted; lagtrace mounts it as bpftrace does, and
//! reads the field offsets of the sched tracepoints from it.
use std::{ffi::CString, fs, io, path::Path};

use crate::error::{Error, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

fn populated(path: &Path) -> bool {
    fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Mount tracefs at /sys/kernel/tracing unless it (or the debugfs path) is
/// already there. Returns whether this call mounted it.
pub fn ensure_mounted() -> Result<bool> {
    if populated(Path::new(TRACEFS)) || populated(Path::new("/sys/kernel/debug/tracing")) {
        return Ok(false);
    }
    let src = CString::new("tracefs").expect("no NUL");
    let dst = CString::new(TRACEFS).expect("no NUL");
    // SAFETY: plain mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Tracefs {
            path: TRACEFS.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(true)
}

pub(crate) fn events_dir() -> &'static str {
    if populated(Path::new(TRACEFS)) {
        TRACEFS
    } else {
        "/sys/kernel/debug/tracing"
    }
}

/// Offset of `field` in a tracepoint's format, e.g. `next_pid` → 56.
pub fn field_offset(category: &str, event: &str, field: &str) -> Result<u16> {
    let path = format!("{}/events/{category}/{event}/format", events_dir());
    let text = fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    parse_offset(&text, field).ok_or_else(|| {
        Error::io(
            format!("{path} has no field `{field}`"),
            io::Error::from(io::ErrorKind::InvalidData),
        )
    })
}

fn parse_offset(format: &str, field: &str) -> Option<u16> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

/// True if the kernel has this tracepoint.
pub fn has_tracepoint(category: &str, event: &str) -> bool {
    Path::new(&format!("{}/events/{category}/{event}", events_dir())).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sched_switch_format() {
        let f = "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                 \tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                 \tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n\
                 \tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_offset(f, "prev_pid"), Some(24));
        assert_eq!(parse_offset(f, "prev_state"), Some(32));
        assert_eq!(parse_offset(f, "next_pid"), Some(56));
        assert_eq!(parse_offset(f, "prev_comm"), Some(8));
        assert_eq!(parse_offset(f, "pid"), None);
    }
}
