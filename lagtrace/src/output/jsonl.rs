//! `--spans FILE`: one JSON object per blocking span, written and flushed as
//! each span ends, so the file is useful even if lagtrace is killed.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
};

use super::{Recorder, TraceInfo};
use crate::{
    error::{Error, Result},
    spans::Span,
};

pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    pub fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
        })
    }
}

pub fn to_line(span: &Span) -> String {
    serde_json::to_string(span).expect("a Span always serializes")
}

impl Recorder for JsonLines {
    fn record(&mut self, span: &Span) -> Result<()> {
        let ctx = || format!("writing {}", self.path.display());
        writeln!(self.out, "{}", to_line(span)).map_err(|e| Error::io(ctx(), e))?;
        self.out.flush().map_err(|e| Error::io(ctx(), e))
    }

    fn finish(&mut self, _info: &TraceInfo) -> Result<Option<PathBuf>> {
        self.out
            .flush()
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        Ok(Some(self.path.clone()))
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
        assert_eq!(v["stacks"][0]["samples"], 4);
        assert_eq!(v["stacks"][0]["kind"], "on-cpu");
        assert!(v.get("unfinished").is_none());
        assert!(v["stacks"][0].get("weight_ns").is_none());
    }
}
