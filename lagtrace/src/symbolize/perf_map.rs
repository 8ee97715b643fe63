//! JIT symbols from a target's perf map (`/tmp/perf-PID.map`, written by
//! node `--perf-basic-prof` and python 3.12+ `-X perf`), parsed here rather
//! than by blazesym, because the file is the target's to shape: it may be a
//! symlink, a FIFO, 2 GB of holes, or garbage.
//!
//! The file is opened through [`untrusted`](super::untrusted) and read line
//! by line, at most [`MAX_BYTES`] in all and for at most [`TIME_BUDGET`] per
//! read; a line that does not parse (or is longer than [`MAX_LINE`]) is
//! skipped alone. A map that grows is read on from where the last read
//! stopped. It must never block, and never name an address with a line it
//! did not parse whole. A map older than the process (pid reuse) or than
//! its last exec is ignored (see [`perf_map_owner`](super::perf_map_owner)).
use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use super::{perf_map_owner::Owner, untrusted};

/// Most bytes read from one perf map over the whole trace.
pub const MAX_BYTES: u64 = 64 << 20;
/// Longest line kept; longer ones (names included) are skipped.
pub const MAX_LINE: usize = 8192;
/// Time one (re)read may take.
pub const TIME_BUDGET: Duration = Duration::from_millis(500);
/// Most entries kept, so that memory stays bounded whatever the file holds.
pub const MAX_ENTRIES: usize = 2_000_000;

/// One symbol: `[start, end)` and its name; `seq` orders lines, since a
/// later line for the same code replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    start: u64,
    end: u64,
    seq: u64,
    name: Box<str>,
}

/// What one read found, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    pub lines: u64,
    pub bad_lines: u64,
    /// Stopped at the byte cap, the entry cap, or the time budget.
    pub capped: bool,
}

/// The parsed symbols of one perf map.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<Entry>,
    sorted: bool,
    /// (dev, inode) of the file read, how far it was read, and its mtime
    /// then (same length, newer mtime: rewritten in place).
    file: Option<(u64, u64)>,
    mtime: (i64, i64),
    offset: u64,
    /// A partial last line, completed by the next read.
    partial: Vec<u8>,
    seq: u64,
    /// The process the map must have been written by, once known.
    owner: Option<Owner>,
}

/// Parse one line: `START SIZE name`, both numbers hex, `0x` optional.
pub fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok();
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let (start, size) = (hex(start)?, hex(size)?);
    let name = name.trim_end_matches(['\r', '\n']);
    if size == 0 || name.is_empty() {
        return None;
    }
    Some((start, start.checked_add(size)?, name))
}

