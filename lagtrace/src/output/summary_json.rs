//! `--summary-json FILE`: the summary record (per process and thread
//! figures, top causes, lagtrace's health) as one JSON object, for scripts
//! and the bench. The same object ends a `--spans` file.
use std::path::PathBuf;

use super::{Recorder, TraceInfo, file::AtomicFile};
use crate::{error::Result, spans::Span};

pub struct SummaryJsonFile {
    file: Option<AtomicFile>,
}

impl SummaryJsonFile {
    /// Creates the file's temporary copy now (see [`AtomicFile`]).
    pub fn new(path: PathBuf) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
        })
    }
}

impl Recorder for SummaryJsonFile {
    fn record(&mut self, _span: &Span) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        let mut text =
            serde_json::to_string_pretty(&info.summary).expect("a summary always serializes");
        text.push('\n');
        file.write_all(text.as_bytes())?;
        Ok(Some(file.commit()?))
    }
}
