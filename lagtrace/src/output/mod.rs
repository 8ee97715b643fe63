//! Outputs. Every file format implements [`Recorder`]: it sees each finished
//! span, then `finish` once. Adding a format is one new file here.
pub mod flamegraph;
pub mod folded;
pub mod jsonl;
pub mod live;
pub mod sanitize;
pub mod summary;

use std::path::PathBuf;

use crate::{cli::Args, error::Result, spans::Span};

/// What a recorder needs to know when the trace ends.
pub struct TraceInfo {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub threshold_ns: u64,
    pub period_ns: u64,
}

/// The outputs of one trace.
pub type Recorders = Vec<Box<dyn Recorder>>;

pub trait Recorder {
    fn record(&mut self, span: &Span) -> Result<()>;
    /// Write what is left; returns the file written, if any.
    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>>;
}

/// The recorders the flags ask for. With no output flag, a flamegraph goes
/// to `lagtrace-PID-YYYYmmdd-HHMMSS.svg` in the current folder; its path is
/// returned too, since it is written only if the trace captured spans (it
/// is then the last recorder).
pub fn recorders(args: &Args, period_ns: u64) -> Result<(Recorders, Option<PathBuf>)> {
    let mut out: Vec<Box<dyn Recorder>> = Vec::new();
    let multi = args.pids.len() > 1;
    if let Some(p) = &args.spans {
        out.push(Box::new(jsonl::JsonLines::create(p.clone())?));
    }
    if let Some(p) = &args.folded {
        out.push(Box::new(folded::FoldedFile::new(
            p.clone(),
            period_ns,
            multi,
        )));
    }
    if let Some(p) = &args.flamegraph {
        out.push(Box::new(flamegraph::FlameGraphFile::new(
            p.clone(),
            period_ns,
            multi,
        )));
    }
    let default_svg = out.is_empty().then(|| default_svg_path(args.pids[0]));
    if let Some(p) = &default_svg {
        out.push(Box::new(flamegraph::FlameGraphFile::new(
            p.clone(),
            period_ns,
            multi,
        )));
    }
    Ok((out, default_svg))
}

fn default_svg_path(pid: u32) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tm = crate::clock::local_tm(secs);
    PathBuf::from(format!(
        "lagtrace-{pid}-{:04}{:02}{:02}-{:02}{:02}{:02}.svg",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    ))
}

/// `12.3 ms`, `1.50 s`, `850 µs`: three significant figures.
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e7 {
        format!("{:.0} ms", ns / 1e6)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_ns;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ns(850_000), "850 µs");
        assert_eq!(fmt_ns(1_234_567), "1.2 ms");
        assert_eq!(fmt_ns(123_456_789), "123 ms");
        assert_eq!(fmt_ns(1_500_000_000), "1.50 s");
    }
}
