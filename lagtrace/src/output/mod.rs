//! Outputs. Every file format implements [`Recorder`]: it sees each finished
//! span, then `finish` once. Adding a format is one new file here.
pub mod flamegraph;
pub mod folded;
pub mod jsonl;
pub mod live;
pub mod summary;

use std::path::PathBuf;

use crate::{error::Result, spans::Span};

/// What a recorder needs to know when the trace ends.
pub struct TraceInfo {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub threshold_ns: u64,
    pub period_ns: u64,
}

pub trait Recorder {
    fn record(&mut self, span: &Span) -> Result<()>;
    /// Write what is left; returns the file written, if any.
    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>>;
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
