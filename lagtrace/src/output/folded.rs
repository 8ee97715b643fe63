//! `--folded FILE`: the stacks of all blocking spans in FlameGraph's folded
//! format, for flamegraph.pl, speedscope or inferno.
use std::{fs, path::PathBuf};

use super::{Recorder, TraceInfo};
use crate::{
    aggregate::fold::Folded,
    error::{Error, Result},
    spans::Span,
};

pub struct FoldedFile {
    path: PathBuf,
    folded: Folded,
    period_ns: u64,
    with_pid: bool,
}

impl FoldedFile {
    pub fn new(path: PathBuf, period_ns: u64, with_pid: bool) -> Self {
        Self {
            path,
            folded: Folded::default(),
            period_ns,
            with_pid,
        }
    }
}

impl Recorder for FoldedFile {
    fn record(&mut self, span: &Span) -> Result<()> {
        self.folded.add(span, self.period_ns, self.with_pid);
        Ok(())
    }

    fn finish(&mut self, _info: &TraceInfo) -> Result<Option<PathBuf>> {
        let mut text: String = self.folded.lines().collect::<Vec<_>>().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        fs::write(&self.path, text)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        Ok(Some(self.path.clone()))
    }
}
