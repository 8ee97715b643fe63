//! `--spans FILE`: one JSON object per blocking span, written and flushed as
//! each span ends to a temporary file beside FILE (`.FILE.lagtrace-PID.tmp`,
//! whole lines, so it is useful even if lagtrace is killed), and renamed to
//! FILE at the end. The first line is the header record, the last the
//! summary record (see `records.rs`); a file without its summary was cut
//! short.
use std::path::PathBuf;

use super::{
    Recorder, TraceInfo,
    file::AtomicFile,
    records::{Header, Record},
};
use crate::{error::Result, spans::Span};

pub struct JsonLines {
    file: Option<AtomicFile>,
}

impl JsonLines {
    pub fn create(path: PathBuf) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
        })
    }
}

pub fn to_line(span: &Span) -> String {
    serde_json::to_string(span).expect("a Span always serializes")
}

impl JsonLines {
    fn line(&mut self, mut line: String) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.flush()
    }
}

impl Recorder for JsonLines {
    fn begin(&mut self, header: &Header) -> Result<()> {
        let line = serde_json::to_string(&Record::Header(header.clone()))
            .expect("a header always serializes");
        self.line(line)
    }

    /// The recorded file holds every span; readers apply `Span::is_lag`.
    fn takes_exit_spans(&self) -> bool {
        true
    }

    fn record(&mut self, span: &Span) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = to_line(span);
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.flush()
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        self.line(info.summary.to_line())?;
        match self.file.take() {
            Some(file) => Ok(Some(file.commit()?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};
    use crate::spans::StackKind;

    #[test]
    fn required_fields_are_present_and_stable() {
        let s = span_with(vec![stack(
            &["main (app.py:3)", "burn"],
            4,
            StackKind::OnCpu,
            0,
        )]);
        let v: serde_json::Value = serde_json::from_str(&to_line(&s)).unwrap();
        for k in [
            "pid",
            "tid",
            "thread",
            "start_unix_ns",
            "duration_ns",
            "on_cpu_ns",
            "off_cpu_ns",
            "stacks",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["duration_ns"], 100_000_000);
        assert_eq!(v["stacks"][0]["frames"][1], "burn");
        assert_eq!(v["stacks"][0]["kinds"][0], "python");
        assert_eq!(v["stacks"][0]["kinds"][1], "native");
        assert_eq!(v["stacks"][0]["samples"], 4);
        assert_eq!(v["stacks"][0]["kind"], "on-cpu");
        assert!(v.get("unfinished").is_none());
        assert!(v["stacks"][0].get("weight_ns").is_none());
    }

    #[test]
    fn on_cpu_stacks_weigh_samples_times_period() {
        let mut s = span_with(vec![
            stack(&["burn"], 4, StackKind::OnCpu, 0),
            stack(&["sleep"], 1, StackKind::OffCpu, 7_000),
        ]);
        crate::spans::weigh_on_cpu(&mut s.stacks, 1_000_000);
        let v: serde_json::Value = serde_json::from_str(&to_line(&s)).unwrap();
        assert_eq!(v["stacks"][0]["weight_ns"], 4_000_000);
        assert_eq!(v["stacks"][1]["weight_ns"], 7_000);
    }
}
