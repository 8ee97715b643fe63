//! What the native symbolizer remembers about one process: its mappings as
//! read from `/proc/PID/maps` and when each was surely there, the frames
//! already worked out per file offset, and its perf map. It only reads
//! `/proc` and remembers; it must not call blazesym or name functions
//! (`native.rs`).
//!
//! A library unloaded and another loaded at the same address must never be
//! given the old one's names: frames are keyed by the file (device, inode,
//! offset), not by address, and a sample is matched only to a mapping that
//! reads of the maps show was there at the sample's time (between the read
//! that first showed it and the last read that still did). A sample that
//! falls where the maps changed gets `[unknown]`.
//!
//! Reads are polls, so a library loaded and unloaded entirely between two
//! reads (A, then B, then A again at the same address) would be invisible.
//! Once a process is seen changing its file mappings, its maps are read on
//! every drain tick, and a window is never carried across a gap between
//! reads longer than [`MAX_GAP_NS`] (lagtrace starved of CPU): samples in
//! such a gap get `[unknown]`, not a name.
use std::{
    collections::HashMap,
    fs, io,
    time::{Duration, Instant},
};

use super::{frame::Frame, perf_map::PerfMap};
use crate::clock::WallClock;

/// Past this many cached frames a process's cache starts over.
pub const MAX_CACHED: usize = 200_000;
/// Mappings gone from the maps that are still remembered, for samples
/// taken before they went.
const MAX_RETIRED: usize = 512;
/// Longest gap between two reads across which a process that changes its
/// mappings keeps a mapping's window.
pub const MAX_GAP_NS: u64 = 50_000_000;
/// Re-reads allowed per second and process.
const REREADS_PER_SECOND: u32 = 200;
/// How long the newest read of a process never seen changing its file
/// mappings stands for "now": the drain tick reads such a process this
/// often anyway (`NativeSymbolizer::refresh`), so samples between two reads
/// cost no read of their own. Reading the maps of a Python process costs
/// about 100 µs of kernel formatting; once per span it was a third of
/// lagtrace's CPU during a stall storm.
pub const STABLE_FRESH_NS: u64 = 100_000_000;

/// One line of `/proc/PID/maps`, and when it was surely mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Device (major, minor) and inode of the file; 0 for anonymous memory.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path or pseudo-name (`[vdso]`), without ` (deleted)`; `None` for
    /// anonymous memory (where JIT code lives).
    pub path: Option<String>,
    /// The file was replaced or removed on disk: what is there now is not
    /// what is mapped, so its symbols must not be used.
    pub deleted: bool,
    /// Mapped executable (`x` in the permissions).
    pub exec: bool,
    /// Monotonic times between which reads of the maps showed it: from
    /// after the first read that did (0 for the first read of all), to
    /// before the last read that did.
    pub valid_from_ns: u64,
    pub last_seen_ns: u64,
}

impl Mapping {
    /// The module's base name, e.g. `libc.so.6`.
    pub fn name(&self) -> Option<&str> {
        let path = self.path.as_deref()?;
        Some(path.rsplit('/').next().unwrap_or(path))
    }

    /// `[unknown] (libfoo.so+0x1a2b)`, or `[unknown] 0x7f..` for anonymous memory.
    pub fn unknown(&self, addr: u64) -> Frame {
        match &self.path {
            Some(path) => Frame::unknown_native(Some(path.clone()), self.file_offset(addr)),
            None => unknown_addr(addr),
        }
    }

    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }

    /// The same mapping of the same file.
    pub(super) fn same(&self, o: &Mapping) -> bool {
        (
            self.start,
            self.end,
            self.offset,
            self.dev,
            self.inode,
            &self.path,
            self.deleted,
        ) == (o.start, o.end, o.offset, o.dev, o.inode, &o.path, o.deleted)
    }

    fn covers(&self, addr: u64, ts_ns: u64) -> bool {
        self.start <= addr
            && addr < self.end
            && self.valid_from_ns <= ts_ns
            && ts_ns <= self.last_seen_ns
    }
}

/// `[unknown] 0x7f..`: code in no mapping known.
pub fn unknown_addr(addr: u64) -> Frame {
    Frame::unknown_native(None, addr)
}

/// Parse the text of `/proc/PID/maps`; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
    maps.sort_by_key(|m| m.start);
    maps
}

fn parse_line(line: &str) -> Option<Mapping> {
    // address perms offset dev inode [path], the path may hold spaces.
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let mut rest = rest.trim_start();
    let mut fields = [""; 4];
    for field in &mut fields {
        let (f, r) = rest.split_once(' ').unwrap_or((rest, ""));
        *field = f;
        rest = r.trim_start();
    }
    let [perms, offset, dev, inode] = fields;
    let (maj, min) = dev.split_once(':')?;
    let (path, deleted) = match rest.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
        deleted,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        valid_from_ns: 0,
        last_seen_ns: 0,
    })
}

