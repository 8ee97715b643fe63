//! What the native symbolizer remembers about one process: its mappings as
//! last read from `/proc/PID/maps`, the frames already worked out for each
//! address, and which addresses still need a look-up. It only reads `/proc`
//! and remembers; it must not call blazesym or name functions (`native.rs`).
use std::{
    collections::{HashMap, HashSet},
    fs, io,
    path::PathBuf,
    time::SystemTime,
};

/// Past this many cached addresses a process's cache starts over.
pub const MAX_CACHED: usize = 200_000;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path or pseudo-name (`[vdso]`), without ` (deleted)`; `None` for
    /// anonymous memory (where JIT code lives).
    pub path: Option<String>,
    /// The file was replaced or removed on disk: what is there now is not
    /// what is mapped, so its symbols must not be used.
    pub deleted: bool,
    /// Mapped executable (`x` in the permissions).
    pub exec: bool,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
}

impl Mapping {
    /// The module's base name, e.g. `libc.so.6`.
    pub fn name(&self) -> Option<&str> {
        let path = self.path.as_deref()?;
        Some(path.rsplit('/').next().unwrap_or(path))
    }

    /// `[unknown] (libfoo.so+0x1a2b)`, or `[unknown] 0x7f..` for anonymous memory.
    pub fn unknown(&self, addr: u64) -> String {
        match self.name() {
            Some(name) => format!("[unknown] ({name}+{:#x})", addr - self.start + self.offset),
            None => unknown_addr(addr),
        }
    }
}

pub fn unknown_addr(addr: u64) -> String {
    format!("[unknown] {addr:#x}")
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
    let [perms, offset, _dev, inode] = fields;
    let (path, deleted) = match rest.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
        deleted,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        inode: inode.parse().ok()?,
    })
}

/// The state kept per traced process.
#[derive(Debug, Default)]
pub struct PidCache {
    pub maps: Vec<Mapping>,
    pub maps_read: bool,
    /// Re-reads of the maps in the current one-second window: unwinding
    /// garbage (no frame pointers) yields new unmapped addresses all the
    /// time, and each must not cost a read.
    pub rereads: (Option<std::time::Instant>, u32),
    /// Frames (outermost first) per looked-up address.
    pub frames: HashMap<u64, Vec<String>>,
    /// Cached addresses that came back unknown from anonymous memory: a JIT
    /// may name them later in its perf map.
    pub anon_unknown: HashSet<u64>,
    /// Length and mtime of the perf map when `anon_unknown` was filled.
    perf_map_stamp: Option<(u64, SystemTime)>,
    perf_map_path: Option<Option<PathBuf>>,
}

impl PidCache {
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Read `/proc/PID/maps` again. On failure (the process exited) the
    /// mappings known before are kept, to still name modules in unknowns.
    pub fn reread_maps(&mut self, pid: u32) -> io::Result<()> {
        self.maps_read = true;
        let now = std::time::Instant::now();
        match self.rereads {
            (Some(start), n) if now.duration_since(start) < std::time::Duration::from_secs(1) => {
                self.rereads = (Some(start), n + 1)
            }
            _ => self.rereads = (Some(now), 1),
        }
        let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        self.maps = parse_maps(&text);
        Ok(())
    }

    /// Whether another re-read fits the budget of this second.
    pub fn may_reread(&self) -> bool {
        const PER_SECOND: u32 = 32;
        match self.rereads {
            (Some(start), n) => {
                start.elapsed() >= std::time::Duration::from_secs(1) || n < PER_SECOND
            }
            (None, _) => true,
        }
    }

    pub fn insert(&mut self, addr: u64, frames: Vec<String>) {
        self.frames.insert(addr, frames);
    }

    /// Remember `addr` as unknown, with its module where mapped.
    pub fn insert_unknown(&mut self, addr: u64) {
        let m = self.find(addr);
        let anon = m.is_some_and(|m| m.path.is_none());
        let unknown = m.map_or_else(|| unknown_addr(addr), |m| m.unknown(addr));
        if anon {
            self.anon_unknown.insert(addr);
        }
        self.frames.insert(addr, vec![unknown]);
    }

    pub fn clear_frames(&mut self) {
        self.frames.clear();
        self.anon_unknown.clear();
    }

    /// Forget the unknown JIT addresses among `addrs` if the perf map has
    /// changed since they were looked up, so new entries get used.
    pub fn expire_anon_unknown(&mut self, pid: u32, addrs: &[u64]) {
        if self.anon_unknown.is_empty() || !addrs.iter().any(|a| self.anon_unknown.contains(a)) {
            return;
        }
        let path = self.perf_map_path.get_or_insert_with(|| perf_map_path(pid));
        let stamp = path
            .as_ref()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        if stamp != self.perf_map_stamp {
            self.perf_map_stamp = stamp;
            for a in self.anon_unknown.drain() {
                self.frames.remove(&a);
            }
        }
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

/// Where blazesym looks for the process's perf map: its own `/tmp`, named
/// with the pid it sees itself as.
fn perf_map_path(pid: u32) -> Option<PathBuf> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NStgid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(pid);
    Some(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{ns_pid}.map"
    )))
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
            maps[1].unknown(0x7f0000001a2b),
            "[unknown] (libfoo.so+0x2a2b)"
        );
        assert_eq!(maps[2].path, None);
        assert_eq!(maps[2].unknown(0x7f0000010010), "[unknown] 0x7f0000010010");
        assert_eq!(maps[3].name(), Some("[vdso]"));
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
    fn return_addresses_step_back_and_zero_ends_the_stack() {
        assert_eq!(
            lookup_addrs(&[0x100, 0x200, 0x300, 0, 0x400]),
            vec![0x100, 0x1ff, 0x2ff]
        );
        assert!(lookup_addrs(&[0, 5]).is_empty());
        assert_eq!(uncached(&[3, 1, 3, 2], |a| a == 2), vec![3, 1]);
    }
}
