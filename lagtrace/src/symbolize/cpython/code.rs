//! Code objects, read once from the target and cached by address: the
//! kernel's Python frames are (code object address, instruction offset)
//! pairs, and this turns them into `qualname (dir/file.py:line)`.
//!
//! An address can be freed and reused by another code object. Each cache
//! entry keeps a fingerprint (the `co_filename` and `co_name` pointers and
//! `co_firstlineno`) and re-reads it when the entry was last checked more
//! than `RECHECK` ago; a mismatch drops the entry and reads the object
//! anew. This is a read per code object per `RECHECK`, not per sample.
//!
//! Reads run on the [`Reader`] thread, never on the caller's (the thread
//! that drains the ring buffer): a code object whose read has not answered
//! within the reader's wait is `[unknown python]` for now, and named from
//! the late answer on a later look-up.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    layout::{CodeLayout, LineTable},
    linetable::line_of,
    mem::Mem,
    reader::{Pending, Poll, Reader},
};

/// Longest name or file name kept, in characters; longer ones end in "…".
const MAX_NAME: usize = 256;
/// Largest line table read, in bytes (real ones are a few KiB at most).
const MAX_LINETABLE: usize = 1 << 16;
/// How long a cached code object is trusted before its fingerprint is
/// checked again.
const RECHECK: Duration = Duration::from_secs(1);
/// Bound on cached code objects per process.
const MAX_CODES: usize = 1 << 16;

/// What a code object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    pub name: String,
    pub filename: String,
    pub firstlineno: i64,
    pub line_table: LineTable,
    pub linetable: Vec<u8>,
    fingerprint: [u64; 3],
}

impl CodeInfo {
    /// The line of the instruction at byte offset `offset`.
    pub fn line(&self, offset: u64) -> Option<i64> {
        line_of(self.line_table, &self.linetable, self.firstlineno, offset)
    }
}

fn fingerprint(mem: &Mem, l: &CodeLayout, code: u64) -> std::io::Result<[u64; 3]> {
    Ok([
        mem.u64(code + u64::from(l.filename))?,
        mem.u64(code + u64::from(l.name))?,
        u64::from(mem.u32(code + u64::from(l.firstlineno))?),
    ])
}

/// A `str` object's text, capped at `MAX_NAME` characters. Only compact
/// strings (all that code objects hold) are read.
pub(super) fn read_str(mem: &Mem, l: &CodeLayout, obj: u64) -> std::io::Result<String> {
    let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    let state = mem.u32(obj + u64::from(l.unicode_state))?;
    let len = mem.u64(obj + u64::from(l.unicode_length))?;
    // Bit fields of PyASCIIObject.state, 3.8-3.13: interned:2, kind:3,
    // compact:1, ascii:1 (Include/cpython/unicodeobject.h).
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 || len > 1 << 30 || !matches!(kind, 1 | 2 | 4) {
        return Err(bad());
    }
    let data = obj
        + u64::from(if ascii == 1 {
            l.unicode_ascii_size
        } else {
            l.unicode_compact_size
        });
    let n = (len as usize).min(MAX_NAME);
    let mut raw = vec![0u8; n * kind as usize];
    mem.read(data, &mut raw)?;
    let mut s: String = match kind {
        1 => raw.iter().map(|&b| char::from(b)).collect(),
        2 => raw
            .chunks_exact(2)
            .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))).unwrap_or('?'))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes(c.try_into().unwrap())).unwrap_or('?'))
            .collect(),
    };
    if (len as usize) > MAX_NAME {
        s.push('…');
    }
    Ok(s)
}

fn read_bytes(mem: &Mem, l: &CodeLayout, obj: u64) -> std::io::Result<Vec<u8>> {
    let len = mem.u64(obj + u64::from(l.bytes_size))? as usize;
    let mut b = vec![0u8; len.min(MAX_LINETABLE)];
    mem.read(obj + u64::from(l.bytes_data), &mut b)?;
    Ok(b)
}

/// Read a code object from the target.
pub fn read_code(mem: &Mem, l: &CodeLayout, code: u64) -> std::io::Result<CodeInfo> {
    let ptr = |off: u32| mem.u64(code + u64::from(off));
    let name_obj = ptr(l.qualname.unwrap_or(l.name))?;
    Ok(CodeInfo {
        name: read_str(mem, l, name_obj)?,
        filename: read_str(mem, l, ptr(l.filename)?)?,
        firstlineno: i64::from(mem.u32(code + u64::from(l.firstlineno))? as i32),
        line_table: l.line_table,
        linetable: read_bytes(mem, l, ptr(l.linetable)?)?,
        fingerprint: fingerprint(mem, l, code)?,
    })
}

