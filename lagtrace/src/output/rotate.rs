//! `--spans FILE --spans-max-size SIZE --spans-keep N`: JSON lines for a
//! day-long attach. Spans are appended to FILE in place (whole lines,
//! flushed per span); when FILE reaches SIZE it becomes FILE.1 (FILE.1
//! becomes FILE.2, …, and FILE.N goes), and a new FILE starts. Rotation
//! happens only between lines, so no span is split or lost across files.
//! `SIGHUP` reopens FILE, for logrotate's move-then-signal. Each file
//! starts with the header record, so any one of them can be given to
//! `lagtrace report`; the summary record ends the newest file.
//!
//! Unlike the other outputs this one is not written beside its path and
//! renamed at the end: a file read while it grows must be at its name.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{
    Recorder, TraceInfo,
    jsonl::to_line,
    records::{Header, Record},
};
use crate::{
    error::{Error, Result},
    spans::Span,
};

/// Parse a size: bytes, or with a unit `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024); `K`, `M`, `G` alone are 1024-based.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; try e.g. 100MB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use KB, MB or GB"
            ));
        }
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("`{s}` must be above zero and below 16 EB")),
        Some(v) => Ok(v),
    }
}

pub struct RotatingJsonl {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    /// Rotations done (reported at the end).
    pub rotations: u64,
    /// The header line, written again at the top of every new file.
    header: Option<String>,
}

fn open_append(path: &Path) -> Result<(File, u64)> {
    let err = |source| Error::Output {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    let size = f.metadata().map_err(err)?.len();
    Ok((f, size))
}

/// `FILE.n`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingJsonl {
    /// Open FILE for appending now: the check that it can be written.
    pub fn create(path: PathBuf, max_size: u64, keep: u32) -> Result<Self> {
        let (file, size) = open_append(&path)?;
        Ok(Self {
            path,
            max_size,
            keep,
            file: Some(file),
            size,
            rotations: 0,
            header: None,
        })
    }

    /// Append one whole line (one write on an O_APPEND file).
    fn append(&mut self, line: &str) -> Result<()> {
        let res = match self.file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => Ok(()),
        };
        res.map_err(|e| self.err(e))?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn err(&self, source: std::io::Error) -> Error {
        Error::Output {
            path: self.path.clone(),
            source,
        }
    }

    /// FILE → FILE.1 → … → FILE.keep (the oldest goes), then a new FILE.
    fn rotate(&mut self) -> Result<()> {
        self.file = None;
        let _ = fs::remove_file(numbered(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                fs::rename(&from, numbered(&self.path, n + 1)).map_err(|e| self.err(e))?;
            }
        }
        if self.keep == 0 {
            fs::remove_file(&self.path).map_err(|e| self.err(e))?;
        } else {
            fs::rename(&self.path, numbered(&self.path, 1)).map_err(|e| self.err(e))?;
        }
        let (f, size) = open_append(&self.path)?;
        self.file = Some(f);
        self.size = size;
        self.rotations += 1;
        match self.header.clone() {
            Some(h) => self.append(&h),
            None => Ok(()),
        }
    }
}

impl Recorder for RotatingJsonl {
    fn begin(&mut self, header: &Header) -> Result<()> {
        let mut line = serde_json::to_string(&Record::Header(header.clone()))
            .expect("a header always serializes");
        line.push('\n');
        self.header = Some(line.clone());
        self.append(&line)
    }

    /// The recorded file holds every span; readers apply `Span::is_lag`.
    fn takes_exit_spans(&self) -> bool {
        true
    }

    fn record(&mut self, span: &Span) -> Result<()> {
        let mut line = to_line(span);
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.append(&line)
    }

    fn reopen(&mut self) -> Result<()> {
        let (f, size) = open_append(&self.path)?;
        self.file = Some(f);
        self.size = size;
        Ok(())
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        let mut line = info.summary.to_line();
        line.push('\n');
        self.append(&line)?;
        Ok(self.file.take().map(|_| self.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};
    use crate::spans::StackKind;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "0", "MB", "-1MB", "5 parsecs", "99999999999GB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotation_keeps_n_files_and_every_line() {
        let dir = std::env::temp_dir().join(format!("lagtrace-rot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spans.jsonl");
        let span = span_with(vec![stack(&["main", "burn"], 4, StackKind::OnCpu, 0)]);
        let line = to_line(&span).len() as u64 + 1;
        // Three lines per file.
        let mut r = RotatingJsonl::create(path.clone(), 3 * line, 2).unwrap();
        for _ in 0..10 {
            r.record(&span).unwrap();
        }
        let count = |p: &Path| {
            fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        // 10 lines: FILE.2 and FILE.1 hold 3 each, FILE 1; the first 3 went.
        assert_eq!(count(&path), 1);
        assert_eq!(count(&numbered(&path, 1)), 3);
        assert_eq!(count(&numbered(&path, 2)), 3);
        assert!(!numbered(&path, 3).exists());
        assert_eq!(r.rotations, 3);
        // logrotate moved it away: SIGHUP starts a new FILE.
        fs::rename(&path, dir.join("moved")).unwrap();
        r.reopen().unwrap();
        r.record(&span).unwrap();
        assert_eq!(count(&path), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
