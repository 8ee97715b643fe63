//! `--pprof FILE.pb.gz`: the blocking spans as a gzipped pprof profile, the
//! format of `go tool pprof`, Pyroscope, Grafana and Parca.
//!
//! Two sample types: `samples/count` (on-CPU samples, or times the thread
//! left the CPU there) and `wall/nanoseconds` (on-CPU samples times the
//! sampling period, plus the time spent off the CPU, so off-CPU time counts
//! as wall time). One pprof sample per stack of a span, labelled with pid,
//! thread, tid, span id, cause, task and blame frame. Functions, locations
//! and strings are deduplicated. The messages are written by hand after
//! google/pprof's `proto/profile.proto` (no protoc).
use std::{collections::HashMap, io::Write, path::PathBuf};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::{Recorder, TraceInfo, file::AtomicFile, records::Header};
use crate::{
    error::{Error, Result},
    spans::{Span, StackKind, blame_of},
    symbolize::{Frame, FrameKind},
};

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds a profile: strings, functions and locations deduplicated.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    /// By (function, line).
    locations: HashMap<(u64, i64), u64>,
}

impl Builder {
    fn new(period_ns: u64) -> Self {
        let mut b = Self::default();
        b.str("");
        let vt = |b: &mut Self, t: &str, u: &str| ValueType {
            r#type: b.str(t),
            unit: b.str(u),
        };
        b.profile.sample_type = vec![
            vt(&mut b, "samples", "count"),
            vt(&mut b, "wall", "nanoseconds"),
        ];
        b.profile.period_type = Some(vt(&mut b, "wall", "nanoseconds"));
        b.profile.period = period_ns as i64;
        b.profile.default_sample_type = b.str("wall");
        b
    }

    fn str(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// The location of a frame: its function named as the code names it
    /// (the label where there is no source file, so unknown addresses and
    /// kernel frames stay told apart).
    fn location(&mut self, f: &Frame) -> u64 {
        // Files as labels show them (what a recorded file keeps), so a
        // report writes the same profile as the live run.
        let (name, file) = match (f.short_file(), f.kind) {
            (Some(file), FrameKind::Native | FrameKind::Python | FrameKind::Js) => {
                (f.function.clone(), file)
            }
            _ => (f.label(), String::new()),
        };
        let (name, file) = (self.str(&name), self.str(&file));
        let next = self.profile.function.len() as u64 + 1;
        let function_id = *self.functions.entry((name, file)).or_insert(next);
        if function_id == next {
            self.profile.function.push(Function {
                id: next,
                name,
                system_name: name,
                filename: file,
            });
        }
        let line = i64::from(f.line.unwrap_or(0));
        let next = self.profile.location.len() as u64 + 1;
        let id = *self.locations.entry((function_id, line)).or_insert(next);
        if id == next {
            self.profile.location.push(Location {
                id,
                line: vec![Line { function_id, line }],
            });
        }
        id
    }

    fn label_str(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.str(key),
            str: self.str(value),
            num: 0,
        }
    }

    fn label_num(&mut self, key: &str, num: u64) -> Label {
        Label {
            key: self.str(key),
            str: 0,
            num: num as i64,
        }
    }

    fn add(&mut self, span: &Span, period_ns: u64) {
        let mut labels = vec![
            self.label_num("pid", u64::from(span.pid)),
            self.label_num("tid", u64::from(span.tid)),
            self.label_str("thread", &span.thread),
            self.label_str("span_id", &span_id(span)),
        ];
        if let Some(c) = &span.cause {
            labels.push(self.label_str("cause", c));
        }
        if let Some(t) = &span.task {
            labels.push(self.label_str("task", t));
        }
        if let Some(t) = &span.task_name {
            labels.push(self.label_str("task_name", t));
        }
        if let Some(b) = blame_of(span) {
            labels.push(self.label_str("blame", &b));
        }
        for stack in &span.stacks {
            let mut ids: Vec<u64> = stack
                .frames
                .iter()
                .rev()
                .map(|f| self.location(f))
                .collect();
            if let Some(m) = stack.kind.marker() {
                ids.push(self.location(&Frame::marker(m)));
            }
            let wall = match stack.kind {
                StackKind::OnCpu => stack.samples * period_ns,
                _ => stack.weight_ns,
            };
            self.profile.sample.push(Sample {
                location_id: ids,
                value: vec![stack.samples as i64, wall as i64],
                label: labels.clone(),
            });
        }
    }
}