/// What a frame is cached under: the code, not the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKey {
    /// (major, minor, inode, file offset).
    File(u32, u32, u64, u64),
    Vdso(u64),
}

/// The state kept per traced process.
#[derive(Debug, Default)]
pub struct PidCache {
    pub maps: Vec<Mapping>,
    /// Mappings no longer in the maps, newest last.
    pub retired: Vec<Mapping>,
    pub maps_read: bool,
    /// Re-reads of the maps in the current one-second window: each span
    /// needs a read newer than its samples, and a flood of spans must not
    /// cost one read each.
    pub rereads: (Option<Instant>, u32),
    /// Frames (outermost first) per piece of code.
    pub frames: HashMap<FrameKey, Vec<Frame>>,
    pub perf_map: PerfMap,
    /// When the perf map was last looked at, and how often this second.
    pub perf_map_reads: (Option<Instant>, u32),
    /// Monotonic time after the last read of the maps.
    pub read_after_ns: u64,
    /// The process has loaded or unloaded a file mapping since the first read.
    pub churns: bool,
}

impl PidCache {
    /// The current mapping at `addr`, whenever it was mapped.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// The mapping at `addr` at monotonic time `ts_ns`, if the reads show
    /// one mapping surely there then.
    pub fn find_at(&self, addr: u64, ts_ns: u64) -> Option<&Mapping> {
        let mut found: Option<&Mapping> = None;
        let current = self.find(addr).filter(|m| m.covers(addr, ts_ns));
        for m in current
            .into_iter()
            .chain(self.retired.iter().filter(|m| m.covers(addr, ts_ns)))
        {
            match found {
                Some(f) if !(f.dev == m.dev && f.inode == m.inode && f.path == m.path) => {
                    return None;
                }
                _ => found = Some(m),
            }
        }
        found
    }

    /// The newest time the maps are known for.
    pub fn read_ns(&self) -> u64 {
        self.maps.first().map_or(0, |m| m.last_seen_ns)
    }

    /// Read `/proc/PID/maps` again. On failure (the process exited) the
    /// mappings known before are kept, to still name modules in unknowns.
    pub fn reread_maps(&mut self, pid: u32) -> io::Result<()> {
        let now = Instant::now();
        self.rereads = match self.rereads {
            (Some(start), n) if now.duration_since(start) < Duration::from_secs(1) => {
                (Some(start), n + 1)
            }
            _ => (Some(now), 1),
        };
        let before = WallClock::now_mono_ns();
        let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let after = WallClock::now_mono_ns();
        let first = !self.maps_read;
        self.maps_read = true;
        // Across a long gap a churning process may have swapped and swapped
        // back: nothing carries over.
        let carry = !(self.churns && before.saturating_sub(self.read_after_ns) > MAX_GAP_NS);
        self.read_after_ns = after;
        let mut new = parse_maps(&text);
        let mut old = std::mem::take(&mut self.maps).into_iter().peekable();
        let mut changed = false;
        for m in &mut new {
            // Both lists are sorted by start: carry over what did not change.
            while let Some(o) = old.next_if(|o| o.start < m.start) {
                changed |= o.inode != 0;
                self.retired.push(o);
            }
            match old.next_if(|o| o.same(m)) {
                Some(o) if carry => m.valid_from_ns = o.valid_from_ns,
                Some(o) => {
                    // Still mapped, but unknown in the gap: the old window
                    // ends at its last read, the new one starts now.
                    self.retired.push(o);
                    m.valid_from_ns = after;
                }
                None => {
                    changed |= m.inode != 0;
                    m.valid_from_ns = if first { 0 } else { after };
                }
            }
            m.last_seen_ns = before;
        }
        for o in old {
            changed |= o.inode != 0;
            self.retired.push(o);
        }
        self.churns |= changed && !first;
        if self.retired.len() > MAX_RETIRED {
            let cut = self.retired.len() - MAX_RETIRED;
            self.retired.drain(..cut);
        }
        self.maps = new;
        Ok(())
    }

    /// Whether the newest read may stand for the maps at any later time:
    /// the process was never seen changing its file mappings, and the read
    /// is recent (or another would be over the budget), and every address
    /// of the sample is in it (a library loaded since must be read).
    pub fn newest_stands_for_now(&self, addrs: &[u64]) -> bool {
        if self.churns || !self.maps_read {
            return false;
        }
        let fresh = WallClock::now_mono_ns().saturating_sub(self.read_after_ns) < STABLE_FRESH_NS;
        (fresh || !self.may_reread()) && addrs.iter().all(|&a| self.find(a).is_some())
    }

