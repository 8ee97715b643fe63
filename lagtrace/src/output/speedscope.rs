//! `--speedscope FILE.json`: the blocking spans in speedscope's file format
//! (<https://www.speedscope.app/file-format-schema.json>), one sampled
//! profile per loop thread, so its time-order view reads as a timeline of
//! the stalls.
//!
//! Spans are in start order. Each span's stacks stand under a root frame
//! named by its start time and duration (`span 12:00:01.234, 120 ms`), then
//! the `[off-cpu]`-style marker of their kind. A span record keeps its
//! stacks counted, each with the time of its first sample (`offset_ns`), so
//! within a span the stacks come in the order they first appeared (a stack
//! seen again later is counted at its first place). Weights are
//! nanoseconds: on-CPU samples times the sampling period, off-CPU stacks
//! their time off the CPU.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use serde_json::{Value, json};

use super::{Recorder, TraceInfo, file::AtomicFile, fmt_ns, live::local_time};
use crate::{
    error::Result,
    spans::{Span, StackKind},
    symbolize::{Frame, FrameKind},
};

/// The root frame of a span's stacks.
pub fn span_frame_name(span: &Span) -> String {
    format!(
        "span {}, {} (#{})",
        local_time(span.start_unix_ns),
        fmt_ns(span.duration_ns),
        span.iteration
    )
}

/// One span of one thread: its start, and its stacks as frame indices.
struct SpanSamples {
    start_unix_ns: u64,
    iteration: u64,
    stacks: Vec<(Vec<usize>, u64)>,
}

pub struct SpeedscopeFile {
    file: Option<AtomicFile>,
    period_ns: u64,
    /// Shared frames (speedscope JSON objects) and their index by key.
    frames: Vec<Value>,
    index: HashMap<String, usize>,
    /// (pid, tid) → thread name and its spans.
    threads: BTreeMap<(u32, u32), (String, Vec<SpanSamples>)>,
}

impl SpeedscopeFile {
    /// Creates the file's temporary copy now (see [`AtomicFile`]).
    pub fn new(path: PathBuf, period_ns: u64) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
            period_ns,
            frames: Vec::new(),
            index: HashMap::new(),
            threads: BTreeMap::new(),
        })
    }

    fn frame(&mut self, name: String, f: Option<&Frame>) -> usize {
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        let mut v = json!({ "name": name });
        if let Some(f) = f.filter(|f| f.kind != FrameKind::Marker) {
            // As labels show it (what a recorded file keeps).
            if let Some(file) = f.short_file() {
                v["file"] = json!(file);
            }
            if let Some(line) = f.line {
                v["line"] = json!(line);
            }
        }
        self.frames.push(v);
        self.index.insert(name, self.frames.len() - 1);
        self.frames.len() - 1
    }

    fn profiles(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for ((pid, tid), (thread, spans)) in std::mem::take(&mut self.threads) {
            let mut spans = spans;
            spans.sort_by_key(|s| (s.start_unix_ns, s.iteration));
            let (mut samples, mut weights) = (Vec::new(), Vec::new());
            for s in spans {
                for (stack, w) in s.stacks {
                    samples.push(stack);
                    weights.push(w);
                }
            }
            let total: u64 = weights.iter().sum();
            out.push(json!({
                "type": "sampled",
                "name": format!("{thread}[{tid}] pid {pid}"),
                "unit": "nanoseconds",
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            }));
        }
        out
    }
}

impl Recorder for SpeedscopeFile {
    fn record(&mut self, span: &Span) -> Result<()> {
        let root = self.frame(span_frame_name(span), None);
        let mut order: Vec<&crate::spans::StackCount> = span.stacks.iter().collect();
        order.sort_by_key(|s| s.offset_ns);
        let mut stacks = Vec::with_capacity(span.stacks.len());
        for st in order {
            let mut ids = vec![root];
            if let Some(m) = st.kind.marker() {
                ids.push(self.frame(m.to_string(), None));
            }
            for f in &st.frames {
                ids.push(self.frame(f.label(), Some(f)));
            }
            let w = match st.kind {
                StackKind::OnCpu => st.samples * self.period_ns,
                _ => st.weight_ns,
            };
            stacks.push((ids, w));
        }
        self.threads
            .entry((span.pid, span.tid))
            .or_insert_with(|| (span.thread.clone(), Vec::new()))
            .1
            .push(SpanSamples {
                start_unix_ns: span.start_unix_ns,
                iteration: span.iteration,
                stacks,
            });
        Ok(())
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        let pids: Vec<String> = info.pids.iter().map(u32::to_string).collect();
        let doc = json!({
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": { "frames": std::mem::take(&mut self.frames) },
            "profiles": self.profiles(),
            "name": format!("lagtrace: blocking spans of pid {}", pids.join(", ")),
            "activeProfileIndex": 0,
            "exporter": concat!("lagtrace ", env!("CARGO_PKG_VERSION")),
        });
        let mut text = serde_json::to_string(&doc).expect("JSON values always serialize");
        text.push('\n');
        file.write_all(text.as_bytes())?;
        Ok(Some(file.commit()?))
    }
}