impl PerfMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Read what is new in `file` (from the start if it is another file or
    /// shrank). Never blocks: `file` was opened `O_NONBLOCK`, and a regular
    /// file never waits anyway.
    pub fn update(&mut self, mut file: File) -> io::Result<ReadStats> {
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let rewritten = meta.len() == self.offset && mtime != self.mtime;
        if self.file != Some(id) || meta.len() < self.offset || rewritten {
            *self = Self {
                file: Some(id),
                owner: self.owner,
                ..Self::default()
            };
        }
        self.mtime = mtime;
        file.seek(SeekFrom::Start(self.offset))?;
        let deadline = Instant::now() + TIME_BUDGET;
        let mut stats = ReadStats::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let left = MAX_BYTES.saturating_sub(self.offset);
            if left == 0 || self.entries.len() >= MAX_ENTRIES || Instant::now() > deadline {
                stats.capped = true;
                break;
            }
            let want = buf.len().min(left as usize);
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.offset += n as u64;
            self.feed(&buf[..n], &mut stats);
        }
        Ok(stats)
    }

    /// [`update`](Self::update) if `owner` wrote `file`; else forget what
    /// was read and return `None`.
    pub fn update_if_owned(&mut self, file: File, owner: Owner) -> io::Result<Option<ReadStats>> {
        self.owner = Some(owner);
        if !owner.wrote(file.metadata()?.modified()?) {
            self.forget();
            return Ok(None);
        }
        self.update(file).map(Some)
    }

    /// Drop every entry (the map is another program's), keeping the owner.
    fn forget(&mut self) {
        *self = Self {
            owner: self.owner,
            ..Self::default()
        };
    }

    /// Check whether `pid` exec'd another program since the map was read:
    /// if so the entries are the old program's and are dropped. Cheap (one
    /// `stat`); nothing to do before a map was read.
    pub fn check_exec(&mut self, pid: u32) {
        if let Some(owner) = self.owner.as_mut()
            && owner.exec_seen(pid)
        {
            log::debug!("pid {pid} exec'd: its perf map is read again");
            self.forget();
        }
    }

    fn feed(&mut self, mut chunk: &[u8], stats: &mut ReadStats) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = chunk.split_at(i);
            chunk = &rest[1..];
            if self.partial.len() > MAX_LINE {
                // The end of a line too long to keep: skipped.
                self.partial.clear();
                stats.lines += 1;
                stats.bad_lines += 1;
                continue;
            }
            let whole = if self.partial.is_empty() {
                self.add_line(line, stats);
                continue;
            } else {
                let mut w = std::mem::take(&mut self.partial);
                w.extend_from_slice(line);
                w
            };
            self.add_line(&whole, stats);
        }
        // Keep at most MAX_LINE + 1 bytes of an unfinished line: enough to
        // know it is too long.
        let room = (MAX_LINE + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn add_line(&mut self, line: &[u8], stats: &mut ReadStats) {
        stats.lines += 1;
        let parsed = (line.len() <= MAX_LINE)
            .then(|| std::str::from_utf8(line).ok())
            .flatten()
            .and_then(parse_line);
        match parsed {
            Some((start, end, name)) => {
                self.seq += 1;
                self.entries.push(Entry {
                    start,
                    end,
                    seq: self.seq,
                    name: name.into(),
                });
                self.sorted = false;
            }
            None => stats.bad_lines += 1,
        }
    }

    /// Read what is new in the perf map of `pid`: `/tmp/perf-NSPID.map`
    /// inside its root, opened as untrusted.
    pub fn refresh(&mut self, pid: u32) {
        let ns_pid = crate::target::innermost_id(&format!("/proc/{pid}/status")).unwrap_or(pid);
        let path = format!("/tmp/perf-{ns_pid}.map");
        let Some(owner) = self.owner.or_else(|| Owner::of(pid)) else {
            return;
        };
        match untrusted::open_own_file(pid, &path) {
            Ok(f) => match self.update_if_owned(f, owner) {
                Ok(None) => log::debug!("perf map of pid {pid}: older than the process, ignored"),
                Ok(Some(s)) if s.bad_lines > 0 || s.capped => log::debug!(
                    "perf map of pid {pid}: {} lines, {} skipped, capped: {}",
                    s.lines,
                    s.bad_lines,
                    s.capped
                ),
                Ok(Some(_)) => {}
                Err(e) => log::debug!("reading the perf map of pid {pid}: {e}"),
            },
            Err(e) => log::debug!("{e}"),
        }
    }

    /// The name of the code at `addr`: of the entries that cover it, the
    /// one written last.
    pub fn lookup(&mut self, addr: u64) -> Option<&str> {
        if !self.sorted {
            self.entries.sort_by_key(|e| (e.start, e.seq));
            self.sorted = true;
        }
        let i = self.entries.partition_point(|e| e.start <= addr);
        // Entries overlap only when code is replaced; look a little way back.
        self.entries[..i]
            .iter()
            .rev()
            .take(64)
            .filter(|e| addr < e.end)
            .max_by_key(|e| e.seq)
            .map(|e| &*e.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, io::Write};

    fn temp(tag: &str, text: &[u8]) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("lagtrace-perfmap-{}-{tag}", std::process::id()));
        fs::write(&p, text).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn a_bad_line_skips_only_itself() {
        let text =
            b"1000 10 first\nnot a line\n\xff\xfe 10 bad\n2000 0x20 second name\n3000 0 empty\n";
        let (p, f) = temp("bad", text);
        let mut m = PerfMap::default();
        let s = m.update(f).unwrap();
        assert_eq!((s.lines, s.bad_lines, s.capped), (5, 3, false));
        assert_eq!(m.lookup(0x1005), Some("first"));
        assert_eq!(m.lookup(0x201f), Some("second name"));
        assert_eq!(m.lookup(0x2020), None);
        assert_eq!(m.lookup(0xfff), None);
        // Appended later: read on from where it stopped, a later line wins.
        let mut w = fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"1000 10 replaced\n4000 1").unwrap();
        let s = m.update(File::open(&p).unwrap()).unwrap();
        assert_eq!(s.lines, 1);
        assert_eq!(m.lookup(0x1005), Some("replaced"));
        w.write_all(b"0 tail\n").unwrap();
        m.update(File::open(&p).unwrap()).unwrap();
        assert_eq!(m.lookup(0x4005), Some("tail"));
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn a_huge_line_is_skipped_and_memory_stays_small() {
        let mut text = vec![b'a'; 3 * MAX_LINE];
        text.extend_from_slice(b"\n5000 10 after\n");
        let (p, f) = temp("huge", &text);
        let mut m = PerfMap::default();
        let s = m.update(f).unwrap();
        let _ = fs::remove_file(&p);
        assert_eq!((s.lines, s.bad_lines), (2, 1));
        assert!(m.partial.capacity() <= 4 * MAX_LINE);
        assert_eq!(m.lookup(0x5000), Some("after"));
    }

    #[test]
    fn a_map_older_than_its_owner_is_ignored() {
        use std::time::{Duration, SystemTime};
        let (p, f) = temp("stale", b"1000 10 stale_fn\n");
        let written = f.metadata().unwrap().modified().unwrap();
        let mut m = PerfMap::default();
        // Written a minute before the process started: another's.
        let later = Owner::at(written + Duration::from_secs(60));
        assert_eq!(m.update_if_owned(f, later).unwrap(), None);
        assert_eq!(m.lookup(0x1005), None);
        // The same file, written after the start: read.
        let f = File::open(&p).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(120))
            .unwrap();
        let s = m.update_if_owned(f, later).unwrap().unwrap();
        assert_eq!(s.lines, 1);
        assert_eq!(m.lookup(0x1005), Some("stale_fn"));
        // Backdated again (replaced by an older copy): forgotten.
        let f = File::open(&p).unwrap();
        f.set_modified(written - Duration::from_secs(3600)).unwrap();
        assert_eq!(m.update_if_owned(f, later).unwrap(), None);
        assert_eq!(m.lookup(0x1005), None);
        let _ = fs::remove_file(&p);
    }
}
