//! Reading a `--spans` file back: the header, the spans, and the summary
//! that ends a complete file. It reads what a file holds even when the file
//! was cut short (lagtrace killed, a full disk): a torn last line and a
//! missing summary become warnings, not errors. A file from a newer format
//! is refused, since its lines may not mean what this lagtrace thinks.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use crate::{
    error::{Error, Result},
    output::records::{FORMAT_VERSION, Header, Record, SummaryRecord},
    spans::Span,
};

/// What a recorded file holds.
#[derive(Debug, Default)]
pub struct Recorded {
    pub header: Option<Header>,
    pub spans: Vec<Span>,
    pub summary: Option<SummaryRecord>,
    /// What was missing or unreadable, one line each.
    pub warnings: Vec<String>,
}

/// Read a recorded file.
pub fn read(path: &Path) -> Result<Recorded> {
    let file = File::open(path).map_err(|e| Error::Recording {
        path: path.to_path_buf(),
        what: format!("cannot read it ({e}); pass a file written by `lagtrace --spans`"),
    })?;
    let mut out = Recorded::default();
    let (mut bad, mut after_summary) = (0u64, 0u64);
    let mut last_bad: Option<usize> = None;
    let mut n = 0usize;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| Error::Recording {
            path: path.to_path_buf(),
            what: format!("cannot read it ({e})"),
        })?;
        n += 1;
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                bad += 1;
                last_bad = Some(n);
                continue;
            }
        };
        if out.summary.is_some() {
            after_summary += 1;
        }
        if value.get("record").is_some() {
            check_version(path, &value)?;
            match serde_json::from_value::<Record>(value) {
                Ok(Record::Header(h)) => out.header = Some(h),
                Ok(Record::Summary(s)) => out.summary = Some(s),
                Err(_) => {
                    bad += 1;
                    last_bad = Some(n);
                }
            }
            continue;
        }
        match serde_json::from_value::<Span>(value) {
            Ok(span) => out.spans.push(span),
            Err(_) => {
                bad += 1;
                last_bad = Some(n);
            }
        }
    }
    if bad == 1 && last_bad == Some(n) {
        out.warnings.push(format!(
            "its last line (line {n}) is cut short: it was skipped"
        ));
    } else if bad > 0 {
        out.warnings.push(format!(
            "{bad} lines could not be read as records: they were skipped"
        ));
    }
    if out.header.is_none() {
        out.warnings.push(
            "it has no header record (written before lagtrace recorded one, or cut at the start)"
                .into(),
        );
    }
    if out.summary.is_none() {
        out.warnings.push(format!(
            "it has no summary record: the trace was cut short (lagtrace killed?); reporting the {} spans it holds",
            out.spans.len()
        ));
    } else if after_summary > 0 {
        out.warnings.push(format!(
            "{after_summary} records after its summary were kept"
        ));
    }
    Ok(out)
}

/// Refuse a record from a format newer than this lagtrace reads.
fn check_version(path: &Path, v: &serde_json::Value) -> Result<()> {
    let version = v.get("format_version").and_then(|f| f.as_u64());
    if let Some(version) = version.filter(|&f| f > u64::from(FORMAT_VERSION)) {
        let by = v
            .get("lagtrace_version")
            .and_then(|s| s.as_str())
            .unwrap_or("a newer lagtrace");
        return Err(Error::Recording {
            path: path.to_path_buf(),
            what: format!(
                "written in format {version} by lagtrace {by}, and this lagtrace ({}) reads format {FORMAT_VERSION} at most; report it with lagtrace {by} or later",
                env!("CARGO_PKG_VERSION")
            ),
        });
    }
    Ok(())
}