/// `pid/tid/iteration`: unique per span of a trace.
pub fn span_id(span: &Span) -> String {
    format!("{}/{}/{}", span.pid, span.tid, span.iteration)
}

pub struct PprofFile {
    file: Option<AtomicFile>,
    builder: Builder,
    period_ns: u64,
    first_ns: Option<u64>,
    last_ns: u64,
}

impl PprofFile {
    /// Creates the file's temporary copy now (see [`AtomicFile`]).
    pub fn new(path: PathBuf, period_ns: u64) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
            builder: Builder::new(period_ns),
            period_ns,
            first_ns: None,
            last_ns: 0,
        })
    }
}

impl Recorder for PprofFile {
    fn begin(&mut self, header: &Header) -> Result<()> {
        self.first_ns = Some(header.start_unix_ns);
        Ok(())
    }

    fn record(&mut self, span: &Span) -> Result<()> {
        self.builder.add(span, self.period_ns);
        let start = *self.first_ns.get_or_insert(span.start_unix_ns);
        self.first_ns = Some(start.min(span.start_unix_ns));
        self.last_ns = self.last_ns.max(span.start_unix_ns + span.duration_ns);
        Ok(())
    }

    fn finish(&mut self, _info: &TraceInfo) -> Result<Option<PathBuf>> {
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        let p = &mut self.builder.profile;
        p.time_nanos = self.first_ns.unwrap_or(0) as i64;
        p.duration_nanos = self.last_ns.saturating_sub(self.first_ns.unwrap_or(0)) as i64;
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&p.encode_to_vec())
            .and_then(|()| gz.flush())
            .map_err(|e| Error::io("compressing the pprof profile", e))?;
        let bytes = gz
            .finish()
            .map_err(|e| Error::io("compressing the pprof profile", e))?;
        file.write_all(&bytes)?;
        Ok(Some(file.commit()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};

    #[test]
    fn functions_and_locations_are_shared_and_wall_counts_off_cpu() {
        let mut s = span_with(vec![
            stack(
                &["main (app.py:3)", "burn (app.py:9)"],
                4,
                StackKind::OnCpu,
                0,
            ),
            stack(
                &["main (app.py:3)", "read_[k]"],
                1,
                StackKind::OffCpu,
                30_000_000,
            ),
        ]);
        s.cause = Some("cpu 60%, blocked 40%".into());
        let mut b = Builder::new(10_000_000);
        b.add(&s, 10_000_000);
        b.add(&s, 10_000_000);
        let p = Profile::decode(b.profile.encode_to_vec().as_slice()).unwrap();
        assert_eq!(p.sample.len(), 4);
        // main, burn, read_[k], [off-cpu]
        assert_eq!(p.location.len(), 4);
        assert_eq!(p.function.len(), 4);
        assert_eq!(p.sample[0].value, vec![4, 40_000_000]);
        assert_eq!(p.sample[1].value, vec![1, 30_000_000]);
        let name = |id: u64| {
            let loc = &p.location[id as usize - 1];
            let f = &p.function[loc.line[0].function_id as usize - 1];
            p.string_table[f.name as usize].clone()
        };
        assert_eq!(name(p.sample[0].location_id[0]), "burn");
        assert_eq!(name(*p.sample[1].location_id.last().unwrap()), "[off-cpu]");
        let keys: Vec<&str> = p.sample[0]
            .label
            .iter()
            .map(|l| p.string_table[l.key as usize].as_str())
            .collect();
        assert_eq!(keys, ["pid", "tid", "thread", "span_id", "cause"]);
        let uniq: std::collections::HashSet<&String> = p.string_table.iter().collect();
        assert_eq!(uniq.len(), p.string_table.len(), "strings deduplicated");
    }
}