    /// Whether another re-read fits the budget of this second.
    pub fn may_reread(&self) -> bool {
        within_budget(self.rereads, REREADS_PER_SECOND)
    }

    /// Count a look at the perf map, if it fits the budget of this second.
    pub fn may_read_perf_map(&mut self) -> bool {
        if !within_budget(self.perf_map_reads, 8) {
            return false;
        }
        let now = Instant::now();
        self.perf_map_reads = match self.perf_map_reads {
            (Some(start), n) if now.duration_since(start) < Duration::from_secs(1) => {
                (Some(start), n + 1)
            }
            _ => (Some(now), 1),
        };
        true
    }

    pub fn insert(&mut self, key: FrameKey, frames: Vec<Frame>) {
        if self.frames.len() >= MAX_CACHED {
            self.frames.clear();
        }
        self.frames.insert(key, frames);
    }
}

fn within_budget(window: (Option<Instant>, u32), per_second: u32) -> bool {
    match window {
        (Some(start), n) => start.elapsed() >= Duration::from_secs(1) || n < per_second,
        (None, _) => true,
    }
}

/// The addresses to look up, innermost first: the stack ends at the first
/// 0; all but the interrupted instruction are return addresses, so step
/// back into the call instruction to get its function, line and inlining.
pub fn lookup_addrs(ips: &[u64]) -> Vec<u64> {
    ips.iter()
        .take_while(|&&ip| ip != 0)
        .enumerate()
        .map(|(i, &ip)| if i == 0 { ip } else { ip - 1 })
        .collect()
}

/// The distinct addresses for which `cached` is false, in first-seen order.
pub fn uncached(addrs: &[u64], cached: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut todo: Vec<u64> = Vec::new();
    for &a in addrs {
        if !cached(a) && !todo.contains(&a) {
            todo.push(a);
        }
    }
    todo
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c0a00000-55d4c0a21000 r--p 00000000 08:01 1234                       /usr/bin/python3.12
7f0000001000-7f0000003000 r-xp 00002000 08:01 99 /opt/my lib/libfoo.so (deleted)
7f0000010000-7f0000020000 rwxp 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_paths_deleted_and_anonymous() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].name(), Some("python3.12"));
        assert_eq!(maps[1].path.as_deref(), Some("/opt/my lib/libfoo.so"));
        assert!(maps[1].deleted && !maps[0].deleted);
        assert_eq!(
            maps[1].unknown(0x7f0000001a2b).label(),
            "[unknown] (libfoo.so+0x2a2b)"
        );
        assert_eq!(maps[2].path, None);
        assert_eq!(
            maps[2].unknown(0x7f0000010010).label(),
            "[unknown] 0x7f0000010010"
        );
        assert_eq!(maps[3].name(), Some("[vdso]"));
        assert_eq!((maps[0].dev, maps[0].inode), ((8, 1), 1234));
    }

    #[test]
    fn finds_the_mapping_of_an_address() {
        let c = PidCache {
            maps: parse_maps(MAPS),
            ..Default::default()
        };
        assert_eq!(c.find(0x7f0000001000).map(|m| m.offset), Some(0x2000));
        assert!(c.find(0x7f0000003000).is_none());
        assert!(c.find(0x10).is_none());
        assert!(c.find(u64::MAX).is_none());
    }

    #[test]
    fn a_sample_gets_only_a_mapping_surely_there_at_its_time() {
        let lib = |inode: u64, from: u64, seen: u64| Mapping {
            valid_from_ns: from,
            last_seen_ns: seen,
            ..parse_maps(&format!(
                "7f0000001000-7f0000003000 r-xp 00000000 08:01 {inode} /lib{inode}.so"
            ))
            .remove(0)
        };
        // libA seen from 0 to 100, libB at the same address from 150 on.
        let c = PidCache {
            maps: vec![lib(2, 150, 300)],
            retired: vec![lib(1, 0, 100)],
            ..Default::default()
        };
        let at = |ts| c.find_at(0x7f0000001010, ts).map(|m| m.inode);
        assert_eq!(at(50), Some(1));
        assert_eq!(at(120), None, "between the reads: either library");
        assert_eq!(at(200), Some(2));
        assert_eq!(at(400), None, "newer than the last read");
    }

    #[test]
    fn return_addresses_step_back_and_zero_ends_the_stack() {
        assert_eq!(
            lookup_addrs(&[0x100, 0x200, 0x300, 0, 0x400]),
            vec![0x100, 0x1ff, 0x2ff]
        );
        assert!(lookup_addrs(&[0, 5]).is_empty());
        assert_eq!(uncached(&[3, 1, 3, 2], |a| a == 2), vec![3, 1]);
    }
}