struct Entry {
    info: CodeInfo,
    checked: Instant,
    /// Lines already looked up, by instruction offset (a hot loop samples
    /// the same few offsets over and over).
    lines: HashMap<u32, Option<i64>>,
}

/// Bound on remembered lines per code object.
const MAX_LINES: usize = 4096;

/// Most reads awaiting a late answer per process; past it, more code
/// objects stay unknown until the reader catches up.
const MAX_PENDING: usize = 256;

type ReadResult = std::io::Result<CodeInfo>;

/// Code objects of one process, by address.
pub struct CodeCache {
    mem: Mem,
    layout: CodeLayout,
    codes: HashMap<u64, Entry>,
    reader: Reader,
    /// Reads that did not answer within the reader's wait.
    pending: HashMap<u64, Pending<ReadResult>>,
    /// Reads of whole code objects, and entries dropped as stale.
    pub reads: u64,
    pub stale: u64,
    /// Reads that answered after the caller had stopped waiting.
    pub late: u64,
}

impl CodeCache {
    pub fn new(pid: u32, layout: CodeLayout, reader: Reader) -> Self {
        Self {
            mem: Mem { pid },
            layout,
            codes: HashMap::new(),
            reader,
            pending: HashMap::new(),
            reads: 0,
            stale: 0,
            late: 0,
        }
    }

    /// Whether the cached entry at `code` still holds: its fingerprint is
    /// re-read (on the reader thread) once per `RECHECK`. With no answer in
    /// time the entry is kept and checked again on the next look-up.
    fn recheck(&mut self, code: u64, now: Instant) {
        let Some(e) = self.codes.get_mut(&code) else {
            return;
        };
        if now.duration_since(e.checked) < RECHECK {
            return;
        }
        let (mem, layout) = (self.mem, self.layout);
        match self.reader.run(move || fingerprint(&mem, &layout, code)).0 {
            Poll::Ready(Ok(f)) if f == e.info.fingerprint => e.checked = now,
            Poll::NotYet => {}
            _ => {
                self.stale += 1;
                self.codes.remove(&code);
            }
        }
    }

    /// The answer of a read of `code`: a new one, or one started earlier.
    fn read(&mut self, code: u64) -> Poll<ReadResult> {
        if let Some(p) = self.pending.get(&code) {
            let answer = p.poll();
            if !matches!(answer, Poll::NotYet) {
                self.pending.remove(&code);
                self.late += 1;
            }
            return answer;
        }
        self.reads += 1;
        let (mem, layout) = (self.mem, self.layout);
        let (answer, pending) = self.reader.run(move || read_code(&mem, &layout, code));
        if matches!(answer, Poll::NotYet) && self.pending.len() < MAX_PENDING {
            self.pending.insert(code, pending);
        }
        answer
    }

    /// A read of `code` is still running (its answer comes later).
    pub fn is_pending(&self, code: u64) -> bool {
        self.pending.contains_key(&code)
    }

    /// The code object at `code`, from the cache when its fingerprint holds.
    pub fn get(&mut self, code: u64) -> Option<&CodeInfo> {
        let now = Instant::now();
        self.recheck(code, now);
        if !self.codes.contains_key(&code) {
            let Poll::Ready(Ok(info)) = self.read(code) else {
                return None;
            };
            if self.codes.len() >= MAX_CODES {
                self.codes.clear();
            }
            self.codes.insert(
                code,
                Entry {
                    info,
                    checked: now,
                    lines: HashMap::new(),
                },
            );
        }
        self.codes.get(&code).map(|e| &e.info)
    }

    /// The code object at `code` and the line of `offset` in it.
    pub fn get_line(&mut self, code: u64, offset: u32) -> Option<(&CodeInfo, Option<i64>)> {
        self.get(code)?;
        let e = self.codes.get_mut(&code)?;
        if e.lines.len() >= MAX_LINES {
            e.lines.clear();
        }
        let line = *e
            .lines
            .entry(offset)
            .or_insert_with(|| e.info.line(u64::from(offset)));
        Some((&e.info, line))
    }
}
