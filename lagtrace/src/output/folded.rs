//! `--folded FILE`: the stacks of all blocking spans in FlameGraph's folded
//! format, for flamegraph.pl, speedscope or inferno.
use std::path::PathBuf;

use super::{Recorder, TraceInfo, file::AtomicFile};
use crate::{aggregate::fold::Folded, error::Result, spans::Span};

pub struct FoldedFile {
    file: Option<AtomicFile>,
    folded: Folded,
    period_ns: u64,
    with_pid: bool,
}

impl FoldedFile {
    /// Creates the file's temporary copy now (see [`AtomicFile`]).
    pub fn new(path: PathBuf, period_ns: u64, with_pid: bool) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
            folded: Folded::default(),
            period_ns,
            with_pid,
        })
    }
}

impl Recorder for FoldedFile {
    fn record(&mut self, span: &Span) -> Result<()> {
        self.folded.add(span, self.period_ns, self.with_pid);
        Ok(())
    }

    fn folded(&self) -> Option<&Folded> {
        Some(&self.folded)
    }

    fn finish(&mut self, _info: &TraceInfo) -> Result<Option<PathBuf>> {
        let mut text: String = self.folded.lines().collect::<Vec<_>>().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        file.write_all(text.as_bytes())?;
        Ok(Some(file.commit()?))
    }
}
